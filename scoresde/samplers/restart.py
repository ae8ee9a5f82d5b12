"""Restart sampling (Xu et al. 2023): ODE steps, with forward-noise jumps and ODE back-solves in between.

The main pass is EDM's Heun sampler (:func:`scoresde.samplers.karras.heun`) on the grid. On
reaching the grid point nearest to a restart interval's lower noise level ``s_min`` (sigma~), the
sampler K times

1. jumps forward in noise: ``x~ <- x~ + S_noise sqrt(s_max^2 - s_min^2) z`` (the exact forward
   transition of the SDE from s_min to s_max, written in x~ = x / alpha, sigma~ = sigma / alpha),
2. solves the probability-flow ODE back from s_max to s_min with ``restart_steps`` Heun steps on
   a Karras grid (rho = 7).

If the ODE solves were exact, every state at a restart point would be distributed as the exact
marginal p_t there: the jump maps p_{s_min} to p_{s_max} exactly and the ODE maps it back. The
added noise contracts the errors accumulated before (Xu et al. 2023, Thm. 2).

Defaults are the reference code's CIFAR-10 VP setting (``restart_info = {"0": [3, 2, 0.06, 0.30]}``
with 18 main points: 3 points = 2 Heun steps per back-solve, K = 2, interval [0.06, 0.30]).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ..sde import LinearSDE
from .karras import heun
from .registry import register

__all__ = ["restart", "restart_plan"]


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} is not accepted by sampler 'restart': accepted values are integers >= {lo}")
    return value


def _check_pos(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is not accepted by sampler 'restart': accepted values are positive finite numbers")
    return float(value)


def _intervals(intervals, restart_steps, K, s_min, s_max) -> list[tuple[int, int, float, float]]:
    """The restart intervals as (restart_steps, K, s_min, s_max), checked."""
    if intervals is None:
        intervals = [(restart_steps, K, s_min, s_max)]
    if not isinstance(intervals, (list, tuple)) or not all(isinstance(v, (list, tuple)) and len(v) == 4 for v in intervals):
        raise ValueError(f"intervals={intervals!r} is not accepted by sampler 'restart': accepted values are None or a "
                         "sequence of (restart_steps, K, s_min, s_max) tuples")
    out = []
    for n, k, lo, hi in intervals:
        n, k = _check_int("restart_steps", n, 1), _check_int("K", k, 0)
        lo, hi = _check_pos("s_min", lo), _check_pos("s_max", hi)
        if not lo < hi:
            raise ValueError(f"sampler 'restart' needs s_min < s_max; got s_min={lo}, s_max={hi}")
        out.append((n, k, lo, hi))
    return out


def restart_plan(sde: LinearSDE, ts: Tensor, intervals: Sequence[tuple[int, int, float, float]],
                 rho: float = 7.0) -> dict[int, tuple[int, Tensor, float]]:
    """{grid index: (K, back-solve grid from t(s_max) to ts[index], sigma~ jump std)}, float64.

    The restart point is the grid point (index >= 1) whose sigma~ is nearest to s_min, as in the
    reference code; its sigma~ replaces s_min.
    """
    s = sde.sigma_tilde(ts)
    plan: dict[int, tuple[int, Tensor, float]] = {}
    for n, k, lo, hi in intervals:
        idx = 1 + int(torch.argmin((s[1:] - lo).abs()))
        s_lo = float(s[idx])
        if not s_lo < hi <= float(s[0]) * (1 + 1e-12):
            raise ValueError(f"sampler 'restart': the restart interval needs sigma~(restart point) < s_max <= sigma~(T); "
                             f"got s_min={lo} -> grid point {idx} with sigma~ {s_lo:.6g}, s_max={hi}, "
                             f"sigma~(T)={float(s[0]):.6g}")
        if idx in plan:
            raise ValueError(f"sampler 'restart': two restart intervals map to the same grid point {idx} (sigma~ {s_lo:.6g})")
        u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=ts.device)
        sub_s = (hi ** (1 / rho) + u * (s_lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        sub_ts = sde.t_from_sigma_tilde(sub_s)
        sub_ts[-1] = ts[idx]
        sub_ts[0] = torch.minimum(sub_ts[0], ts[0])
        if not bool((sub_ts[1:] < sub_ts[:-1]).all()):
            raise ValueError(f"sampler 'restart': the back-solve grid from s_max={hi} to sigma~ {s_lo:.6g} is not strictly "
                             "decreasing in t (use fewer restart_steps or a wider interval)")
        plan[idx] = (k, sub_ts, math.sqrt(hi * hi - s_lo * s_lo))
    return plan


# traits: order=None (ODE parts order 2), strong_order=None, stochastic=any(K > 0),
#         nfe=2 steps + sum over intervals of 2 restart_steps K
@register("restart", kind="sde", order=None, stochastic=True, default_steps=17, default_schedule="karras",
          nfe_per_step="2 (Heun), plus 2 restart_steps per restart, K restarts per interval",
          needs=("sigma_tilde", "t_from_sigma_tilde"), paper="Xu et al. 2023 (Restart sampling), Alg. 1")
def restart(model, sde: LinearSDE, x, ts, *, noise, callback, K: int = 2, s_min: float = 0.06, s_max: float = 0.30,
            restart_steps: int = 2, S_noise: float = 1.0, intervals: Sequence[Sequence[float]] | None = None):
    """Restart sampling (Xu et al. 2023, Alg. 1): Heun ODE steps; K noise jumps s_min -> s_max, each solved back.

    ``intervals`` gives several restart intervals as (restart_steps, K, s_min, s_max) tuples
    (the reference's ``restart_info``; its point count is restart_steps + 1) and overrides the
    single-interval options. ``callback(i, x)`` after main step i sees the state after the
    restarts at that point.
    """
    if isinstance(S_noise, bool) or not isinstance(S_noise, (int, float)) or not (math.isfinite(S_noise) and S_noise >= 0):
        raise ValueError(f"S_noise={S_noise!r} is not accepted by sampler 'restart': accepted values are numbers >= 0")
    plan = restart_plan(sde, ts, _intervals(intervals, restart_steps, K, s_min, s_max))
    n = len(ts) - 1
    start = 0
    for idx in sorted(plan) + ([n] if n not in plan else []):
        # Main Heun steps from ts[start] to ts[idx].
        last, hold = idx - 1, idx in plan  # the step onto a restart point reports after its restarts

        def inner(i: int, xi: Tensor, offset: int = start, last: int = last, hold: bool = hold) -> None:
            if offset + i != last or not hold:
                callback(offset + i, xi)

        x = heun(model, sde, x, ts[start:idx + 1], noise=noise, callback=inner)
        if idx in plan:
            k, sub_ts, jump = plan[idx]
            a_lo, a_hi = (sde.alpha(sub_ts[[-1, 0]])).to(device=x.device, dtype=x.dtype)
            for _ in range(k):
                # Forward jump s_min -> s_max (exact transition, in x~), then the ODE back.
                x = a_hi * (x / a_lo + (jump * S_noise) * noise(x))
                x = heun(model, sde, x, sub_ts, noise=noise, callback=lambda i, xi: None)
            callback(last, x)
        start = idx
    return x
