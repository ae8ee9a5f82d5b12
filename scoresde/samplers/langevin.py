"""Langevin dynamics: annealed Langevin (Song & Ermon 2019) and the PC correctors (Song et al. 2021).

One Langevin move ``x <- x + step * score + sqrt(2 step) z`` lives here once; the ``ald``
sampler and the ``langevin`` / ``ald`` correctors of :func:`scoresde.samplers.pc.pc` differ only
in how they choose ``step``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import append_dims
from ..registry import Int, Maybe, Real
from ..sde import LinearSDE
from .registry import register
from .tables import StageTable, TableBuilder

__all__ = ["ald", "ald_coefficients", "langevin_move", "langevin_corrector", "ald_corrector", "NORMS"]

#: how the Langevin corrector's ||z|| / ||score|| ratio is taken.
NORMS = ("per_sample", "batch")


def langevin_move(x: Tensor, score: Tensor, step: Tensor, z: Tensor) -> Tensor:
    """One unadjusted Langevin move; ``step`` is a scalar or (B,) tensor in x's dtype."""
    step = append_dims(step, x.ndim) if step.ndim else step
    return x + step * score + torch.sqrt(2.0 * step) * z


def _l2(v: Tensor, norm: str) -> Tensor:
    """Per-sample L2 norms (B,), or (``batch``) their batch mean broadcast to (B,) as in score_sde."""
    n = v.flatten(1).norm(dim=1)
    return n if norm == "per_sample" else n.mean().expand_as(n)


def langevin_corrector(model, x: Tensor, t: Tensor, alpha: Tensor, noise, *, snr: float, norm: str) -> Tensor:
    """Langevin corrector (Song et al. 2021, Alg. 4/5): step = 2 alpha (snr ||z|| / ||score||)^2; 1 NFE."""
    score = model(x, t).score
    z = noise(x)
    step = 2.0 * alpha.to(x.dtype) * (snr * _l2(z, norm) / _l2(score, norm)) ** 2
    return langevin_move(x, score, step, z)


def ald_corrector(model, sde: LinearSDE, x: Tensor, t: Tensor, alpha: Tensor, noise, *, snr: float) -> Tensor:
    """score_sde's AnnealedLangevinDynamics corrector: step = 2 alpha (snr sigma(t))^2; 1 NFE."""
    score = model(x, t).score
    step = (2.0 * alpha * (snr * sde.sigma(t)) ** 2).to(x.dtype)
    return langevin_move(x, score, step, noise(x))


def _check_ald(eps: float, sigma_last: float) -> None:
    # p_t has variance >= sigma_t^2 in every direction; Langevin steps >= 2 sigma^2 diverge there.
    if not eps < 2.0 * sigma_last**2:
        raise ValueError(
            f"eps={eps!r} must be below 2 sigma_L^2 = {2.0 * sigma_last**2:.3g} (sigma_L = sigma(ts[-1]) = "
            f"{sigma_last:.3g}): every level's step eps sigma_i^2 / sigma_L^2 would exceed 2 sigma_i^2 and diverge; "
            f"NCSN's eps = 2e-5 is 0.2 sigma_L^2 for sigma_L = 0.01"
        )


def ald_coefficients(sde: LinearSDE, ts, *, eps: float | None = None, n_steps_each: int = 100) -> StageTable:
    """Annealed Langevin dynamics as a table: each move x <- (1 - s/sigma^2) x + (s alpha/sigma^2) x0 + sqrt(2 s) z."""
    sigma2, alpha = sde.sigma(ts) ** 2, sde.alpha(ts)
    eps = 0.2 * float(sigma2[-1]) if eps is None else eps  # the sampler's default (see ald)
    _check_ald(eps, float(sigma2[-1]) ** 0.5)
    steps = eps * sigma2 / sigma2[-1]
    b = TableBuilder("ald", ts, 1)
    for level in range(len(ts)):
        s = steps[level]
        a, w, c = 1.0 - s / sigma2[level], s * alpha[level] / sigma2[level], torch.sqrt(2.0 * s)
        for k in range(n_steps_each):
            b.call(k, ts[level])
            last = k == n_steps_each - 1 and level > 0
            b.update(a, {k: w}, c=c, draw=True, t_start=ts[level], t_end=ts[level], step=level - 1 if last else None)
    return b.build(sde, point_mass=False)


@register("ald", kind="langevin", stochastic=True, default_steps=9, default_schedule="logsnr",
          coefficients=ald_coefficients,
          params={"eps": Maybe(Real(gt=0)), "n_steps_each": Int(ge=1)}, nfe=lambda steps, o: o["n_steps_each"] * (steps + 1),
          nfe_per_step="n_steps_each per noise level; steps + 1 levels", variants=({"n_steps_each": 3},),
          paper="Song & Ermon 2019, Alg. 1 (NCSN annealed Langevin dynamics)")
def ald(model, sde: LinearSDE, x, ts, *, noise, callback, eps: float | None = None, n_steps_each: int = 100):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1); n_steps_each NFE at each of the steps + 1 levels.

    ``eps`` is the step at the last level; the default ``None`` is NCSN's ratio
    eps = 0.2 sigma_L^2 (2e-5 at NCSN's sigma_L = 0.01), so it stays valid at any sigma_L.
    """
    sigma2 = sde.sigma(ts) ** 2
    if eps is None:
        eps = 0.2 * float(sigma2[-1])
    _check_ald(eps, float(sigma2[-1]) ** 0.5)
    # alpha_i = eps sigma_i^2 / sigma_L^2 at every time of the grid (float64, before the loop).
    steps = (eps * sigma2 / sigma2[-1]).to(x.dtype)
    for level in range(len(ts)):
        t = ts[level]
        # T Langevin steps targeting p_t.
        for _ in range(n_steps_each):
            x = langevin_move(x, model(x, t).score, steps[level], noise(x))
        if level > 0:
            x = callback(level - 1, x)
    return x

