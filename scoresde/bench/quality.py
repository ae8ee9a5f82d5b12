"""Quality metrics of a cell and their noise floors.

Every metric is a distance ``d(samples, R)`` to a fixed reference set R of the same size n (exact
samples of a mixture, or held-out data), the same R for every sampler of a (problem, n, seed).
Its **noise floor** is the same distance for independent exact (or held-out) sets F_r of size n:
``d(F_r, R)`` for r < repeats. A perfect sampler scores at the floor, not at zero. As in
:func:`scoresde.metrics.compare`, the floor level is the root mean square of the repeats
(close to their mean for biased estimators such as SW2 and FD; their spread for the unbiased
MMD^2 and energy estimates, whose mean is ~0), and ``ratio = value / floor``.

Metric implementations and names live in one registry, :data:`scoresde.metrics.METRICS`
(``metrics.bind`` fixes the reference set and calibration); this module keeps the benchmark's
fixed reference sets and their floors. A metric that cannot be computed on a problem (a mixture
metric without an exact mixture) is skipped with a message naming it.

==========  =====================================================================================
name        what
==========  =====================================================================================
sw2         sliced Wasserstein-2 (``metrics.sliced_wasserstein``, 256 directions, seed 0)
mmd         unbiased MMD^2, RBF kernel (``metrics.mmd``); its bandwidth is fixed once per
            (problem, n, seed) by the median heuristic on (R, F_0), so the kernel does not
            depend on the samples being judged
energy      unbiased squared energy distance (``metrics.energy_distance``)
mode_err    total variation between sample and true mode weights (``metrics.mode_weight_error``;
            mixtures only; it compares with the exact weights, not with R)
logp_gap    ``|mean log p(samples) - mean log p(R)|`` under the exact mixture density
            (``metrics.mean_log_likelihood``); the raw mean is recorded as ``logp``
fd          Frechet distance of the digits classifier's features (``features.frechet_digits_distance``)
frechet     Frechet distance of Gaussians fitted to the raw coordinates (``metrics.frechet_distance_from_samples``)
==========  =====================================================================================
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..metrics import METRICS as _METRICS
from ..metrics import bind, floor_of, median_bandwidth
from .problems import Problem

__all__ = ["METRICS", "Judge", "judge_for", "available_metrics"]

#: the benchmark's metrics: the distances of :data:`scoresde.metrics.METRICS` (kinds distance and mixture).
METRICS = tuple(n for n in _METRICS.names() if _METRICS.get(n).meta["kind"] in ("distance", "mixture"))
_WARNED: set[tuple[str, str]] = set()


def _reason(name: str, problem: Problem) -> str | None:
    """Why the metric cannot be computed on this problem (None: it can)."""
    if _METRICS.get(name).meta["kind"] == "mixture" and problem.mixture is None:
        return f"{name} needs an exact mixture"
    return None


def available_metrics(problem: Problem, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Callable]:
    """Implementations of the metrics ``names`` (default: all the problem offers) that can be
    computed now; each one that cannot is reported once with the reason."""
    names = list(problem.metrics if names is None else names)
    for n in names:
        if n not in METRICS:
            raise ValueError(f"metric {n!r} is not one of the accepted values: {', '.join(METRICS)}")
    out = {}
    for n in names:
        if n not in problem.metrics:
            continue  # e.g. mode_err on a checkpoint
        why = _reason(n, problem)
        if why is not None:
            if (n, problem.name) not in _WARNED:
                _WARNED.add((n, problem.name))
                warnings.warn(f"metric {n!r} skipped on {problem.name}: {why}", stacklevel=2)
            continue
        out[n] = _METRICS.get(n).obj
    return out


@dataclass
class Judge:
    """The metrics of one (problem, n, seed), bound to its reference set, with their floors."""

    problem: str
    n: int
    seed: int
    ref: Tensor  # (n, *D) float64, data space
    fns: dict[str, Callable[[Tensor], float]]  # d(x) = distance of x to ref
    floors: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> rms, mean, std
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: Tensor) -> dict[str, float]:
        """Every metric of the samples x (data space) and its floor and ratio, flat."""
        x = x.detach().to("cpu", torch.float64)
        out: dict[str, float] = {}
        for k, fn in self.fns.items():
            v = fn(x)
            fl = self.floors[k]
            out[k] = v
            out[f"{k}_floor"] = fl["rms"]
            out[f"{k}_floor_mean"] = fl["mean"]
            out[f"{k}_floor_std"] = fl["std"]
            out[f"{k}_ratio"] = v / fl["rms"] if fl["rms"] > 0 else float("nan")
        if "logp_gap" in self.fns:
            out["logp"] = self.info["logp_of"](x)
            out["logp_ref"] = self.info["logp_ref"]
        return out


_CACHE: dict[str, dict[tuple, Judge]] = {}


def judge_for(problem: Problem, impls: dict[str, Callable], n: int, seed: int, repeats: int) -> Judge:
    """The :class:`Judge` of (problem, n, seed) with floors over ``repeats`` independent sets.

    Deterministic in its arguments; cached for the life of the process (built-in mixtures by name,
    any other problem on the Problem object itself, so two user problems of one name never share it)."""
    key = (n, seed, repeats, tuple(sorted(impls)))
    cache = _CACHE.setdefault(problem.name, {}) if problem.info.get("kind") == "mixture" else \
        problem.__dict__.setdefault("_judges", {})
    if key in cache:
        return cache[key]
    ref = problem.reference(n, seed).to(torch.float64)
    floor_sets = [problem.floor_set(n, seed, r).to(torch.float64) for r in range(repeats)]
    fns = {name: bind(name, ref, mixture=problem.mixture, calibration=floor_sets[0]) for name in impls}
    info: dict[str, Any] = {}
    if "mmd" in fns:
        info["mmd_bandwidth"] = median_bandwidth(ref, floor_sets[0])
    if "logp_gap" in fns:
        logp = bind("logp", ref, mixture=problem.mixture)
        info.update(logp_ref=logp(ref), logp_of=logp)
    judge = Judge(problem.name, n, seed, ref, fns, info=info)
    for name, fn in fns.items():
        fl = floor_of([fn(f) for f in floor_sets], n)
        judge.floors[name] = {"rms": fl.rms, "mean": fl.mean, "std": fl.std if repeats > 1 else 0.0}
    cache[key] = judge
    return judge
