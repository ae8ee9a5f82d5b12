"""Karras et al. 2022 (EDM) samplers and k-diffusion's Euler ancestral, for any linear SDE.

EDM writes the probability-flow ODE in the scaled variables ``x~ = x / alpha`` and
``sigma~ = sigma / alpha = exp(-lambda)``, where it reads ``dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~``
with ``D`` the data prediction x0. These variables exist for every linear SDE (``sde.sigma_tilde``,
``sde.t_from_sigma_tilde``), so the samplers below convert ``x <-> x~`` at each step and call the
model at ``(alpha x~, t(sigma~))``: on the EDM SDE (alpha = 1, sigma = t) they are EDM's own loops.

For a point mass c the scaled trajectory is linear in sigma~ (``x~ - c`` is proportional to
sigma~), so Euler and Heun steps in sigma~ are exact at any step count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import Real
from ..sde import LinearSDE
from .registry import register
from .tables import CoefficientTable, StageTable, TableBuilder, make_table

__all__ = ["heun", "edm_sde", "euler_ancestral", "euler_ancestral_coefficients", "heun_coefficients", "edm_sde_coefficients"]


def _scaled_grid(sde: LinearSDE, ts: Tensor) -> tuple[Tensor, Tensor]:
    """alpha and sigma~ on the grid (float64)."""
    return sde.alpha(ts), sde.sigma_tilde(ts)


def _cast(x: Tensor, *vs: Tensor) -> list[Tensor]:
    return [v.to(device=x.device, dtype=x.dtype) for v in vs]


def _heun_row(b: TableBuilder, i: int, t0, t1, alpha0, alpha1, s0, s1) -> None:
    """One EDM Heun step from (t0, sigma~ s0) to (t1, s1) in x = alpha x~: a call at the state, a
    call at the Euler point alpha1 (r xt + (1 - r) x0), r = s1/s0, and the trapezoidal update
    x' = alpha1 (r xt + (D/2)(1/s1 - 2/s0) x0 - (D/2s1) x0'), D = s1 - s0."""
    r, D = s1 / s0, s1 - s0
    b.call(("x0", i), t0)
    b.call(("x0'", i), t1, x=alpha1 * r / alpha0, terms={("x0", i): alpha1 * (1.0 - r)})
    b.update(alpha1 * r / alpha0, {("x0'", i): -alpha1 * 0.5 * D / s1, ("x0", i): alpha1 * 0.5 * D * (1.0 / s1 - 2.0 / s0)},
             t_start=t0, t_end=t1, step=i)


def heun_coefficients(sde: LinearSDE, ts: Tensor) -> StageTable:
    """EDM's Heun sampler as a table: two calls per step, the second at the Euler point (see :func:`heun`)."""
    alpha, s = (v.tolist() for v in _scaled_grid(sde, ts))
    b = TableBuilder("heun", ts, 2)
    for i in range(len(ts) - 1):
        _heun_row(b, i, ts[i], ts[i + 1], alpha[i], alpha[i + 1], s[i], s[i + 1])
    return b.build(sde)


@register("heun", kind="ode", order=2, stochastic=False, nfe=2, default_steps=17,
          default_schedule="karras", exact_for_point_mass=True, coefficients=heun_coefficients,
          paper="Karras et al. 2022 (EDM), Alg. 1")
def heun(model, sde: LinearSDE, x, ts, *, noise, callback):
    """EDM deterministic sampler (Karras et al. 2022, Alg. 1); order 2, 2 NFE per step (17 steps + denoise = EDM's 35 NFE).

    Alg. 1 is Alg. 2 without churn: the loop is :func:`edm_sde`'s with S_churn = 0 (bit-identical).
    """
    return edm_sde(model, sde, x, ts, noise=noise, callback=callback)


def _check_tmax(S_tmin: float, S_tmax: float) -> None:
    if S_tmax < S_tmin:
        raise ValueError(f"sampler 'edm_sde': S_tmax={S_tmax!r} is below S_tmin={S_tmin!r}; accepted: S_tmax >= S_tmin")


