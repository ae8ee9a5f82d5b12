"""Time grids as objects: explicit grids with provenance, JSON presets, published (AYS) grids, and a
GITS-style optimiser.

* :class:`TimeGrid`: an explicit decreasing grid of SDE times (a tuple of float64 Python floats,
  so ``sample(schedule=grid)`` takes it as it is) with an ``info`` dict saying where it came from.
* :func:`save_schedule` / :func:`load_schedule`: a grid as a small JSON file (atomic write), with
  the SDE it belongs to; loading checks the SDE and the grid.
* :func:`published_grid`: the Align-Your-Steps schedules (Sabour et al. 2024, Table 3) mapped onto
  an SDE's noise range (see its docstring for what the mapping keeps).
* :func:`optimize_schedule`: GITS (Chen et al. 2024, "On the trajectory regularity of ODE-based
  diffusion sampling") -- a dynamic programme over a fine candidate grid against a teacher
  trajectory solved once -- followed by an end-to-end refinement with the sampler itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._utils import as_time, atomic_write_text, check_choice
from .sde import LinearSDE

__all__ = ["TimeGrid", "save_schedule", "load_schedule", "published_grid", "PUBLISHED", "optimize_schedule",
           "steps_for_nfe", "teacher_trajectory", "pathwise_error"]

FORMAT = "scoresde-schedule"
VERSION = 1


class TimeGrid(tuple):
    """An explicit grid of SDE times, T -> t_min (a tuple of floats), with its provenance in ``info``.

    ``scoresde.sample(..., schedule=grid)`` takes it directly (it is a sequence of float64 values);
    ``grid.ts`` is the float64 tensor, ``grid.steps`` the number of intervals.
    """

    info: dict[str, Any]

    def __new__(cls, times: Sequence[float] | Tensor, info: dict[str, Any] | None = None) -> "TimeGrid":
        if isinstance(times, Tensor):
            times = times.detach().to("cpu", torch.float64).flatten().tolist()
        obj = super().__new__(cls, (float(t) for t in times))
        if len(obj) < 2:
            raise ValueError(f"a time grid needs at least 2 times; got {len(obj)}")
        obj.info = dict(info or {})
        return obj

    @property
    def ts(self) -> Tensor:
        return torch.tensor(self, dtype=torch.float64)

    @property
    def steps(self) -> int:
        return len(self) - 1

    def save(self, path: str | os.PathLike, *, sde: LinearSDE | None = None) -> None:
        save_schedule(path, self, sde=sde)

    def __repr__(self) -> str:
        return f"TimeGrid(steps={self.steps}, {', '.join(f'{t:.6g}' for t in self)})"


def _sde_config(sde: LinearSDE) -> dict | None:
    try:
        return sde.config()
    except Exception:  # a user-defined SDE without a config: stored as its name only
        return None


def save_schedule(path: str | os.PathLike, grid: Sequence[float] | Tensor, *, sde: LinearSDE | None = None,
                  info: dict[str, Any] | None = None) -> None:
    """Write ``grid`` (and the SDE it is for) as JSON, atomically. Floats are written with
    Python's shortest round-trip repr, so the times load back bit-identical."""
    g = grid if isinstance(grid, TimeGrid) else TimeGrid(grid)
    meta = {**g.info, **(info or {})}
    if sde is not None:
        meta["sde"] = _sde_config(sde) or {"class": type(sde).__name__}
    doc = {"format": FORMAT, "version": VERSION, "steps": g.steps, "times": list(g), "info": _jsonable(meta)}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def load_schedule(path: str | os.PathLike, sde: LinearSDE | None = None) -> TimeGrid:
    """Read a grid written by :func:`save_schedule`. With ``sde``, check that the file was made for
    an SDE of the same configuration and that the times are a valid grid for it."""
    with open(path) as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"schedule file {os.fspath(path)!r} is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("times"), list):
        raise ValueError(f"schedule file {os.fspath(path)!r} is not a scoresde schedule (expected format {FORMAT!r} "
                         "with a 'times' list)")
    if doc.get("version") != VERSION:
        raise ValueError(f"schedule file {os.fspath(path)!r} has version {doc.get('version')!r}; this scoresde reads "
                         f"version {VERSION}")
    grid = TimeGrid(doc["times"], doc.get("info") or {})
    if sde is not None:
        stored = grid.info.get("sde")
        ours = _sde_config(sde)
        if stored is not None and ours is not None and stored != _jsonable(ours):
            raise ValueError(f"schedule file {os.fspath(path)!r} was made for the SDE {stored}, not for {ours}")
        from .schedules import make_grid

        make_grid(sde, None, grid.ts)  # raises unless strictly decreasing inside [t_min, T]
    return grid


