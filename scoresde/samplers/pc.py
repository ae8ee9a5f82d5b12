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
from .tables import CoefficientTable, StageTable, TableBuilder, make_table

__all__ = [
    "euler_maruyama", "reverse_diffusion", "ancestral", "pc", "PREDICTORS", "CORRECTORS",
    "euler_maruyama_coefficients", "reverse_diffusion_coefficients", "ancestral_coefficients", "pc_coefficients",
]


# ---------------------------------------------------------------------- predictor steps (1 NFE each)
# Each predictor is a plan (its float64 per-step coefficients for the whole grid, computed before
# the loop and cast to x's dtype once) and a step that uses step i's coefficients.
def _cast_steps(x, *vs):
    return list(zip(*(v.to(device=x.device, dtype=x.dtype).unbind(0) for v in vs), strict=True))


def euler_maruyama_plan(sde: LinearSDE, x, ts):
    dt = ts[1:] - ts[:-1]  # negative: reverse time
    return _cast_steps(x, sde.f(ts[:-1]), sde.g2(ts[:-1]), dt, sde.g(ts[:-1]), (-dt).sqrt())


def euler_maruyama_step(model, x, t_cur, coef, noise):
    """Euler-Maruyama step of the reverse-time SDE (Song et al. 2021, Eq. 6): x + [f x - g^2 score] dt + g sqrt(-dt) z."""
    f, g2, dt, g, sqrt_dt = coef
    drift = f * x - g2 * model(x, t_cur).score
    return x + drift * dt + g * sqrt_dt * noise(x)


def reverse_diffusion_plan(sde: LinearSDE, x, ts):
    a, b2 = sde.transition(ts[1:], ts[:-1])  # the exact transition t_next -> t_cur (sde.discretize)
    return _cast_steps(x, a, torch.sqrt(b2))


def reverse_diffusion_step(model, x, t_cur, coef, noise):
    """Reverse-diffusion step (Song et al. 2021, Eq. 46): x_mean = x - f + G^2 score, x = x_mean + G z."""
    a, G = coef
    f = (a - 1.0) * x
    x_mean = x - f + G**2 * model(x, t_cur).score
    return x_mean + G * noise(x)


def ancestral_plan(sde: LinearSDE, x, ts):
    a, b2 = sde.transition(ts[1:], ts[:-1])  # x_cur = a x_next + b z
    std = torch.sqrt(b2 * sde.sigma(ts[1:]) ** 2 / sde.sigma(ts[:-1]) ** 2)
    return _cast_steps(x, b2, a, std)


def ancestral_step(model, x, t_cur, coef, noise):
    """Ancestral step (Song et al. 2021, App. F; Ho et al. 2020): the posterior q(x_next | x, Tweedie x0)."""
    b2, a, std = coef
    x_mean = (x + b2 * model(x, t_cur).score) / a
    return x_mean + std * noise(x)


PREDICTORS = {
    "euler_maruyama": (euler_maruyama_plan, euler_maruyama_step),
    "reverse_diffusion": (reverse_diffusion_plan, reverse_diffusion_step),
    "ancestral": (ancestral_plan, ancestral_step),
    "none": None,
}
CORRECTORS = ("langevin", "ald", "none")
LOW_DIM = 16  # below this many dimensions per sample, pc warns about norm='per_sample' (measured: docs/samplers.md)


# ---------------------------------------------------------------------- the predictors as tables
# Each predictor step is linear in x and the score, and score = (alpha x0 - x) / sigma^2 is linear in x
# and x0, so a step is x' = a x + b x0 + c z with (a, b, c) from the grid (float64, (N,) each).
def _em_abc(sde: LinearSDE, t_cur, t_next):
    """Euler-Maruyama: x' = x + [f x - g^2 score] dt + g sqrt(-dt) z."""
    dt = t_next - t_cur
    alpha, sigma2, g2 = sde.alpha(t_cur), sde.sigma(t_cur) ** 2, sde.g2(t_cur)
    return 1.0 + sde.f(t_cur) * dt + g2 * dt / sigma2, -g2 * dt * alpha / sigma2, sde.g(t_cur) * torch.sqrt(-dt)


