"""The sampler registry: name -> function + declared options and traits.

A sampler is a plain function holding its paper's loop::

    @register("ddim", kind="ode", order=1, stochastic=lambda o: o["eta"] > 0, nfe=1,
              params={"eta": Real(ge=0, le=1)}, paper="Song, Meng & Ermon 2021")
    def ddim(model, sde, x, ts, *, noise, callback, eta=0.0):
        ...
        return x

``model(x, t)`` returns a :class:`~scoresde.model.Prediction` (one network call); ``ts`` is the
float64 grid from T to t_min; ``noise(like)`` draws standard normals; ``x = callback(i, x)`` is
called after step i and returns the state to continue from (the front door's hook for
progress, trajectories and guidance projections). Keyword-only arguments after ``callback`` are
the sampler's options: their names and defaults are read from the signature once, their accepted
values are declared once (``params=``, else inferred from the defaults), and
:meth:`SamplerSpec.validate` checks them before sampling, so the function receives valid values.

**Traits are functions of the options** (as in diffrax): each of ``order``, ``strong_order``,
``stochastic``, ``fixed_grid``, ``requires``, ``state_hook``, ``table``, ``exact_for_point_mass``
and ``sde_eta`` is a constant or a
function of the validated options dict; ``nfe`` is an integer (network calls per step), a function
``(steps, options) -> int`` of the total (without the front door's final denoising step), or None
(adaptive: counted, not declared). :meth:`SamplerSpec.traits` evaluates them for one option set.
``requires`` names SDE capabilities (:data:`scoresde.sde.CAPABILITIES`) that the front door checks
before any network call.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..registry import Entry, Param, Registry
from ..sde import CAPABILITIES, LinearSDE

__all__ = ["SamplerSpec", "Traits", "register", "register_sampler", "get", "available", "specs", "unregister", "SAMPLERS"]

KINDS = ("ode", "sde", "langevin", "pc", "adaptive")
_RESERVED = ("noise", "callback")


@dataclass(frozen=True)
class Traits:
    """A sampler's traits for one set of options (see :meth:`SamplerSpec.traits`)."""

    order: float | None  # global convergence order of the ODE solution (deterministic samplers)
    strong_order: float | None  # strong (pathwise) order on a shared Brownian path (stochastic samplers)
    stochastic: bool  # draws noise: the output depends on the noise seed
    fixed_grid: bool  # steps on the grid ts (False: uses only its end points, e.g. adaptive)
    requires: tuple[str, ...]  # SDE capabilities it needs
    state_hook: bool  # each step's state goes through the front door's callback (guidance projections)
    table: bool  # a coefficient table exists for these options (the compiled/fused engines use it)
    exact_for_point_mass: bool  # reproduces the PF-ODE solution of a point mass to round-off at any step count
    # The sampler discretises dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw (reverse time): eta = 1 is the
    # reverse SDE, eta = 0 the probability-flow ODE; None when it discretises none of them (Langevin steps).
    sde_eta: float | None
    nfe_total: Callable[[int], int | None]

    def nfe(self, steps: int) -> int | None:
        """Network calls for ``steps`` intervals, without the final denoising step (None: adaptive)."""
        return self.nfe_total(steps)


