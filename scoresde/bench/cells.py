"""A sweep is samplers x step budgets x problems x seeds; one combination is a :class:`Cell`.

A cell's identity is its :attr:`Cell.key` (sampler + options + steps + problem + seed + n): the
results store skips a cell whose key is already recorded, which is how a sweep resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .problems import Problem, get_problem

__all__ = ["Entry", "Cell", "Sweep", "parse_entries", "parse_int_list", "shard"]


def _canon(options: dict[str, Any]) -> str:
    """Options as canonical JSON (sorted keys): part of the cell key."""
    try:
        return json.dumps(options, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(f"sampler options must be plain data (numbers, strings, booleans, lists); got {options!r}") from err


@dataclass(frozen=True)
class Entry:
    """One sampler configuration of a sweep: a registered name, its options, an optional label,
    optional step budgets that replace the sweep's (e.g. a fixed 1000-step reference) and an
    optional plot series (entries sharing a series are joined by one line, e.g. the tolerances
    of an adaptive sampler; default: the label)."""

    sampler: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    steps: tuple[int, ...] | None = None
    series: str | None = None

    @property
    def name(self) -> str:
        """The label shown in tables and plots (default: ``sampler(k=v,...)``)."""
        if self.label:
            return self.label
        if not self.options:
            return self.sampler
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.sampler}({inner})"


@dataclass(frozen=True)
class Cell:
    """One unit of work: sample ``n`` points of ``problem`` with one sampler at one budget and seed.

    ``steps == 0`` means "no step budget": the sampler's own default (adaptive samplers).
    """

    sampler: str
    options: dict[str, Any]
    steps: int
    problem: str
    seed: int
    n: int
    label: str
    series: str = ""

    @property
    def key(self) -> str:
        return f"{self.sampler}|{_canon(self.options)}|{self.steps}|{self.problem}|{self.seed}|{self.n}"


@dataclass
class Sweep:
    """The plan of a benchmark: which cells to run and how to measure them.

    Args:
        entries: sampler configurations (see :func:`parse_entries` for the CLI syntax).
        steps: step budgets (grid intervals) for fixed-grid samplers.
        problems: problem names (``gmm2d-vp``, ``gmm16d-ve``, ``ckpt:PATH``, ``py:MODULE:FUNCTION``; see
            :mod:`.problems`) or :class:`~scoresde.bench.Problem` objects (``Problem.from_model``: your own
            model and reference data); a cell records the problem's name.
        seeds: sweep seeds; sample i of seed s uses the per-sample seed ``s * 2**32 + i``.
        n: samples per cell.
        batch: samples per :func:`scoresde.sample` call (0 = all n at once).
        device, dtype: where and in which precision to sample.
        metrics: quality metrics to compute (``None`` = all the problem offers).
        floor_repeats: exact-vs-exact repeats that estimate each metric's noise floor.
        warmup: run the sampler once (a small batch on the CPU, the full batch on GPUs) before timing it.
        min_time, max_timed_runs: repeat the timed run until ``min_time`` seconds or
            ``max_timed_runs`` runs (the median is reported).
    """

    entries: Sequence[Entry]
    steps: Sequence[int] = (10, 20, 50, 100)
    problems: Sequence[Any] = ("gmm2d-vp",)  # names or Problem objects
    seeds: Sequence[int] = (0,)
    n: int = 2000
    batch: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    metrics: Sequence[str] | None = None
    floor_repeats: int = 5
    warmup: bool = True
    min_time: float = 0.5
    max_timed_runs: int = 5

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 2:
            raise ValueError(f"n must be an integer >= 2 (samples per cell); got {self.n!r}")
        if int(self.batch) != self.batch or self.batch < 0:
            raise ValueError(f"batch must be a non-negative integer (0 = all n at once); got {self.batch!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype={self.dtype!r} is not one of the accepted values: 'float32', 'float64'")
        if not (self.min_time >= 0 and self.max_timed_runs >= 1):
            raise ValueError(f"need min_time >= 0 and max_timed_runs >= 1; got {self.min_time!r}, {self.max_timed_runs!r}")
        if self.floor_repeats < 2:
            raise ValueError(f"floor_repeats must be >= 2 (a floor needs a spread); got {self.floor_repeats!r}")
        for s in self.seeds:
            if int(s) != s or not 0 <= s < 2**30:
                raise ValueError(f"seeds must be integers in [0, 2**30); got {s!r}")
        for s in self.steps:
            if isinstance(s, bool) or int(s) != s or s < 1:
                raise ValueError(f"steps must be positive integers (step budgets; adaptive samplers get none "
                                 f"by themselves); got {s!r}")
        names = self.problem_names()
        dup = sorted({p for p in names if names.count(p) > 1})
        if dup:
            raise ValueError(f"problems must have distinct names (a cell is keyed by it); {dup[0]!r} appears twice")

    def problem_names(self) -> list[str]:
        """The problems' names, in order (a Problem object's ``.name``)."""
        out = []
        for p in self.problems:
            if isinstance(p, Problem):
                out.append(p.name)
            elif isinstance(p, str) and p:
                out.append(p)
            else:
                raise TypeError(f"problems must be names (str) or scoresde.bench.Problem objects; got {type(p).__name__}")
        return out

    def problem_objects(self) -> dict[str, Problem]:
        """Name -> Problem, building the named ones (:func:`~scoresde.bench.get_problem`)."""
        return {n: p if isinstance(p, Problem) else get_problem(p) for n, p in
                zip(self.problem_names(), self.problems, strict=True)}

    def cells(self, is_adaptive: Callable[[Entry], bool] = lambda e: False) -> list[Cell]:
        """All cells in a fixed order (problem, entry, steps, seed). Entries for which
        ``is_adaptive(entry)`` holds have no step budget: one cell per seed with steps 0."""
        out = []
        for problem in self.problem_names():
            for e in self.entries:
                budgets = e.steps if e.steps is not None else ((0,) if is_adaptive(e) else tuple(self.steps))
                for steps in budgets:
                    for seed in self.seeds:
                        out.append(Cell(e.sampler, dict(e.options), int(steps), problem, int(seed), int(self.n), e.name,
                                        e.series or e.name))
        return out


def shard(cells: Sequence[Cell], rank: int, world: int) -> list[Cell]:
    """The cells of one process: index i goes to rank ``i % world``."""
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world; got rank={rank}, world={world}")
    return [c for i, c in enumerate(cells) if i % world == rank]


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"sampler list {text!r}: unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"sampler list {text!r}: unbalanced '('")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word such as reverse_diffusion


def parse_entries(text: str) -> list[Entry]:
    """Parse ``name,name(opt=v,opt=v),...`` into entries; values are JSON where they parse
    (numbers, true/false, null), else strings. ``pc(corrector=langevin,snr=0.16)``."""
    entries = []
    for part in _split_top(text):
        name, paren, rest = part.partition("(")
        name = name.strip()
        opts: dict[str, Any] = {}
        if paren:
            if not rest.endswith(")"):
                raise ValueError(f"sampler entry {part!r} must end with ')'")
            for kv in _split_top(rest[:-1]):
                k, eq, v = kv.partition("=")
                if not eq or not k.strip():
                    raise ValueError(f"sampler option {kv!r} in {part!r} must be key=value")
                opts[k.strip()] = _value(v.strip())
        entries.append(Entry(name, opts))
    if not entries:
        raise ValueError(f"--samplers must name at least one sampler; got {text!r}")
    return entries


def parse_int_list(text: str, name: str) -> list[int]:
    """``"10,20,50"`` -> [10, 20, 50], naming the argument on error."""
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers; got {text!r}") from None
    if not out:
        raise ValueError(f"{name} must list at least one integer; got {text!r}")
    return out
