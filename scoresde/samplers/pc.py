"""Predictor-corrector samplers of Song et al. 2021 (score_sde): predictors and correctors.

Each predictor is one function ``step(model, sde, x, t_cur, t_next, noise) -> x`` (one NFE),
used both by its own registered sampler (``euler_maruyama``, ``reverse_diffusion``,
``ancestral``) and by ``pc``. The correctors live in :mod:`scoresde.samplers.langevin`.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..registry import Bool, Choice, Int, Real
from ..sde import LinearSDE
from .langevin import NORMS, ald_corrector, langevin_corrector
from .registry import register

__all__ = ["euler_maruyama", "reverse_diffusion", "ancestral", "pc", "PREDICTORS", "CORRECTORS"]


# ---------------------------------------------------------------------- predictor steps (1 NFE each)
def euler_maruyama_step(model, sde: LinearSDE, x, t_cur, t_next, noise):
    """Euler-Maruyama step of the reverse-time SDE (Song et al. 2021, Eq. 6)."""
    dt = t_next - t_cur  # negative: reverse time
    drift = sde.reverse_drift(x, t_cur, model(x, t_cur).score)
    return x + drift * dt.to(x.dtype) + sde.g(t_cur).to(x.dtype) * (-dt).sqrt().to(x.dtype) * noise(x)


def reverse_diffusion_step(model, sde: LinearSDE, x, t_cur, t_next, noise):
    """Reverse-diffusion step (Song et al. 2021, Eq. 46): x_mean = x - f + G^2 score, x = x_mean + G z."""
    f, G = sde.discretize(x, t_cur, t_next)
    x_mean = x - f + G**2 * model(x, t_cur).score
    return x_mean + G * noise(x)


def ancestral_step(model, sde: LinearSDE, x, t_cur, t_next, noise):
    """Ancestral step (Song et al. 2021, App. F; Ho et al. 2020): the posterior q(x_next | x, Tweedie x0)."""
    a, b2 = sde.transition(t_next, t_cur)  # x_cur = a x_next + b z
    std = torch.sqrt(b2 * sde.sigma(t_next) ** 2 / sde.sigma(t_cur) ** 2)
    x_mean = (x + b2.to(x.dtype) * model(x, t_cur).score) / a.to(x.dtype)
    return x_mean + std.to(x.dtype) * noise(x)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
    "none": None,
}
CORRECTORS = ("langevin", "ald", "none")
LOW_DIM = 16  # below this many dimensions per sample, pc warns about norm='per_sample' (measured: docs/samplers.md)


def _predictor_loop(step, model, sde, x, ts, noise, callback):
    for i in range(len(ts) - 1):
        x = step(model, sde, x, ts[i], ts[i + 1], noise)
        x = callback(i, x)
    return x


# ---------------------------------------------------------------------- predictor-only samplers
@register("euler_maruyama", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=1000,
          paper="Song et al. 2021, App. E (EulerMaruyamaPredictor)")
def euler_maruyama(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6); strong order 1/2 (1 if additive), 1 NFE per step."""
    return _predictor_loop(euler_maruyama_step, model, sde, x, ts, noise, callback)


@register("reverse_diffusion", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=1000,
          paper="Song et al. 2021, App. E (ReverseDiffusionPredictor)")
def reverse_diffusion(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Reverse-diffusion predictor (Song et al. 2021, App. E, Eq. 46) on the exact transition; 1 NFE per step."""
    return _predictor_loop(reverse_diffusion_step, model, sde, x, ts, noise, callback)


@register("ancestral", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=1000,
          paper="Song et al. 2021, App. F (AncestralSamplingPredictor); Ho et al. 2020")
def ancestral(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Ancestral sampling (Song et al. 2021, App. F; Ho et al. 2020, Alg. 2) for any linear SDE; 1 NFE per step."""
    return _predictor_loop(ancestral_step, model, sde, x, ts, noise, callback)


# ---------------------------------------------------------------------- predictor-corrector
_PC_PARAMS = {"predictor": Choice(tuple(PREDICTORS)), "corrector": Choice(CORRECTORS), "snr": Real(gt=0),
              "n_corrector_steps": Int(ge=1), "norm": Choice(NORMS), "corrector_first": Bool()}


def _pc_nfe(steps: int, o: dict) -> int:
    return steps * (int(o["predictor"] != "none") + (o["n_corrector_steps"] if o["corrector"] != "none" else 0))


# With corrector='none', pc is its predictor (strong order 1); a Langevin corrector targets p_t, not the path.
@register("pc", kind="pc", stochastic=True, default_steps=1000, default_schedule="uniform", params=_PC_PARAMS,
          strong_order=lambda o: 1.0 if o["corrector"] == "none" else None, nfe=_pc_nfe,
          nfe_per_step="(1 if predictor != 'none') + (n_corrector_steps if corrector != 'none')",
          variants=({"norm": "batch"}, {"corrector": "ald"}, {"corrector": "none"}, {"predictor": "none"},
                    {"predictor": "euler_maruyama", "n_corrector_steps": 2, "corrector_first": True}),
          paper="Song et al. 2021, Alg. 1-3 (predictor-corrector sampling)")
def pc(model, sde: LinearSDE, x, ts, *, noise, callback, predictor: str = "reverse_diffusion",
       corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1, norm: str = "per_sample",
       corrector_first: bool = False):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1); 1 + n_corrector_steps NFE per step."""
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor='none' with corrector='none' does nothing; choose a predictor "
                         f"({', '.join(p for p in PREDICTORS if p != 'none')}) or a corrector (langevin, ald)")
    dim = math.prod(x.shape[1:])
    if corrector == "langevin" and norm == "per_sample" and dim < LOW_DIM:
        warnings.warn(
            f"pc: norm='per_sample' with {dim} dimension(s) per sample: the per-sample Langevin step "
            "2 alpha (snr ||z|| / ||score||)^2 is heavy-tailed in low dimension and biased, and can throw samples "
            "far out (2-D mixture, exact score: about 2% of samples); use norm='batch' (score_sde's rule) "
            "or corrector='ald' (see docs/samplers.md)", UserWarning, stacklevel=3)
    predict = PREDICTORS[predictor]
    # alpha_i = a^2 of each step's transition (1 - beta_i on VP, 1 on VE), float64, before the loop.
    alphas = sde.transition(ts[1:], ts[:-1])[0] ** 2

    def correct(x, t, alpha):
        for _ in range(n_corrector_steps if corrector != "none" else 0):
            if corrector == "langevin":
                x = langevin_corrector(model, x, t, alpha, noise, snr=snr, norm=norm)
            else:
                x = ald_corrector(model, sde, x, t, alpha, noise, snr=snr)
        return x

    for i in range(len(ts) - 1):
        t_cur, t_next = ts[i], ts[i + 1]
        # score_sde's code order: correct at t_cur, then predict.
        if corrector_first:
            x = correct(x, t_cur, alphas[i])
        # Predictor step t_cur -> t_next.
        if predict is not None:
            x = predict(model, sde, x, t_cur, t_next, noise)
        # The paper's order (Alg. 1): correct at t_next.
        if not corrector_first:
            x = correct(x, t_next, alphas[i])
        x = callback(i, x)
    return x