@dataclass(frozen=True)
class SamplerSpec(Entry):
    """What a sampler declares about itself (read by sample(), the benchmark, the docs and tests)."""

    kind: str = "ode"
    paper: str = ""
    default_steps: int = 100
    default_schedule: str = "uniform"
    nfe_per_step: str = "1"  # human-readable NFE description (docs); the checked number is traits().nfe
    # coefficients(sde, ts, **options) -> CoefficientTable (scoresde.samplers.tables), checked when built.
    coefficients: Callable[..., Any] | None = None
    variants: tuple[dict, ...] = ()  # option sets worth testing and benchmarking beside the defaults
    decl: Mapping[str, Any] = field(default_factory=dict)  # raw trait declarations (constants or functions)
    supports: Callable[[LinearSDE], str | None] | None = None  # deprecated free-form check

    # ------------------------------------------------------------------ back-compatible views
    @property
    def fn(self) -> Callable[..., Any]:
        return self.obj

    @property
    def options(self) -> dict[str, Any]:
        """Option names and defaults (read from the signature)."""
        return dict(self.defaults)

    @property
    def order(self) -> float | None:
        return self.traits().order

    @property
    def strong_order(self) -> float | None:
        return self.traits().strong_order

    @property
    def stochastic(self) -> bool:
        return self.traits().stochastic

    @property
    def fixed_grid(self) -> bool:
        return self.traits().fixed_grid

    @property
    def needs(self) -> tuple[str, ...]:
        return self.traits().requires

    @property
    def exact_for_point_mass(self) -> bool:
        return self.traits().exact_for_point_mass

    # ------------------------------------------------------------------ traits
    def traits(self, options: Mapping[str, Any] | None = None) -> Traits:
        """The traits for ``options`` (validated here; defaults filled in)."""
        o = self.validate(options)

        def ev(key: str) -> Any:
            v = self.decl[key]
            return v(o) if callable(v) else v

        nfe = self.decl["nfe"]
        if nfe is None:
            total: Callable[[int], int | None] = lambda steps: None
        elif callable(nfe):
            total = lambda steps: nfe(steps, o)
        else:
            total = lambda steps, k=int(nfe): k * steps
        req = tuple(ev("requires"))
        fixed = bool(ev("fixed_grid"))
        hook = ev("state_hook")
        stochastic, strong = bool(ev("stochastic")), ev("strong_order")
        eta = ev("sde_eta")
        if eta == "auto":
            eta = 0.0 if not stochastic else (1.0 if strong is not None else None)
        return Traits(order=ev("order"), strong_order=strong, stochastic=stochastic, fixed_grid=fixed, requires=req,
                      state_hook=fixed if hook is None else bool(hook),
                      table=self.coefficients is not None and bool(ev("table")),
                      exact_for_point_mass=bool(ev("exact_for_point_mass")), sde_eta=eta, nfe_total=total)

    def table(self, sde: LinearSDE, ts, **options: Any):
        """The checked coefficient table of these options on grid ``ts`` (see samplers/tables.py).

        Tables are immutable and cached per SDE object (weakly: the cache goes with the SDE), grid
        contents and options, so repeated runs on one grid build it once; an SDE is treated as
        immutable once it has sampled (build a new one to change its parameters)."""
        if not self.traits(options).table:
            raise ValueError(f"sampler {self.name!r} has no coefficient table for options {options or '(defaults)'}")
        opts = self.validate(options)
        key = _table_key(self.name, ts, opts)
        try:
            per_sde = _TABLES.setdefault(sde, {})
        except TypeError:  # an unhashable or non-weak-referenceable SDE: no cache
            per_sde, key = {}, None
        table = per_sde.get(key) if key is not None else None
        if table is None:
            table = self.coefficients(sde, ts, **opts)
            if key is not None:
                if len(per_sde) >= _TABLES_PER_SDE:
                    per_sde.pop(next(iter(per_sde)))  # the oldest entry
                per_sde[key] = table
        return table

    def check_sde(self, sde: LinearSDE, options: Mapping[str, Any] | None = None) -> None:
        """Raise ValueError if ``sde`` lacks a capability these options need (before any network call)."""
        for cap in self.traits(options).requires:
            if not sde.provides(cap):
                usable = [s.name for s in specs() if all(sde.provides(c) for c in s.traits().requires)]
                what = CAPABILITIES.get(cap, f"the callable sde.{cap}")
                raise ValueError(
                    f"sampler {self.name!r}{_with(options)} needs the SDE capability {cap!r} ({what}), which "
                    f"{sde!r} does not provide; declare it in the SDE's capabilities if it has it, "
                    f"change the options, or use one of: {', '.join(usable)}"
                )
        if self.supports is not None:
            reason = self.supports(sde)
            if reason:
                raise ValueError(f"sampler {self.name!r} does not support {sde!r}: {reason}")


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # sde -> {key: table}
_TABLES_PER_SDE = 32
_PLAIN = (int, float, str, bool, type(None))


def _table_key(name: str, ts: Any, opts: Mapping[str, Any]) -> tuple | None:
    """(sampler, grid contents, options) when every option value is plain data, else None (not cached)."""
    items = []
    for k, v in sorted(opts.items()):
        if isinstance(v, tuple) and all(isinstance(e, _PLAIN) for e in v) or isinstance(v, _PLAIN):
            items.append((k, type(v).__name__, v))
        else:
            return None
    if not isinstance(ts, torch.Tensor):
        return None
    t = ts.detach()
    return name, t.dtype, str(t.device), tuple(t.shape), t.cpu().contiguous().numpy().tobytes(), tuple(items)


def _with(options: Mapping[str, Any] | None) -> str:
    return f" with {', '.join(f'{k}={v!r}' for k, v in options.items())}" if options else ""


SAMPLERS = Registry("sampler", keyword_only=True, skip=_RESERVED, entry_type=SamplerSpec)


def _check_signature(fn: Callable[..., Any]) -> None:
    import inspect

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional[:4] != ["model", "sde", "x", "ts"]:
        raise TypeError(f"a sampler's signature starts with (model, sde, x, ts, *, noise, callback, ...); got {sig}")
    missing = [r for r in _RESERVED if r not in sig.parameters]
    if missing:
        raise TypeError(f"a sampler must take keyword-only {', '.join(_RESERVED)}; {fn.__name__} lacks {missing}")
    for p in params:
        if p.kind == p.KEYWORD_ONLY and p.name not in _RESERVED and p.default is p.empty:
            raise TypeError(f"sampler option {p.name!r} needs a default value")