# ------------------------------------------------------------------------------------ published grids
#: Align Your Steps (Sabour et al. 2024, Table 3): 10-step noise levels sigma~ (VP-scaled for the
#: Stable Diffusion and DeepFloyd models, EDM sigma for Stable Video Diffusion), largest first.
PUBLISHED: dict[str, tuple[float, ...]] = {
    "ays_sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "ays_sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "ays_deepfloyd_if": (160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006),
    "ays_svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def published_grid(name: str, sde: LinearSDE, steps: int | None = None, *, rescale: bool = True) -> TimeGrid:
    """A published grid mapped onto ``sde``: ``steps`` intervals (default: the published 10).

    The published levels are resampled to ``steps`` by the AYS authors' log-linear interpolation
    (piecewise linear in log sigma~ against the step fraction). With ``rescale=True`` (default)
    the curve is then mapped affinely in log sigma~ onto [sigma~(t_min), sigma~(T)] of ``sde``: the
    grid keeps the published *shape* (where in the log-noise range the steps go), not the
    published noise levels, because our SDEs span other ranges (VP: 0.01 to 152; EDM: 0.002 to
    80). With ``rescale=False`` the levels are used as published and must lie inside the SDE's
    range. These schedules were optimised for their authors' image models; on other data they
    are a prior, not an optimum (measured in docs/low_nfe.md).
    """
    check_choice("name", name, PUBLISHED)
    steps = len(PUBLISHED[name]) - 1 if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    logs = np.log(np.array(PUBLISHED[name], dtype=np.float64))
    xs = np.linspace(0.0, 1.0, len(logs))
    ys = np.interp(np.linspace(0.0, 1.0, steps + 1), xs, logs)
    hi, lo = (float(torch.log(sde.sigma_tilde(as_time(t)))) for t in (sde.T, sde.t_min))
    if rescale:
        ys = lo + (ys - logs[-1]) * (hi - lo) / (logs[0] - logs[-1])
    elif not (lo - 1e-9 <= ys.min() and ys.max() <= hi + 1e-9):
        raise ValueError(f"grid {name!r} spans sigma~ {math.exp(ys.min()):.4g} to {math.exp(ys.max()):.4g}, outside "
                         f"{sde!r}'s [{math.exp(lo):.4g}, {math.exp(hi):.4g}]; use rescale=True")
    ts = sde.t_from_sigma_tilde(torch.from_numpy(np.exp(ys)))
    ts[0], ts[-1] = (sde.T, sde.t_min) if rescale else (ts[0], ts[-1])
    from .schedules import make_grid

    make_grid(sde, None, ts)
    return TimeGrid(ts, {"source": name, "rescaled": rescale, "paper": "Sabour et al. 2024 (Align Your Steps), Table 3"})


# ------------------------------------------------------------------------------------ optimiser helpers
def _run(model, sde, sampler, ts, x_T, options, denoise=False):
    from .samplers import sample

    return sample(model, sde, tuple(x_T.shape), sampler, schedule=ts, x_T=x_T, denoise=denoise, dtype=x_T.dtype,
                  noise=torch.Generator(device=x_T.device).manual_seed(0), **options)


def steps_for_nfe(model, sde: LinearSDE, sampler: str, nfe: int, *, shape: Sequence[int], denoise: bool = True,
                  options: dict[str, Any] | None = None) -> int:
    """The largest step count whose counted NFE (``denoise`` included) is at most ``nfe``.

    Counted on a one-sample probe of ``shape`` (one sample's shape) at 1 and 2 steps (NFE is
    affine in the steps for every fixed-grid sampler here) and checked at the answer.
    """
    from .samplers import get, sample

    options = dict(options or {})
    spec = get(sampler)
    if not spec.fixed_grid:
        raise ValueError(f"sampler {sampler!r} does not run on a fixed grid; it has no step count to choose")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} must be a positive integer")

    def count(k: int) -> int:
        return sample(model, sde, (1,) + tuple(shape), sampler, k, schedule=spec.default_schedule, denoise=denoise,
                      dtype=torch.float64, noise=torch.Generator().manual_seed(0), **options).nfe

    n1, n2 = count(1), count(2)
    per, base = n2 - n1, 2 * n1 - n2
    if per <= 0:
        raise ValueError(f"sampler {sampler!r}: NFE does not grow with the steps ({n1} at 1 step, {n2} at 2)")
    k = (nfe - base) // per
    while k >= 1 and count(k) > nfe:
        k -= 1
    if k < 1:
        raise ValueError(f"nfe={nfe} is below the cheapest run of sampler {sampler!r} ({n1} NFE at 1 step"
                         f"{' with denoise' if denoise else ''})")
    return int(k)