def _churn_plan(sde: LinearSDE, ts: Tensor, S_churn: float, S_tmin: float, S_tmax: float):
    """EDM's gamma_i, sigma~_hat = sigma~_i (1 + gamma_i) and its time t_hat (may exceed T)."""
    s = sde.sigma_tilde(ts[:-1])
    inside = (S_tmin <= s) & (s <= S_tmax)
    gamma = torch.where(inside, torch.full_like(s, min(S_churn / len(ts), math.sqrt(2.0) - 1.0)), torch.zeros_like(s))
    s_hat = s * (1.0 + gamma)
    churned = (gamma > 0).tolist()
    if not any(churned):
        return gamma, ts[:-1], churned
    t_hat = torch.where(gamma > 0, sde.t_from_sigma_tilde(s_hat), ts[:-1])
    back = sde.sigma_tilde(t_hat)
    if not bool(torch.isfinite(t_hat).all()) or not torch.allclose(back, s_hat, rtol=1e-6, atol=0.0):
        i = int(torch.nonzero(~torch.isclose(back, s_hat, rtol=1e-6, atol=0.0) | ~torch.isfinite(t_hat))[0])
        raise ValueError(
            f"sampler 'edm_sde': S_churn={S_churn} raises sigma~ to {float(s_hat[i]):.6g} at step {i}, which "
            f"{type(sde).__name__}.t_from_sigma_tilde cannot map to a time (got sigma~ {float(back[i]):.6g}); "
            f"lower S_churn or set S_tmax below sigma~(T) = {float(sde.sigma_tilde(ts[:1])[0]):.6g}"
        )
    return gamma, t_hat, churned


def edm_sde_coefficients(sde: LinearSDE, ts: Tensor, *, S_churn: float = 0.0, S_tmin: float = 0.0,
                         S_tmax: float = math.inf, S_noise: float = 1.0) -> StageTable:
    """EDM's stochastic sampler as a table: on a churned step a row without calls adds the noise
    (x_hat = alpha_hat (x / alpha + churn z)), then a Heun row from t_hat (see :func:`edm_sde`)."""
    _check_tmax(S_tmin, S_tmax)
    gamma, t_hat, churned = _churn_plan(sde, ts, S_churn, S_tmin, S_tmax)
    alpha, s = _scaled_grid(sde, ts)
    s_hat = s[:-1] * (1.0 + gamma)
    churn = s[:-1] * torch.sqrt(gamma * (2.0 + gamma)) * S_noise
    alpha, s, s_hat, alpha_hat, churn, t_hat = (v.tolist() for v in (alpha, s, s_hat, sde.alpha(t_hat), churn, t_hat))
    b = TableBuilder("edm_sde", ts, 2)
    for i in range(len(ts) - 1):
        if churned[i]:
            b.update(alpha_hat[i] / alpha[i], c=alpha_hat[i] * churn[i], draw=True, t_start=ts[i], t_end=t_hat[i], step=None)
        _heun_row(b, i, t_hat[i], ts[i + 1], alpha_hat[i], alpha[i + 1], s_hat[i], s[i + 1])
    return b.build(sde, noise_scale=S_noise)


def _churns(o: dict) -> bool:
    return o["S_churn"] > 0 and o["S_noise"] > 0