def _rd_abc(sde: LinearSDE, t_cur, t_next):
    """Reverse diffusion: x' = (2 - a_tr) x + b^2 score + b z (exact transition t_next -> t_cur)."""
    a_tr, b2 = sde.transition(t_next, t_cur)
    alpha, sigma2 = sde.alpha(t_cur), sde.sigma(t_cur) ** 2
    return 2.0 - a_tr - b2 / sigma2, b2 * alpha / sigma2, torch.sqrt(b2)


def _anc_abc(sde: LinearSDE, t_cur, t_next):
    """Ancestral: x' = (x + b^2 score) / a_tr + sqrt(b^2 sigma_next^2 / sigma_cur^2) z."""
    a_tr, b2 = sde.transition(t_next, t_cur)
    alpha, sigma2 = sde.alpha(t_cur), sde.sigma(t_cur) ** 2
    return (1.0 - b2 / sigma2) / a_tr, b2 * alpha / (sigma2 * a_tr), torch.sqrt(b2 * sde.sigma(t_next) ** 2 / sigma2)


_PREDICTOR_ABC = {"euler_maruyama": _em_abc, "reverse_diffusion": _rd_abc, "ancestral": _anc_abc}


def _predictor_table(name: str, sde: LinearSDE, ts, point_mass: bool) -> CoefficientTable:
    a, b, c = _PREDICTOR_ABC[name](sde, ts[:-1], ts[1:])
    return make_table(name, sde, ts, a, b, c, point_mass=point_mass)


def euler_maruyama_coefficients(sde: LinearSDE, ts) -> CoefficientTable:
    """Euler-Maruyama as a table (not exact for a point mass)."""
    return _predictor_table("euler_maruyama", sde, ts, False)


def reverse_diffusion_coefficients(sde: LinearSDE, ts) -> CoefficientTable:
    """Reverse diffusion as a table (not exact for a point mass: its mean step is (2 - a_tr) x)."""
    return _predictor_table("reverse_diffusion", sde, ts, False)


def ancestral_coefficients(sde: LinearSDE, ts) -> CoefficientTable:
    """Ancestral sampling as a table; the DDPM posterior keeps a point mass's mean and spread exactly."""
    return _predictor_table("ancestral", sde, ts, True)


def _predictor_loop(predictor, model, sde, x, ts, noise, callback):
    plan, step = predictor
    for i, coef in enumerate(plan(sde, x, ts)):
        x = step(model, x, ts[i], coef, noise)
        x = callback(i, x)
    return x


# ---------------------------------------------------------------------- predictor-only samplers
@register("euler_maruyama", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=1000,
          coefficients=euler_maruyama_coefficients, paper="Song et al. 2021, App. E (EulerMaruyamaPredictor)")
def euler_maruyama(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6); strong order 1/2 (1 if additive), 1 NFE per step."""
    return _predictor_loop(PREDICTORS["euler_maruyama"], model, sde, x, ts, noise, callback)


@register("reverse_diffusion", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=1000,
          coefficients=reverse_diffusion_coefficients, paper="Song et al. 2021, App. E (ReverseDiffusionPredictor)")
def reverse_diffusion(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Reverse-diffusion predictor (Song et al. 2021, App. E, Eq. 46) on the exact transition; 1 NFE per step."""
    return _predictor_loop(PREDICTORS["reverse_diffusion"], model, sde, x, ts, noise, callback)


@register("ancestral", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=1000,
          coefficients=ancestral_coefficients, paper="Song et al. 2021, App. F (AncestralSamplingPredictor); Ho et al. 2020")