def teacher_trajectory(model, sde: LinearSDE, x_T: Tensor, ts: Tensor, *, rtol: float = 1e-8,
                       atol: float = 1e-8) -> tuple[Tensor, int]:
    """Probability-flow states at every time of ``ts`` from ``x_T`` (float64 dopri5, torchdiffeq).

    Returns (len(ts), B, *D) states and the number of batch network calls it took.
    """
    import torchdiffeq

    from .model import as_model

    sm = as_model(model, sde)
    n0 = sm.nfe
    ts = as_time(ts, device=x_T.device)

    def drift(t, x):
        return sde.ode_drift(x, t, sm(x, t).score)

    # step_t lands a step on t_min exactly (torchdiffeq otherwise steps past it and interpolates).
    out = torchdiffeq.odeint(drift, x_T.to(torch.float64), ts, rtol=rtol, atol=atol, method="dopri5",
                             options={"step_t": ts[-1:]})
    return out, sm.nfe - n0


def pathwise_error(x: Tensor, ref: Tensor) -> Tensor:
    """Per-sample ||x - ref|| / sqrt(d), float64 (B,)."""
    d = (x.to(torch.float64) - ref.to(torch.float64)).flatten(1)
    return d.norm(dim=1) / math.sqrt(d.shape[1])


#: how the per-sample pathwise errors of a run are reduced to the refinement's loss.
OBJECTIVES = ("mean", "median", "rms")


def _reduce(err: Tensor, how: str) -> float:
    if how == "mean":
        return float(err.mean())
    if how == "median":
        return float(err.median())
    return float(err.pow(2).mean().sqrt())


def _dp(cost: np.ndarray, steps: int, coeff: float) -> list[int]:
    """Indices 0 = i_0 < i_1 < ... < i_steps = M-1 minimising sum_k coeff^k cost[i_k, i_{k+1}] (GITS)."""
    M = cost.shape[0]
    # V[k][j]: least cost from candidate j to the end in exactly k steps.
    V = np.full((steps + 1, M), np.inf)
    V[0, M - 1] = 0.0
    arg = np.zeros((steps + 1, M), dtype=np.int64)
    for k in range(1, steps + 1):
        # total[j, i] = cost[j, i] + coeff V[k-1][i], only i > j.
        total = cost + coeff * V[k - 1][None, :]
        total[np.tril_indices(M)] = np.inf
        arg[k] = np.argmin(total, axis=1)
        V[k] = total[np.arange(M), arg[k]]
    if not np.isfinite(V[steps, 0]):
        raise ValueError(f"the candidate grid has {M} points; {steps} steps need at least {steps + 1}")
    path, j = [0], 0
    for k in range(steps, 0, -1):
        j = int(arg[k, j])
        path.append(j)
    return path


