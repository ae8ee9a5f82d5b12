"""Bring your own model: networks trained elsewhere as scoresde models, and scoresde models for other samplers.

Each ``from_*`` function returns a :class:`~scoresde.model.ScoreModel` (with its SDE as ``model.sde``)
that runs under every scoresde sampler, with NFE counted:

* :func:`from_diffusers` ``(unet, scheduler_or_config)``: a diffusers UNet trained on a discrete DDPM
  schedule (epsilon / sample / v_prediction), on the :class:`~scoresde.discrete.DiscreteVPSDE` of the
  scheduler's ``alphas_cumprod``;
* :func:`from_k_diffusion` ``(denoiser)``: a k-diffusion-style denoiser ``D(x, sigma, **extra)``;
* :func:`from_score_sde` ``(net, sde, continuous=...)``: a score_sde network ``net(x, labels)``
  (time labels ``999 t`` for VP / sub-VP, sigma for VE; eps or score output);
* :func:`from_edm` ``(net)``: an EDM-preconditioned network ``D(x, sigma, class_labels)``.

The other direction: :func:`to_k_diffusion` gives a k-diffusion-style denoiser ``D(x, sigma)`` over
sigma~ = sigma/alpha, and :func:`to_diffusers` a diffusers-style model ``model(sample, timestep).sample``,
so k-diffusion's sampling functions and diffusers' schedulers run on scoresde models.
:func:`k_diffusion_sampling` loads k-diffusion's ``sampling.py`` without the rest of its package.
:func:`diffusers_compatible` ``(sampler, scheduler)`` gives the ``sample()`` arguments that reproduce a
diffusers scheduler's loop (grid, final step, lowered orders), warning about what cannot be.

None of these imports a peer library at import time; the peers are optional (``pip install
scoresde[peers]``). See docs/byo-model.md.
"""

from .diffusers import DiffusersModel, from_diffusers, sde_from_diffusers, to_diffusers
from .edm import from_edm
from .k_diffusion import KDiffusionDenoiser, from_k_diffusion, grid_from_sigmas, k_diffusion_sampling, to_k_diffusion
from .presets import diffusers_compatible
from .score_sde import from_score_sde

__all__ = [
    "from_diffusers",
    "sde_from_diffusers",
    "to_diffusers",
    "DiffusersModel",
    "from_k_diffusion",
    "to_k_diffusion",
    "KDiffusionDenoiser",
    "grid_from_sigmas",
    "k_diffusion_sampling",
    "from_score_sde",
    "from_edm",
    "diffusers_compatible",
]
