"""Denoising score-matching losses (Song et al. 2021, Eq. 7; Song & Ermon 2019; Karras et al. 2022).

Every loss is a pure function ``loss(model, x0, *, ..., generator=None, reduce="mean", cond=None)``:

* ``model`` is a :class:`scoresde.ScoreModel` (any parameterisation); its ``sde`` defines
  ``x_t = alpha(t) x0 + sigma(t) z``;
* randomness comes only from ``generator`` (time/level first, then the noise ``z``);
* ``reduce="none"`` gives the per-sample loss (B,), ``"mean"`` (default) its mean, ``"sum"`` its sum;
* ``per_dim=True`` divides each per-sample loss by the number of elements of a sample (for reporting);
* ``cond`` is a dict passed to the network (e.g. ``{"y": labels}``).

All three losses are weighted squared errors of the noise prediction, written with
``r = ||eps_hat(x_t, t) - z||^2`` (summed over dimensions):

* ``dsm``:  ``lambda(t) ||score - (-z / sigma)||^2 = lambda(t) / sigma(t)^2 * r`` with
  ``lambda`` = sigma^2 (``"sigma2"``: r itself), g^2 (``"likelihood"``) or 1 (``"none"``);
* ``ncsn``: ``sigma_i^2 ||score + z / sigma_i||^2 = r`` at a random noise level i;
* ``edm``:  ``w(s) ||x0_hat - x0||^2`` with ``w = (s^2 + sd^2) / (s sd)^2`` and s = sigma~ = sigma/alpha.

No factor 1/2 is applied (Song & Ermon 2019 and score_sde's ``reduce_mean=False`` have one; it only
rescales the loss).
"""

from __future__ import annotations

import math
from typing import Any

import einops
import torch
from torch import Tensor

from ._utils import append_dims, as_time, batch_time, check_choice
from .model import ScoreModel
from .registry import Bool, Choice, Int, Maybe, Real, Registry
from .sde import LinearSDE

__all__ = ["dsm_loss", "ncsn_loss", "edm_loss", "ncsn_levels", "LOSSES", "WEIGHTINGS", "get_loss", "Loss"]

WEIGHTINGS = ("sigma2", "likelihood", "none")
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------- shared helpers
def _check_inputs(model: Any, x0: Any, reduce: str, cond: dict | None) -> dict:
    if not isinstance(model, ScoreModel):
        raise TypeError(
            f"model must be a scoresde.ScoreModel (wrap the network: ScoreModel(net, sde, parameterization)); "
            f"got {type(model).__name__}"
        )
    if not isinstance(x0, Tensor) or x0.ndim < 2 or x0.shape[0] == 0 or not x0.is_floating_point():
        raise ValueError(
            "x0 must be a non-empty floating-point tensor of shape (B, *D); got "
            f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}"
            f"{' of dtype ' + str(x0.dtype) if isinstance(x0, Tensor) else ''}"
        )
    check_choice("reduce", reduce, REDUCTIONS)
    if cond is None:
        return {}
    if not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of network keyword arguments (e.g. {{'y': labels}}); got {type(cond).__name__}")
    return cond


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(n: int, generator, device) -> Tensor:
    """(n,) uniforms on [0, 1) in float64, drawn on the generator's device, moved to ``device``."""
    return torch.rand(n, generator=generator, dtype=torch.float64, device=_gen_device(generator, device)).to(device)


def _randn(shape, generator, device, dtype) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device=_gen_device(generator, device)).to(device)


def _sq_norm(r: Tensor) -> Tensor:
    """Squared L2 norm of each sample: (B, *D) -> (B,)."""
    return einops.reduce(r.square(), "b ... -> b", "sum")


def _finish(loss: Tensor, x0: Tensor, reduce: str, per_dim: bool) -> Tensor:
    if per_dim:
        loss = loss / x0[0].numel()
    if reduce == "mean":
        return loss.mean()
    if reduce == "sum":
        return loss.sum()
    return loss


def _perturb(sde: LinearSDE, x0: Tensor, t: Tensor, z: Tensor) -> Tensor:
    """x_t = alpha(t) x0 + sigma(t) z (t float64 (B,); coefficients cast at the end)."""
    alpha = append_dims(sde.alpha(t), x0.ndim).to(x0.dtype)
    sigma = append_dims(sde.sigma(t), x0.ndim).to(x0.dtype)
    return alpha * x0 + sigma * z


