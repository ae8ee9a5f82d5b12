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
from typing import Sequence

import torch
from torch import Tensor

from ..registry import Anything, Int, Real
from ..sde import LinearSDE
from .karras import heun
from .registry import register

__all__ = ["restart", "restart_plan"]


_WHERE = "sampler 'restart'"
_STEPS, _K, _LEVEL = Int(ge=1), Int(ge=0), Real(gt=0)


def _intervals(intervals, restart_steps, K, s_min, s_max) -> list[tuple[int, int, float, float]]:
    """The restart intervals as (restart_steps, K, s_min, s_max), checked."""
    if intervals is None:
        intervals = [(restart_steps, K, s_min, s_max)]
    if not isinstance(intervals, (list, tuple)) or not all(isinstance(v, (list, tuple)) and len(v) == 4 for v in intervals):
        raise ValueError(f"intervals={intervals!r} is not accepted by sampler 'restart': accepted values are None or a "
                         "sequence of (restart_steps, K, s_min, s_max) tuples")
    out = []
    for n, k, lo, hi in intervals:
        n, k = _STEPS.check("restart_steps", n, _WHERE), _K.check("K", k, _WHERE)
        lo, hi = _LEVEL.check("s_min", lo, _WHERE), _LEVEL.check("s_max", hi, _WHERE)
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


def _jumps(o: dict) -> bool:
    """Whether these options make any restart jump with noise."""
    return o["S_noise"] > 0 and any(k > 0 for _, k, _, _ in _intervals(o["intervals"], o["restart_steps"], o["K"],
                                                                          o["s_min"], o["s_max"]))


def _restart_nfe(steps: int, o: dict) -> int:
    # Heun main pass (2 per step) + per interval K back-solves of restart_steps Heun steps.
    ivs = _intervals(o["intervals"], o["restart_steps"], o["K"], o["s_min"], o["s_max"])
    return 2 * steps + sum(2 * n * k for n, k, _, _ in ivs)


# Restart jumps are not a discretisation of one SDE path (no strong order); without jumps it is heun.
@register("restart", kind="sde", stochastic=_jumps, order=lambda o: None if _jumps(o) else 2, nfe=_restart_nfe,
          exact_for_point_mass=lambda o: not _jumps(o), sde_eta=None, default_steps=17, default_schedule="karras",
          nfe_per_step="2 (Heun), plus 2 restart_steps per restart, K restarts per interval",
          params={"K": _K, "s_min": _LEVEL, "s_max": _LEVEL, "restart_steps": _STEPS, "S_noise": Real(ge=0),
                  "intervals": Anything(types=(list, tuple), optional=True,
                                        what="None or a sequence of (restart_steps, K, s_min, s_max) tuples")},
          variants=({"K": 0}, {"K": 1, "restart_steps": 3}),
          paper="Xu et al. 2023 (Restart sampling), Alg. 1")
def restart(model, sde: LinearSDE, x, ts, *, noise, callback, K: int = 2, s_min: float = 0.06, s_max: float = 0.30,
            restart_steps: int = 2, S_noise: float = 1.0, intervals: Sequence[Sequence[float]] | None = None):
    """Restart sampling (Xu et al. 2023, Alg. 1): Heun ODE steps; K noise jumps s_min -> s_max, each solved back.

    ``intervals`` gives several restart intervals as (restart_steps, K, s_min, s_max) tuples
    (the reference's ``restart_info``; its point count is restart_steps + 1) and overrides the
    single-interval options. ``callback(i, x)`` after main step i sees the state after the
    restarts at that point.
    """
    plan = restart_plan(sde, ts, _intervals(intervals, restart_steps, K, s_min, s_max))
    n = len(ts) - 1
    start = 0
    for idx in sorted(plan) + ([n] if n not in plan else []):
        # Main Heun steps from ts[start] to ts[idx].
        last, hold = idx - 1, idx in plan  # the step onto a restart point reports after its restarts

        def inner(i: int, xi: Tensor, offset: int = start, last: int = last, hold: bool = hold) -> Tensor:
            return callback(offset + i, xi) if (offset + i != last or not hold) else xi

        x = heun(model, sde, x, ts[start:idx + 1], noise=noise, callback=inner)
        if idx in plan:
            k, sub_ts, jump = plan[idx]
            a_lo, a_hi = (sde.alpha(sub_ts[[-1, 0]])).to(device=x.device, dtype=x.dtype)
            for _ in range(k):
                # Forward jump s_min -> s_max (exact transition, in x~), then the ODE back.
                x = a_hi * (x / a_lo + (jump * S_noise) * noise(x))
                x = heun(model, sde, x, sub_ts, noise=noise, callback=lambda i, xi: xi)
            x = callback(last, x)
        start = idx
    return x