# With churn there is no fixed limiting SDE (gamma_i = S_churn/N adds noise per step, not per unit time):
# no strong order; the raise of sigma~ above the grid's top needs t(sigma~) beyond T.
@register("edm_sde", kind="sde", stochastic=_churns, order=lambda o: None if _churns(o) else 2, nfe=2, default_steps=17,
          default_schedule="karras", exact_for_point_mass=lambda o: not _churns(o),
          requires=lambda o: ("extends_beyond_T",) if o["S_churn"] > 0 else (), coefficients=edm_sde_coefficients,
          params={"S_churn": Real(ge=0), "S_tmin": Real(ge=0), "S_tmax": Real(ge=0, allow_inf=True), "S_noise": Real(ge=0)},
          variants=({"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}, {"S_churn": 10.0}),
          paper="Karras et al. 2022 (EDM), Alg. 2")
def edm_sde(model, sde: LinearSDE, x, ts, *, noise, callback, S_churn: float = 0.0, S_tmin: float = 0.0,
            S_tmax: float = math.inf, S_noise: float = 1.0):
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2); 2 NFE per step; S_churn=0 (default) is Alg. 1 (order 2)."""
    _check_tmax(S_tmin, S_tmax)
    gamma, t_hat, churned = _churn_plan(sde, ts, S_churn, S_tmin, S_tmax)
    alpha, s = _scaled_grid(sde, ts)
    s_hat = s[:-1] * (1.0 + gamma)
    churn = s[:-1] * torch.sqrt(gamma * (2.0 + gamma)) * S_noise  # sqrt(s_hat^2 - s^2) S_noise
    alpha, s, s_hat, alpha_hat, churn = _cast(x, alpha, s, s_hat, sde.alpha(t_hat), churn)
    for i in range(len(ts) - 1):
        # Increase the noise temporarily: sigma~_i -> sigma~_hat (t_hat may exceed T).
        x_hat = x
        if churned[i]:
            x_hat = alpha_hat[i] * (x / alpha[i] + churn[i] * noise(x))
        xt = x_hat / alpha_hat[i]
        # Euler step from sigma~_hat to sigma~_{i+1}.
        d = (xt - model(x_hat, t_hat[i]).x0) / s_hat[i]
        xt_next = xt + (s[i + 1] - s_hat[i]) * d
        # 2nd-order correction.
        d_next = (xt_next - model(alpha[i + 1] * xt_next, ts[i + 1]).x0) / s[i + 1]
        x = alpha[i + 1] * (xt + (s[i + 1] - s_hat[i]) * 0.5 * (d + d_next))
        x = callback(i, x)
    return x


def _ancestral_scales(sde: LinearSDE, ts: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """alpha, sigma~ and k-diffusion's sigma_down, sigma_up (in sigma~) per step.

    sigma_up = min(s', eta s' sqrt(1 - s'^2/s^2)) with 1 - s'^2/s^2 = 1 - e^{-2h} (h the lambda step),
    sigma_down = sqrt(s'^2 - sigma_up^2).
    """
    alpha, s = _scaled_grid(sde, ts)
    h = sde.lam(ts[1:]) - sde.lam(ts[:-1])
    frac = (eta**2 * -torch.expm1(-2.0 * h)).clamp(max=1.0)  # sigma_up^2 / s'^2
    return alpha, s, s[1:] * torch.sqrt(1.0 - frac), s[1:] * torch.sqrt(frac)


def euler_ancestral_coefficients(sde: LinearSDE, ts: Tensor, *, eta: float = 1.0,
                                 s_noise: float = 1.0) -> CoefficientTable:
    """Euler ancestral as a table in x: x' = alpha' [(s_down/s) x/alpha + (1 - s_down/s) x0 + s_up z]."""
    alpha, s, s_down, s_up = _ancestral_scales(sde, ts, eta)
    q = s_down / s[:-1]
    c = alpha[1:] * s_up if eta > 0 else None
    return make_table("euler_ancestral", sde, ts, alpha[1:] * q / alpha[:-1], alpha[1:] * (1.0 - q), c,
                      noise_scale=s_noise)


def _ancestral_noise(o: dict) -> bool:
    return o["eta"] > 0 and o["s_noise"] > 0


# eta scales the noise as DDIM's eta does: the path solves dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw
# (s_noise != 1 changes the marginals: no limiting SDE of that family).
@register("euler_ancestral", kind="sde", stochastic=_ancestral_noise, nfe=1, default_steps=50,
          default_schedule="karras", exact_for_point_mass=False, coefficients=euler_ancestral_coefficients,
          order=lambda o: None if _ancestral_noise(o) else 1,
          strong_order=lambda o: 1.0 if _ancestral_noise(o) and o["s_noise"] == 1 else None,
          sde_eta=lambda o: o["eta"] if o["s_noise"] == 1 else None,
          params={"eta": Real(ge=0), "s_noise": Real(ge=0)}, variants=({"eta": 0.0}, {"eta": 0.5}, {"s_noise": 1.003}),
          paper="k-diffusion sample_euler_ancestral (Crowson); ancestral step of Ho et al. 2020")
def euler_ancestral(model, sde: LinearSDE, x, ts, *, noise, callback, eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral (k-diffusion sample_euler_ancestral); strong order 1 (additive noise), 1 NFE per step."""
    alpha, s, s_down, s_up = _cast(x, *_ancestral_scales(sde, ts, eta))
    for i in range(len(ts) - 1):
        xt = x / alpha[i]
        # Euler step in sigma~ down to sigma_down.
        d = (xt - model(x, ts[i]).x0) / s[i]
        xt = xt + (s_down[i] - s[i]) * d
        # Add back noise of std sigma_up (k-diffusion: always, with sigma_up = 0 when eta = 0).
        if eta > 0 and s_noise > 0:
            xt = xt + s_up[i] * s_noise * noise(x)
        x = alpha[i + 1] * xt
        x = callback(i, x)
    return x