def _time_range(sde: LinearSDE, t_min: float | None, t_max: float | None) -> tuple[float, float]:
    a = sde.t_min if t_min is None else float(t_min)
    b = sde.T if t_max is None else float(t_max)
    if not (math.isfinite(a) and math.isfinite(b) and 0.0 < a < b <= sde.T * (1 + 1e-12)):
        raise ValueError(
            f"need 0 < t_min < t_max <= T = {sde.T:g} for {type(sde).__name__}; got t_min={a!r}, t_max={b!r} "
            f"(defaults: t_min = sde.t_min = {sde.t_min:g}, t_max = sde.T)"
        )
    return a, b


def _given_time(sde: LinearSDE, t: Any, batch: int, device) -> Tensor:
    t = batch_time(t, batch, device)
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()) or bool((t > sde.T * (1 + 1e-12)).any()):
        raise ValueError(f"t must lie in (0, T = {sde.T:g}]; got values in [{float(t.min()):g}, {float(t.max()):g}]")
    return t


def _given_noise(noise: Tensor, x0: Tensor) -> Tensor:
    if not isinstance(noise, Tensor) or noise.shape != x0.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}; got {got}")
    return noise.to(device=x0.device, dtype=x0.dtype)


def _dsm_weight(sde: LinearSDE, t: Tensor, weighting: str) -> Tensor | None:
    """lambda(t) / sigma(t)^2 (float64, (B,)): the factor on ||eps_hat - z||^2; None for sigma2 (= 1)."""
    if weighting == "sigma2":
        return None
    inv_s2 = 1.0 / sde.sigma(t) ** 2
    return sde.g2(t) * inv_s2 if weighting == "likelihood" else inv_s2


def _importance_times(sde: LinearSDE, n: int, a: float, b: float, generator, device) -> tuple[Tensor, Tensor]:
    """t ~ q(t) = (g^2 / sigma^2) / Z on [a, b] and the density ratio U[a, b] / q at the draws.

    For a linear SDE g^2 / sigma^2 = -2 d lambda / dt, so Z = 2 (lambda(a) - lambda(b)) and the
    CDF is (lambda(a) - lambda(t)) / (lambda(a) - lambda(b)): q is uniform in lambda (log-SNR).
    """
    lam_a, lam_b = sde.lam(as_time(a, device=device)), sde.lam(as_time(b, device=device))
    u = _rand(n, generator, device)
    t = sde.inverse_lambda(lam_a - u * (lam_a - lam_b)).clamp(a, b)  # clamp: bisection round-off only
    Z = 2.0 * (lam_a - lam_b)
    ratio = Z / ((b - a) * sde.g2(t) / sde.sigma(t) ** 2)
    return t, ratio


# ---------------------------------------------------------------------- the losses
# Options fixed by the trainer's call convention (given per call), not by get_loss.
_CALL_ARGS = ("generator", "cond", "reduce", "t", "noise")
#: the losses by name; options and their accepted values are declared once here and checked on
#: every call (direct calls too) and by get_loss.
LOSSES = Registry("loss", keyword_only=True, skip=_CALL_ARGS, error=ValueError)


@LOSSES.register("dsm", checked=True, params={"weighting": Choice(WEIGHTINGS), "importance_sampling": Bool(),
                                              "t_min": Maybe(Real(ge=0)), "t_max": Maybe(Real(gt=0))})