def _nfe_from_string(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def register_sampler(
    name: str,
    fn: Callable[..., Any],
    *,
    kind: str,
    stochastic: bool | Callable[[dict], bool],
    order: float | None | Callable[[dict], float | None] = None,
    strong_order: float | None | Callable[[dict], float | None] = None,
    nfe: int | None | Callable[[int, dict], int | None] | str = "per_step",
    nfe_per_step: str | int | None = None,
    fixed_grid: bool | Callable[[dict], bool] = True,
    requires: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = (),
    needs: tuple[str, ...] = (),
    state_hook: bool | None | Callable[[dict], bool] = None,
    table: bool | Callable[[dict], bool] = True,
    exact_for_point_mass: bool | Callable[[dict], bool] = False,
    sde_eta: float | None | str | Callable[[dict], float | None] = "auto",
    params: Mapping[str, Param] | None = None,
    variants: tuple[dict, ...] = (),
    supports: Callable[[LinearSDE], str | None] | None = None,
    overwrite: bool = False,
    **meta: Any,
) -> SamplerSpec:
    """Register ``fn`` under ``name``; see the module docstring for the traits.

    ``nfe`` defaults to the integer in ``nfe_per_step`` (e.g. "2"), else None (adaptive).
    ``needs`` (SDE attributes) is merged into ``requires``; ``supports`` is deprecated.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a sampler name must be an identifier-like string; got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of the accepted values: {', '.join(KINDS)}")
    _check_signature(fn)
    if supports is not None:
        warnings.warn("register(supports=...) is deprecated: declare SDE capabilities with requires=", DeprecationWarning,
                      stacklevel=3)
    doc = str(nfe_per_step) if nfe_per_step is not None else (str(nfe) if isinstance(nfe, int) else "1")
    if nfe == "per_step":
        nfe = _nfe_from_string(doc)
    if needs:
        req = requires
        requires = (lambda o: tuple(needs) + tuple(req(o))) if callable(req) else tuple(needs) + tuple(req)
    decl = dict(order=order, strong_order=strong_order, stochastic=stochastic, fixed_grid=fixed_grid,
                requires=requires, state_hook=state_hook, table=table, nfe=nfe,
                exact_for_point_mass=exact_for_point_mass, sde_eta=sde_eta)
    entry = SAMPLERS.make_entry(name, fn, params=params, kind=kind)
    spec = SamplerSpec(name=entry.name, obj=fn, what="sampler", defaults=entry.defaults, params=entry.params,
                       kind=kind, nfe_per_step=doc, decl=decl, variants=tuple(dict(v) for v in variants),
                       supports=supports, **meta)
    for v in spec.variants:  # variants are valid option sets
        spec.validate(v)
    _check_traits(spec)
    SAMPLERS.add_entry(spec, overwrite=overwrite)
    return spec


def _check_traits(spec: SamplerSpec) -> None:
    """Evaluate every trait on the defaults and the variants, so a bad declaration fails at registration."""
    for o in ({},) + spec.variants:
        tr = spec.traits(o)
        for key in ("order", "strong_order"):
            v = getattr(tr, key)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise TypeError(f"sampler {spec.name!r}: {key} must be a positive number or None; got {v!r}")
        n = tr.nfe(3)
        if n is not None and (not isinstance(n, int) or n < 0):
            raise TypeError(f"sampler {spec.name!r}: nfe(3) must be a non-negative int or None; got {n!r}")


def register(name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of :func:`register_sampler`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        register_sampler(name, fn, **meta)
        return fn

    return deco


def unregister(name: str) -> None:
    SAMPLERS.remove(name)


def get(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available samplers: {', '.join(available())}")
    return SAMPLERS.get(name)  # type: ignore[return-value]


def available() -> list[str]:
    """Names of all registered samplers."""
    return sorted(SAMPLERS.names())


def specs() -> list[SamplerSpec]:
    return [get(n) for n in available()]


def overview_table(steps: int | None = None) -> str:
    """A Markdown table of every registered sampler's traits, for its defaults and each variant.

    ``steps``: the step count of the NFE column (default: each sampler's default steps). The docs'
    table is this function's output (a test keeps them equal).
    """
    def num(v: Any) -> str:
        return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    rows = ["| sampler | options | stochastic | order | strong order | NFE (steps) | exact for a point mass | "
            "table | requires |", "|---|---|---|---|---|---|---|---|---|"]
    for spec in specs():
        for o in ({},) + spec.variants:
            t = spec.traits(o)
            n = spec.default_steps if steps is None else steps
            nfe = t.nfe(n)
            opts = ", ".join(f"`{k}={v!r}`" for k, v in o.items()) or "defaults"
            rows.append(
                f"| `{spec.name}` | {opts} | {'yes' if t.stochastic else 'no'} | {num(t.order)} | "
                f"{num(t.strong_order)} | {'adaptive' if nfe is None else nfe} ({n if t.fixed_grid else 'ends'}) | "
                f"{'yes' if t.exact_for_point_mass else 'no'} | {'yes' if t.table else 'no'} | "
                f"{', '.join(t.requires) or '-'} |")
    return "\n".join(rows)
