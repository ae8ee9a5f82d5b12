"""k-diffusion: denoisers ``D(x, sigma, **extra)`` as scoresde models, and scoresde models as such denoisers.

k-diffusion works in EDM's variables: the state ``x~ = x / alpha`` and the noise level
``sigma~ = sigma / alpha = exp(-lambda)``, with sigma lists that end in 0 (the last step jumps to
the denoised x0). On the EDM SDE (alpha = 1, sigma = t) these are scoresde's own x and t, so

* :func:`from_k_diffusion` wraps a denoiser on :class:`~scoresde.sde.EDMSDE` (or any linear SDE:
  ``ScoreModel(..., "denoiser")`` evaluates it at ``x / alpha`` and sigma~);
* :func:`to_k_diffusion` gives ``D(x~, sigma~)`` of any scoresde model, for k-diffusion's samplers;
* :func:`grid_from_sigmas` turns a k-diffusion sigma list into scoresde's grid plus ``denoise``:
  a trailing 0 is scoresde's final denoising step (``denoise=True``), one NFE, as in k-diffusion;
* :func:`k_diffusion_sampling` loads k-diffusion's ``sampling.py`` on its own: the package's
  ``__init__`` imports torchvision, clip, kornia, wandb and more, while ``sampling.py`` needs only
  torch, scipy, torchdiffeq, torchsde, tqdm and one helper (``utils.append_dims``), which is
  supplied here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._utils import append_dims, as_time, batch_time
from ..model import ScoreModel, as_model
from ..sde import EDMSDE, LinearSDE
from ._common import adapted, check_callable, finite_positive

__all__ = ["from_k_diffusion", "to_k_diffusion", "KDiffusionDenoiser", "grid_from_sigmas", "k_diffusion_sampling"]

_STANDALONE = "_scoresde_k_diffusion"


def from_k_diffusion(
    denoiser: Any,
    sde: LinearSDE | None = None,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    check_finite: bool = True,
) -> ScoreModel:
    """A k-diffusion-style denoiser ``D(x, sigma, **extra) -> x0`` as a scoresde model.

    ``sde`` defaults to ``EDMSDE(sigma_min, sigma_max)`` with the range taken from the arguments,
    else from the denoiser's ``sigma_min`` / ``sigma_max`` attributes (k-diffusion's wrappers of
    discrete models have them), else EDM's 0.002 and 80. ``extra`` (e.g. ``cond=`` of k-diffusion's
    conditional models) comes from ``sample(..., cond={...})``.
    """
    check_callable("denoiser", denoiser)
    if sde is None:
        lo = sigma_min if sigma_min is not None else _attr_sigma(denoiser, "sigma_min", 0.002)
        hi = sigma_max if sigma_max is not None else _attr_sigma(denoiser, "sigma_max", 80.0)
        sde = EDMSDE(sigma_min=lo, sigma_max=hi)
    elif sigma_min is not None or sigma_max is not None:
        raise ValueError("give either sde= or sigma_min=/sigma_max=, not both")

    def call(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        return denoiser(x, sigma, **extra)

    return adapted(call, denoiser, sde, "denoiser", check_finite=check_finite)


def _attr_sigma(obj: Any, name: str, default: float) -> float:
    v = getattr(obj, name, None)
    return float(v.item() if isinstance(v, Tensor) else v) if finite_positive(v) else default


class KDiffusionDenoiser(nn.Module):
    """k-diffusion's denoiser interface over a scoresde model: ``forward(x~, sigma~, **extra) -> x0``.

    ``sigma`` is sigma~ = sigma/alpha (scalar or (B,)); the model is called once at
    ``t = sde.t_from_sigma_tilde(sigma)`` on ``x = alpha(t) x~``, so its NFE counter counts the
    peer's calls. ``sigma_min`` / ``sigma_max`` are sigma~ at the SDE's ``t_min`` and ``T``.
    """

    def __init__(self, model: ScoreModel):
        super().__init__()
        self.inner_model = model
        self.sde = model.sde

    @property
    def sigma_min(self) -> float:
        return float(self.sde.sigma_tilde(as_time(self.sde.t_min)))

    @property
    def sigma_max(self) -> float:
        return float(self.sde.sigma_tilde(as_time(self.sde.T)))

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """SDE time of a k-diffusion noise level (float64)."""
        return self.sde.t_from_sigma_tilde(as_time(sigma))

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """k-diffusion noise level sigma~ of an SDE time (float64)."""
        return self.sde.sigma_tilde(as_time(t))

    def sigmas(self, ts: Tensor | Sequence[float], append_zero: bool = True) -> Tensor:
        """The k-diffusion sigma list of a scoresde grid (float64), with the final 0 by default."""
        s = self.sde.sigma_tilde(as_time(ts))
        return torch.cat([s, s.new_zeros(1)]) if append_zero else s

    def forward(self, x: Tensor, sigma: Tensor | float, **extra: Any) -> Tensor:
        s = batch_time(sigma, x.shape[0], x.device, name="sigma")
        t = self.sde.t_from_sigma_tilde(s)
        alpha = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
        return self.inner_model(alpha * x, t, **extra).x0


def to_k_diffusion(model: Any, sde: LinearSDE | None = None) -> KDiffusionDenoiser:
    """A scoresde model (a ScoreModel, or a ``score_fn(x, t)`` with ``sde``) as a k-diffusion denoiser."""
    if not isinstance(model, ScoreModel):
        if sde is None:
            raise TypeError("to_k_diffusion: a plain score_fn needs sde=; or pass a ScoreModel")
        model = as_model(model, sde)
    elif sde is not None:
        model = as_model(model, sde)
    return KDiffusionDenoiser(model)


def grid_from_sigmas(sde: LinearSDE, sigmas: Tensor | Sequence[float]) -> tuple[Tensor, bool]:
    """``(ts, denoise)`` for ``sample(..., schedule=ts, denoise=denoise)`` from a k-diffusion sigma list.

    The sigmas are sigma~ levels, decreasing; a trailing 0 (k-diffusion's ``append_zero``) is
    dropped and returned as ``denoise=True``: k-diffusion's last step to sigma = 0 sets x to the
    denoised x0 in every sampler, which is scoresde's final denoising step. Each level must lie in
    the SDE's range [sigma~(t_min), sigma~(T)].
    """
    s = as_time(sigmas).flatten()
    if s.numel() < 2:
        raise ValueError(f"sigmas must have at least 2 entries; got {s.numel()}")
    denoise = bool(s[-1] == 0)
    if denoise:
        s = s[:-1]
    if bool((s <= 0).any()):
        raise ValueError("sigmas may contain 0 only as the last entry (k-diffusion's final step to the data)")
    if s.numel() < 2:
        raise ValueError("sigmas must have at least 2 positive levels (one step) besides a final 0")
    return sde.t_from_sigma_tilde(s), denoise


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """k-diffusion's ``utils.append_dims``: trailing singleton dims up to ``target_dims``."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x.reshape(x.shape + (1,) * missing)


def k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module (``sample_heun``, ``sample_dpmpp_2m``, ``get_sigmas_karras``, ...).

    With a full k-diffusion install this is ``k_diffusion.sampling``. Otherwise (installed with
    ``pip install --no-deps k-diffusion``, as scoresde's ``scripts/setup.sh`` does) its ``sampling.py``
    is loaded alone, as the module ``_scoresde_k_diffusion.sampling``, with a stand-in for the one
    ``utils`` helper it uses. It still needs torchsde (``pip install scoresde[peers]``).
    """
    name = _STANDALONE + ".sampling"
    if name in sys.modules:
        return sys.modules[name]
    try:
        import k_diffusion.sampling as full  # a full install with all of the package's dependencies

        return full
    except Exception:  # any failure of the package __init__ (torchvision, clip, ...)
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion torchsde (see docs/byo-model.md)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "sampling.py")
    parent = types.ModuleType(_STANDALONE)
    parent.__path__ = []  # a package, so that sampling.py's "from . import utils" resolves
    utils = types.ModuleType(_STANDALONE + ".utils")
    utils.append_dims = _append_dims
    parent.utils = utils
    sys.modules[_STANDALONE], sys.modules[utils.__name__] = parent, utils
    mspec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module
    try:
        mspec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    parent.sampling = module
    return module