def optimize_schedule(
    model: Any,
    sde: LinearSDE,
    sampler: str,
    nfe: int,
    *,
    options: dict[str, Any] | None = None,
    denoise: bool = True,
    n_samples: int = 256,
    n_validate: int = 256,
    candidates: int | Sequence[float] | Tensor = 120,
    cost: str = "euler",
    coeff: float = 1.0,
    objective: str = "mean",
    refine: bool = True,
    max_sweeps: int = 8,
    shape: Sequence[int] | None = None,
    seed: int = 0,
    teacher_tol: float = 1e-8,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> TimeGrid:
    """An optimised time grid for ``sampler`` at a budget of ``nfe`` network evaluations.

    1. **Teacher** (once): ``n_samples`` x_T from the prior (seeded by ``seed``) solved through
       the PF-ODE with float64 dopri5 (rtol = atol = ``teacher_tol``), keeping the state at every
       candidate time (default: 120 intervals uniform in log-SNR).
    2. **Dynamic programme** (GITS): the cost of a step i -> j is the mean over the samples of
       ||x~_j(teacher) - x~_j(step)|| / sqrt(d) in the scaled variable x~ = x / alpha, where the
       step starts at the teacher's state: ``cost="euler"`` takes GITS's Euler step in sigma~ with
       the teacher's eps (one network call per candidate in all); ``cost="sampler"`` takes one
       step of ``sampler`` itself (its first step, through the front door; one or two calls per
       pair). The path with the step count that fits ``nfe`` and the least total cost (later
       steps weighted by ``coeff`` per step, GITS's option) is the DP grid.
    3. **Refinement** (``refine=True``): starting from the best (end to end) of the DP grid, the
       sampler's default grid, the other standard grids (logsnr, karras) and the AYS SD 1.5
       shape (:func:`published_grid`), a coordinate search moves each interior time in log sigma~ and
       keeps the moves that lower the pathwise error of the whole ``sampler`` run against the
       teacher at t_min (per sample ||x - x_ref|| / sqrt(d), reduced by ``objective``: ``mean``
       as GITS, ``median``, or ``rms``, which outliers between modes dominate), halving the
       move each sweep (at most ``max_sweeps`` sweeps). This is what
       accounts for multistep history, which a one-step cost cannot see.

    The result's ``info`` records the fit error (the objective on the fitted samples) of the
    default grid, the DP grid and the final grid; the same on
    ``n_validate`` other samples (seed + 1; 0 skips it), so that a grid that only fits its own
    samples shows; and the cost (batch network calls and sample evaluations, wall time).
    ``shape`` is one sample's shape (default: ``model.shape`` or ``model.dim`` if it has one).
    """
    from .samplers import get
    from .schedules import make_grid

    t_start = time.perf_counter()
    options = dict(options or {})
    spec = get(sampler)
    check_choice("cost", cost, ("euler", "sampler"))
    check_choice("objective", objective, OBJECTIVES)
    if spec.stochastic:
        raise ValueError(f"sampler {sampler!r} is stochastic; the optimiser fits deterministic samplers to the "
                         "probability-flow teacher (optimise the grid of its deterministic counterpart instead)")
    for name, v, lo in (("n_samples", n_samples, 1), ("n_validate", n_validate, 0), ("max_sweeps", max_sweeps, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r} must be an integer >= {lo}")
    if not (isinstance(coeff, (int, float)) and math.isfinite(coeff) and coeff > 0):
        raise ValueError(f"coeff={coeff!r} must be a positive number")
    if shape is None:
        dim = getattr(model, "dim", None)
        shape = getattr(model, "shape", None) or ((dim,) if isinstance(dim, int) else None)
        if shape is None:
            raise ValueError("shape (one sample's shape, e.g. (2,)) is required for a model without .shape or .dim")
    shape = tuple(int(s) for s in shape)
    log = progress or (lambda msg: None)
    device = torch.device(device)

    from .model import as_model

    sm = as_model(model, sde)
    steps = steps_for_nfe(sm, sde, sampler, nfe, shape=shape, denoise=denoise, options=options)

    calls = {"batch": 0, "samples": 0}

    def account(n_calls: int, batch: int) -> None:
        calls["batch"] += n_calls
        calls["samples"] += n_calls * batch

    # 1. Teacher on the candidate grid.
    if isinstance(candidates, int):
        if candidates < steps:
            raise ValueError(f"candidates={candidates} must be at least the {steps} steps of the grid")
        cand = make_grid(sde, candidates, "logsnr", device=device)
    else:
        cand = make_grid(sde, None, as_time(candidates), device=device)
    g = torch.Generator().manual_seed(int(seed))
    x_T = (torch.randn((n_samples,) + shape, generator=g, dtype=torch.float64) * sde.prior_std()).to(device)
    traj, n = teacher_trajectory(sm, sde, x_T, cand, rtol=teacher_tol, atol=teacher_tol)
    account(n, n_samples)
    log(f"teacher: {n} dopri5 calls on {n_samples} samples, {len(cand)} candidate times")
    ref_end = traj[-1]
    alpha, s = sde.alpha(cand), sde.sigma_tilde(cand)

    # 2. Cost matrix and dynamic programme.
    M = len(cand)
    C = np.full((M, M), np.inf)
    xt = traj / alpha.reshape((-1,) + (1,) * (traj.ndim - 1))
    if cost == "euler":
        for i in range(M - 1):
            eps = sm(traj[i], cand[i]).eps
            account(1, n_samples)
            step = xt[i][None] + (s[i + 1:] - s[i]).reshape((-1,) + (1,) * eps.ndim) * eps[None]
            C[i, i + 1:] = pathwise_error(step.flatten(0, 1), xt[i + 1:].flatten(0, 1)).reshape(M - 1 - i, -1) \
                .mean(1).numpy()
    else:
        for i in range(M - 1):
            for j in range(i + 1, M):
                r = _run(sm, sde, sampler, cand[[i, j]], traj[i], options)
                account(r.nfe, n_samples)
                C[i, j] = float(pathwise_error(r.x / alpha[j], xt[j]).mean())
    path = _dp(C, steps, float(coeff))
    dp_grid = cand[path]
    log(f"dynamic programme: {steps} steps from {M} candidates ({cost} cost)")

    def loss(ts: Tensor) -> float:
        r = _run(sm, sde, sampler, ts, x_T, options)
        account(r.nfe, n_samples)
        return _reduce(pathwise_error(r.x, ref_end), objective)

    default_grid = make_grid(sde, steps, spec.default_schedule, device=device)
    err_default, err_dp = loss(default_grid), loss(dp_grid)
    # Start the search from the best (end to end) of the DP grid, the default and the other
    # standard grids, and the AYS shape: a local search keeps the basin it starts in.
    starts = {"dp": (dp_grid, err_dp), "default": (default_grid, err_default)}
    for name in ("logsnr", "karras", "ays_sd15"):
        if name != spec.default_schedule:
            ts = published_grid(name, sde, steps).ts.to(device) if name == "ays_sd15" else make_grid(sde, steps, name,
                                                                                                      device=device)
            starts[name] = (ts, loss(ts))
    start = min(starts, key=lambda k: starts[k][1])
    best, best_err = starts[start]

    # 3. Coordinate search in u = log sigma~ on the interior times.
    sweeps = 0
    if refine and steps > 1:
        u = torch.log(sde.sigma_tilde(best))
        frac = 0.5
        for sweeps in range(1, max_sweeps + 1):
            improved = False
            for k in range(1, steps):
                for sign in (-1.0, 1.0):
                    gap = (u[k - 1] - u[k]) if sign > 0 else (u[k] - u[k + 1])
                    trial = u.clone()
                    trial[k] = u[k] + sign * frac * gap
                    ts = sde.t_from_sigma_tilde(torch.exp(trial))
                    ts[0], ts[-1] = best[0], best[-1]
                    if not bool((ts[1:] < ts[:-1]).all()):
                        continue
                    e = loss(ts)
                    if e < best_err:
                        best, best_err, u, improved = ts, e, trial, True
                        break
            log(f"refine sweep {sweeps}: {objective} pathwise error {best_err:.4g} (move {frac:g} of the gaps)")
            if not improved:
                frac *= 0.5
                if frac < 1e-3:
                    break
    wall = time.perf_counter() - t_start

    info: dict[str, Any] = {
        "source": "optimize_schedule", "method": "GITS dynamic programme + end-to-end coordinate search",
        "sampler": sampler, "options": options, "nfe": int(nfe), "steps": steps, "denoise": denoise,
        "sde": _sde_config(sde), "fit": {"n_samples": n_samples, "seed": seed, "candidates": M, "cost": cost,
                                         "coeff": coeff, "refine": refine, "sweeps": sweeps, "start": start,
                                         "start_errors": {k: v[1] for k, v in starts.items()}},
        "fit_error": {"objective": objective, "default": err_default, "dp": err_dp, "final": best_err},
    }
    if n_validate:
        gv = torch.Generator().manual_seed(int(seed) + 1)
        xv = (torch.randn((n_validate,) + shape, generator=gv, dtype=torch.float64) * sde.prior_std()).to(device)
        refv, n = teacher_trajectory(sm, sde, xv, cand[[0, -1]], rtol=teacher_tol, atol=teacher_tol)
        account(n, n_validate)
        val = {}
        for key, ts in (("default", default_grid), ("final", best)):
            r = _run(sm, sde, sampler, ts, xv, options)
            account(r.nfe, n_validate)
            err = pathwise_error(r.x, refv[-1])
            val[key] = {k: _reduce(err, k) for k in OBJECTIVES}
        info["validation_error"] = {**val, "n_samples": n_validate, "seed": seed + 1}
    info["cost"] = {"network_batch_calls": calls["batch"], "sample_evaluations": calls["samples"],
                    "wall_s": round(wall if not n_validate else time.perf_counter() - t_start, 3)}
    return TimeGrid(best, info)