def ancestral(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Ancestral sampling (Song et al. 2021, App. F; Ho et al. 2020, Alg. 2) for any linear SDE; 1 NFE per step."""
    return _predictor_loop(PREDICTORS["ancestral"], model, sde, x, ts, noise, callback)


# ---------------------------------------------------------------------- predictor-corrector
_PC_PARAMS = {"predictor": Choice(tuple(PREDICTORS)), "corrector": Choice(CORRECTORS), "snr": Real(gt=0),
              "n_corrector_steps": Int(ge=1), "norm": Choice(NORMS), "corrector_first": Bool()}


def _pc_nfe(steps: int, o: dict) -> int:
    return steps * (int(o["predictor"] != "none") + (o["n_corrector_steps"] if o["corrector"] != "none" else 0))


def pc_coefficients(sde: LinearSDE, ts, *, predictor: str = "reverse_diffusion", corrector: str = "langevin",
                    snr: float = 0.16, n_corrector_steps: int = 1, norm: str = "per_sample",
                    corrector_first: bool = False) -> StageTable:
    """``pc`` as a table, for the correctors with a fixed step: ``ald`` and ``none`` (see :func:`pc`).

    The ``langevin`` corrector has no table: its step 2 alpha (snr ||z|| / ||score||)^2 depends on
    the state and the noise (not linear in them).
    """
    if corrector == "langevin":
        raise ValueError("pc with corrector='langevin' has no coefficient table: its step 2 alpha (snr ||z|| / ||score||)^2 "
                         "depends on the state and the noise; use corrector='ald' or 'none', or the eager sampler")
    alphas = sde.transition(ts[1:], ts[:-1])[0] ** 2
    sigma, alpha = sde.sigma(ts), sde.alpha(ts)
    at = slice(0, -1) if corrector_first else slice(1, None)  # the corrector's time: t_cur or t_next
    # score_sde's ald step 2 alpha_i (snr sigma(t))^2: x <- x + step score + sqrt(2 step) z.
    step = 2.0 * alphas * (snr * sigma[at]) ** 2
    corr = [v.tolist() for v in (1.0 - step / sigma[at] ** 2, step * alpha[at] / sigma[at] ** 2, torch.sqrt(2.0 * step))]
    abc = _PREDICTOR_ABC.get(predictor)
    pred = [v.tolist() for v in abc(sde, ts[:-1], ts[1:])] if abc is not None else None
    n_corr = n_corrector_steps if corrector == "ald" else 0
    tl = ts.tolist()
    b = TableBuilder("pc", ts, 1)
    for i in range(len(ts) - 1):
        ci = i if corrector_first else i + 1
        rows = []  # (call time, a, b, c, t_start, t_end)
        corr_rows = [(tl[ci], corr[0][i], corr[1][i], corr[2][i], tl[ci], tl[ci])] * n_corr
        if corrector_first:
            rows += corr_rows
        if pred is not None:
            rows.append((tl[i], pred[0][i], pred[1][i], pred[2][i], tl[i], tl[i + 1]))
        if not corrector_first:
            rows += corr_rows
        for k, (t, a, w, c, t0, t1) in enumerate(rows):
            b.call(("m", i, k), t)
            b.update(a, {("m", i, k): w}, c=c, draw=True, t_start=t0, t_end=t1, step=i if k == len(rows) - 1 else None)
    return b.build(sde, point_mass=False)


# With corrector='none', pc is its predictor (strong order 1); a Langevin corrector targets p_t, not the path.
@register("pc", kind="pc", stochastic=True, default_steps=1000, default_schedule="uniform", params=_PC_PARAMS,
          strong_order=lambda o: 1.0 if o["corrector"] == "none" else None, nfe=_pc_nfe,
          coefficients=pc_coefficients, table=lambda o: o["corrector"] != "langevin",
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
    coefs = predict[0](sde, x, ts) if predict is not None else None
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
            x = predict[1](model, x, t_cur, coefs[i], noise)
        # The paper's order (Alg. 1): correct at t_next.
        if not corrector_first:
            x = correct(x, t_next, alphas[i])
        x = callback(i, x)
    return x

