"""Time grids for samplers: ``steps`` intervals, ``steps + 1`` times from T down to t_min.

* ``uniform``: uniform in t (Song et al. 2021).
* ``karras``: uniform in sigma~^(1/rho), sigma~ = sigma/alpha (Karras et al. 2022, Eq. 5; rho = 7).
* ``logsnr``: uniform in lambda = log(alpha/sigma) (Lu et al. 2022, "logSNR").
* ``quadratic``: uniform in sqrt(t) (DDIM's quadratic skip).
* explicit: a decreasing 1-D sequence of times in [t_min, T].

All grids are float64 and are checked: strictly decreasing (no zero-length step), inside [t_min, T].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._utils import as_time
from .distributed import pick_device
from .registry import Int, Real, Registry
from .sde import LinearSDE

__all__ = ["make_grid", "SCHEDULES", "GRIDS"]


def _uniform(sde: LinearSDE, u: Tensor, t_hi: float, t_lo: float) -> Tensor:
    """Uniform in t (Song et al. 2021)."""
    return t_hi + u * (t_lo - t_hi)


def _quadratic(sde: LinearSDE, u: Tensor, t_hi: float, t_lo: float) -> Tensor:
    """Uniform in sqrt(t) (DDIM's quadratic skip)."""
    return (t_hi**0.5 + u * (t_lo**0.5 - t_hi**0.5)) ** 2


def _logsnr(sde: LinearSDE, u: Tensor, t_hi: float, t_lo: float) -> Tensor:
    """Uniform in lambda = log(alpha/sigma) (Lu et al. 2022, "logSNR")."""
    lam_hi, lam_lo = sde.lam(as_time(t_hi)), sde.lam(as_time(t_lo))
    return sde.inverse_lambda(lam_hi + u * (lam_lo - lam_hi))


def _karras(sde: LinearSDE, u: Tensor, t_hi: float, t_lo: float, *, rho: float = 7.0) -> Tensor:
    """Uniform in sigma~^(1/rho) (Karras et al. 2022, Eq. 5)."""
    s_max = float(sde.sigma_tilde(as_time(t_hi)))
    s_min = float(sde.sigma_tilde(as_time(t_lo)))
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return sde.t_from_sigma_tilde(sig)


#: the named grids: ``fn(sde, u, t_hi, t_lo, **options)`` maps u = 0 .. 1 (steps + 1 points) to times.
GRIDS = Registry("schedule", skip=("sde", "u", "t_hi", "t_lo"))
GRIDS.add("uniform", _uniform)
GRIDS.add("karras", _karras, params={"rho": Real(gt=0)})
GRIDS.add("logsnr", _logsnr)
GRIDS.add("quadratic", _quadratic)
SCHEDULES = tuple(GRIDS.names())


def make_grid(
    sde: LinearSDE,
    steps: int | None,
    schedule: str | Any = "uniform",
    *,
    rho: float = 7.0,
    t_min: float | None = None,
    T: float | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Return the (steps + 1,) float64 grid from T to t_min (or the explicit grid, checked)."""
    where = "make_grid"
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"{where}: sde must be a scoresde LinearSDE; got {type(sde).__name__}")
    if device is not None:
        device = pick_device(device)  # a device torch does not know, or one this machine lacks: ValueError
    t_lo = sde.t_min if t_min is None else Real().check("t_min", t_min, where)
    t_hi = sde.T if T is None else Real().check("T", T, where)
    Real(gt=0).check("rho", rho, where)  # checked for every schedule, though only 'karras' uses it
    if not isinstance(schedule, str):
        if t_min is not None or T is not None:
            raise ValueError(f"{where}: t_min and T set the ends of a named schedule; an explicit schedule has its own "
                             f"(got t_min={t_min!r}, T={T!r}): drop them, or change the grid")
        if isinstance(schedule, (bool, int, float)) or not hasattr(schedule, "__len__"):
            raise TypeError(f"{where}: schedule must be a name ({', '.join(GRIDS.names())}) or a decreasing 1-D sequence "
                            f"of times; got {schedule!r}")
        try:
            ts = as_time(schedule, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{where}: an explicit schedule must be a 1-D sequence of numbers; got {schedule!r} "
                            f"({err})") from None
        if ts.ndim != 1 or ts.numel() < 2:
            raise ValueError(f"an explicit schedule must be a 1-D sequence of at least 2 times; got shape {tuple(ts.shape)}")
        if steps is not None and ts.numel() != steps + 1:
            raise ValueError(f"explicit schedule has {ts.numel()} times but steps={steps} needs {steps + 1}")
        try:
            _check_grid(sde, ts, "schedule")
        except ValueError as err:
            if float(ts[-1]) == 0.0:  # most likely a k-diffusion sigma list (noise levels, ending in 0)
                raise ValueError(f"{err}. A k-diffusion sigma list? (ts, denoise) = "
                                 "scoresde.adapters.grid_from_sigmas(sde, sigmas) converts it") from None
            raise
        return ts
    if schedule not in GRIDS:
        raise ValueError(
            f"schedule={schedule!r} is not one of the accepted values: {', '.join(map(repr, GRIDS.names()))}, "
            "or an explicit decreasing sequence of times"
        )
    if steps is None or not Int(ge=1).accepts(steps):
        raise ValueError(f"steps must be a positive integer (the number of time intervals); got {steps!r}")
    if not sde.t_min - 1e-12 <= t_lo < t_hi <= sde.T + 1e-12:
        raise ValueError(f"need {sde.t_min} <= t_min < T <= {sde.T}; got t_min={t_lo}, T={t_hi}")
    steps = int(steps)
    entry = GRIDS.get(schedule)
    opts = entry.validate({"rho": rho} if "rho" in entry.defaults else {})
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    ts = entry.obj(sde, u, t_hi, t_lo, **opts)
    ts[0], ts[-1] = t_hi, t_lo  # exact endpoints (inverse maps are exact to round-off only)
    ts = ts.to(device)
    _check_grid(sde, ts, f"the {schedule!r} grid with steps={steps}")
    return ts


def _check_grid(sde: LinearSDE, ts: Tensor, what: str) -> None:
    tc = ts.detach().cpu()
    if not bool(torch.isfinite(tc).all()):
        raise ValueError(f"{what} contains NaN or Inf")
    d = tc[1:] - tc[:-1]
    if bool((d >= 0).any()):
        i = int(torch.nonzero(d >= 0)[0])
        raise ValueError(
            f"{what} must be strictly decreasing (no zero-length or backward step); "
            f"t[{i}]={float(tc[i]):.17g}, t[{i + 1}]={float(tc[i + 1]):.17g}"
        )
    sde.check_t(tc, name=what)