def dsm_loss(
    model: ScoreModel,
    x0: Tensor,
    *,
    weighting: str = "sigma2",
    importance_sampling: bool = False,
    t_min: float | None = None,
    t_max: float | None = None,
    generator: torch.Generator | None = None,
    reduce: str = "mean",
    cond: dict | None = None,
    per_dim: bool = False,
    t: Tensor | float | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Continuous-time denoising score matching (Song et al. 2021, Eq. 7) for any linear SDE.

    ``t ~ U[t_min, t_max]`` (defaults ``[sde.t_min, sde.T]``), ``x_t = alpha x0 + sigma z`` and
    ``loss = lambda(t) ||score(x_t, t) + z / sigma(t)||^2`` summed over dimensions, computed as
    ``lambda / sigma^2 * ||eps_hat - z||^2`` (identical math; exactly ``||eps_hat - z||^2`` for
    ``weighting="sigma2"``).

    Args:
        weighting: ``"sigma2"`` (lambda = sigma^2, the eps-MSE of Ho et al. 2020), ``"likelihood"``
            (lambda = g^2, Song et al. 2021b) or ``"none"`` (lambda = 1).
        importance_sampling: draw t with density ``q(t) ∝ g(t)^2 / sigma(t)^2`` (Song et al. 2021b,
            Sec. 5; for a linear SDE this is uniform in lambda = log(alpha/sigma)) and multiply
            each sample by ``U[t_min, t_max](t) / q(t)``, so the loss stays an unbiased estimate of
            the uniform-t objective. With ``weighting="likelihood"`` the per-sample loss becomes
            ``2 (lambda(t_min) - lambda(t_max)) / (t_max - t_min) * ||eps_hat - z||^2``.
        t, noise: fixed times ((B,) or scalar) and noise (x0's shape) instead of drawing them
            (for tests and analysis; ``t`` excludes ``importance_sampling``).

    Returns the per-sample loss (B,) for ``reduce="none"``, else its mean (or sum).
    """
    cond = _check_inputs(model, x0, reduce, cond)
    sde, B, dev = model.sde, x0.shape[0], x0.device
    a, b = _time_range(sde, t_min, t_max)
    ratio = None
    if t is not None:
        if importance_sampling:
            raise ValueError("give either fixed times t or importance_sampling=True, not both")
        t = _given_time(sde, t, B, dev)
    elif importance_sampling:
        t, ratio = _importance_times(sde, B, a, b, generator, dev)
    else:
        t = a + (b - a) * _rand(B, generator, dev)
    z = _randn(x0.shape, generator, dev, x0.dtype) if noise is None else _given_noise(noise, x0)
    pred = model(_perturb(sde, x0, t, z), t, **cond)
    loss = _sq_norm(pred.eps - z)
    w = _dsm_weight(sde, t, weighting)
    if ratio is not None:
        w = ratio if w is None else w * ratio
    if w is not None:
        loss = loss * w.to(loss.dtype)
    return _finish(loss, x0, reduce, per_dim)


def ncsn_levels(sde: LinearSDE, sigmas: Any = None, n_levels: int = 10) -> Tensor:
    """The times (L,) float64 of NCSN's noise levels, largest noise first (Song & Ermon 2019).

    ``sigmas=None``: ``n_levels`` levels geometric in sigma~ = sigma/alpha from sigma~(T) down to
    sigma~(t_min) (uniform in lambda; for the VE SDE the geometric sigmas of the SDE, sigma_max to
    sigma(t_min)). Given ``sigmas`` (noise levels sigma~, = sigma for VE/EDM) are mapped to times
    with ``sde.t_from_sigma_tilde`` and must correspond to times in [0, T].
    """
    if sigmas is None:
        if isinstance(n_levels, bool) or int(n_levels) != n_levels or n_levels < 1:
            raise ValueError(f"n_levels must be a positive integer; got {n_levels!r}")
        n_levels = int(n_levels)
        if n_levels == 1:
            return as_time([sde.T])
        lam = torch.linspace(float(sde.lam(as_time(sde.T))), float(sde.lam(as_time(sde.t_min))), n_levels,
                             dtype=torch.float64)
        ts = sde.inverse_lambda(lam)
        ts[0], ts[-1] = sde.T, sde.t_min  # the ends exactly (no bisection round-off)
        return ts
    s = as_time(sigmas).flatten()
    if s.numel() == 0 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"sigmas must be a non-empty sequence of positive finite noise levels; got {sigmas!r}")
    ts = sde.t_from_sigma_tilde(s)
    tol = 1e-9 * sde.T
    if bool((ts < -tol).any()) or bool((ts > sde.T + tol).any()):
        lo, hi = float(sde.sigma_tilde(as_time(max(sde.t_min, 1e-12)))), float(sde.sigma_tilde(as_time(sde.T)))
        raise ValueError(
            f"sigmas must be noise levels of {sde!r}, about [{lo:.4g}, {hi:.4g}]; got values in "
            f"[{float(s.min()):.4g}, {float(s.max()):.4g}]"
        )
    return ts.clamp(0.0, sde.T)


@LOSSES.register("ncsn", checked=True, params={"n_levels": Int(ge=1)})
def ncsn_loss(
    model: ScoreModel,
    x0: Tensor,
    *,
    sigmas: Any = None,
    n_levels: int = 10,
    generator: torch.Generator | None = None,
    reduce: str = "mean",
    cond: dict | None = None,
    per_dim: bool = False,
) -> Tensor:
    """NCSN's denoising score matching over discrete noise levels (Song & Ermon 2019, Eq. 5-6).

    A level i is drawn uniformly per sample from :func:`ncsn_levels` (times t_i), then
    ``loss = sigma(t_i)^2 ||score(x_t, t_i) + z / sigma(t_i)||^2 = ||eps_hat - z||^2`` with
    ``x_t = alpha(t_i) x0 + sigma(t_i) z`` (for the VE SDE, alpha = 1 and sigma(t_i) = sigma_i:
    the paper's ``lambda(sigma) = sigma^2`` weighting, without its factor 1/2).
    """
    cond = _check_inputs(model, x0, reduce, cond)
    sde, B, dev = model.sde, x0.shape[0], x0.device
    ts = ncsn_levels(sde, sigmas, n_levels).to(dev)
    i = torch.randint(0, ts.numel(), (B,), generator=generator, device=_gen_device(generator, dev)).to(dev)
    t = ts[i]
    z = _randn(x0.shape, generator, dev, x0.dtype)
    pred = model(_perturb(sde, x0, t, z), t, **cond)
    return _finish(_sq_norm(pred.eps - z), x0, reduce, per_dim)


@LOSSES.register("edm", checked=True, params={"P_std": Real(gt=0), "sigma_data": Real(gt=0)})
def edm_loss(
    model: ScoreModel,
    x0: Tensor,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
    reduce: str = "mean",
    cond: dict | None = None,
    per_dim: bool = False,
) -> Tensor:
    """EDM's denoiser loss (Karras et al. 2022, Eq. 2 and 8; Table 1 "training" column).

    ``ln sigma~ ~ N(P_mean, P_std^2)``; the level is mapped to SDE time with
    ``t = sde.t_from_sigma_tilde(sigma~)`` and **clamped to [sde.t_min, sde.T]** (levels outside the
    SDE's range are trained at its ends; the weight uses the clamped level). Then
    ``x_t = alpha x0 + sigma z`` (i.e. ``x_t / alpha = x0 + sigma~ z``) and
    ``loss = (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2 * ||x0_hat(x_t, t) - x0||^2``.

    For a model with ``parameterization="edm"``, ``sigma_data`` must equal the model's.
    """
    cond = _check_inputs(model, x0, reduce, cond)
    if model.parameterization == "edm" and model.sigma_data != sigma_data:
        raise ValueError(
            f"sigma_data={sigma_data!r} differs from the EDM-preconditioned model's sigma_data={model.sigma_data!r}; "
            "pass the same value to both"
        )
    sde, B, dev = model.sde, x0.shape[0], x0.device
    n = _randn((B,), generator, dev, torch.float64)
    t = sde.t_from_sigma_tilde(torch.exp(P_mean + P_std * n)).clamp(sde.t_min, sde.T)
    s = sde.sigma_tilde(t)  # the level actually trained (after the clamp)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    z = _randn(x0.shape, generator, dev, x0.dtype)
    pred = model(_perturb(sde, x0, t, z), t, **cond)
    loss = _sq_norm(pred.x0 - x0) * weight.to(x0.dtype)
    return _finish(loss, x0, reduce, per_dim)


class Loss:
    """A loss with its options bound: ``loss(model, x0, generator=None, cond=None) -> scalar``.

    ``config()`` gives ``{"name": ..., "kwargs": {...}}`` (plain data) for checkpoints.
    """

    def __init__(self, name: str, **kwargs: Any):
        entry = LOSSES.get(name)
        per_call = sorted(set(kwargs) & set(_CALL_ARGS))
        if per_call:
            raise ValueError(f"loss {name!r}: {', '.join(map(repr, per_call))} is given per call, not bound; "
                             f"options: {', '.join(entry.defaults)}")
        self.name, self.fn, self.kwargs = name, LOSSES[name], entry.validate(kwargs, fill=False)

    def __call__(self, model: ScoreModel, x0: Tensor, generator: torch.Generator | None = None,
                 cond: dict | None = None) -> Tensor:
        return self.fn(model, x0, generator=generator, cond=cond, reduce="mean", **self.kwargs)

    def config(self) -> dict:
        kw = {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in self.kwargs.items()}
        return {"name": self.name, "kwargs": kw}

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Loss({self.name!r}{', ' + kw if kw else ''})"


def get_loss(name: str, **kwargs: Any) -> Loss:
    """The loss ``name`` (one of :data:`LOSSES`) with its options bound; unknown names/options raise."""
    return Loss(name, **kwargs)
