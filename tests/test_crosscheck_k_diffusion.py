"""scoresde's samplers against k-diffusion's, on the same denoiser, grid and starting noise.

The denoiser is the exact one of a Gaussian mixture on the EDM SDE (k-diffusion's own variables:
alpha = 1, sigma = t), wrapped for scoresde with ``from_k_diffusion``; the grids are k-diffusion's
sigma lists ending in 0, given to scoresde through ``grid_from_sigmas`` (the final 0 is scoresde's
denoising step). Stochastic samplers replay k-diffusion's draws: its ``noise_sampler`` records
them and scoresde's ``TensorNoise`` plays them back. ``to_k_diffusion`` is checked the other way:
k-diffusion's samplers on a scoresde model of the VP SDE.

k-diffusion is loaded with ``scoresde.adapters.k_diffusion_sampling`` (its ``sampling.py`` alone:
the package ``__init__`` needs torchvision, clip and more). Everything runs in float64, where the
two implementations differ only in the order of the same operations: measured differences are
below 5e-14 for data of scale 2 (benchmarks/byo_crosscheck.py); the tolerance 1e-11 leaves room for other platforms and would
still catch any change of coefficient (those show at 1e-4 or more, as the lower_order_final row shows).
"""

from __future__ import annotations

import pytest
import torch
from _peers import k_diffusion_sampling

import scoresde
from scoresde import EDMSDE, VPSDE, GaussianMixture
from scoresde.adapters import from_k_diffusion, grid_from_sigmas, to_k_diffusion
from scoresde.random import TensorNoise

F64 = torch.float64
TOL = 1e-11  # float64, same operations in another order (module docstring)
GM = GaussianMixture.random(3, 3, seed=4, spread=1.5)
B = 16


@pytest.fixture(scope="module")
def K():
    return k_diffusion_sampling()


def _problem(K, steps):
    edm = EDMSDE()
    calls = {"n": 0}

    def D(x, sigma):  # the exact denoiser, k-diffusion's convention
        calls["n"] += 1
        return GM.x0(x, sigma, edm)

    sigmas = K.get_sigmas_karras(steps + 1, edm.sigma_min, edm.sigma_max).to(F64)  # steps + 1 levels, then 0
    x_T = edm.sigma_max * torch.randn(B, 3, generator=torch.Generator().manual_seed(steps), dtype=F64)
    return edm, D, from_k_diffusion(D), sigmas, x_T, calls


# (scoresde sampler, its options, k-diffusion function, its options)
DETERMINISTIC = [
    ("heun", {}, "sample_heun", {}),
    ("dpmpp_2m", {"lower_order_final": False}, "sample_dpmpp_2m", {}),
    ("ddim", {}, "sample_euler", {}),  # Euler in sigma~ is DDIM (Karras et al. 2022, Sec. 4)
]
STOCHASTIC = [
    ("euler_ancestral", {}, "sample_euler_ancestral", {}),
    ("euler_ancestral", {"eta": 0.5}, "sample_euler_ancestral", {"eta": 0.5}),
    ("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {}),  # solver_type dpmsolver = k-diffusion's 'midpoint'
    ("dpmpp_2m_sde", {"solver_type": "taylor"}, "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
]


@pytest.mark.parametrize("steps", [4, 12, 40])
@pytest.mark.parametrize("ours,opts,theirs,kopts", DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC])
def test_deterministic_samplers_equal_k_diffusion(K, steps, ours, opts, theirs, kopts):
    edm, D, model, sigmas, x_T, calls = _problem(K, steps)
    x_kd = getattr(K, theirs)(D, x_T.clone(), sigmas, disable=True, **kopts)
    nfe_kd, calls["n"] = calls["n"], 0
    ts, denoise = grid_from_sigmas(edm, sigmas)
    r = scoresde.sample(model, edm, (B, 3), ours, schedule=ts, denoise=denoise, x_T=x_T, dtype=F64, **opts)
    assert denoise and len(ts) == steps + 1
    assert float((r.x - x_kd).abs().max()) < TOL
    assert r.nfe == calls["n"] == nfe_kd  # the same network evaluations, the final step to 0 included


@pytest.mark.parametrize("steps", [4, 12, 40])
@pytest.mark.parametrize("ours,opts,theirs,kopts", STOCHASTIC, ids=[f"{s[0]}-{s[3] or 'default'}" for s in STOCHASTIC])
def test_stochastic_samplers_equal_k_diffusion_on_replayed_noise(K, steps, ours, opts, theirs, kopts):
    edm, D, model, sigmas, x_T, calls = _problem(K, steps)
    g, draws = torch.Generator().manual_seed(100 + steps), []

    def noise_sampler(sigma, sigma_next):  # k-diffusion's interface; each draw is recorded
        z = torch.randn(B, 3, generator=g, dtype=F64)
        draws.append(z)
        return z

    x_kd = getattr(K, theirs)(D, x_T.clone(), sigmas, disable=True, noise_sampler=noise_sampler, **kopts)
    nfe_kd, calls["n"] = calls["n"], 0
    ts, denoise = grid_from_sigmas(edm, sigmas)
    replay = TensorNoise(draws)
    r = scoresde.sample(model, edm, (B, 3), ours, schedule=ts, denoise=denoise, x_T=x_T, dtype=F64, noise=replay, **opts)
    assert replay.used == len(draws) == steps  # one draw per step to a positive level, none to 0
    assert float((r.x - x_kd).abs().max()) < TOL
    assert r.nfe == calls["n"] == nfe_kd


def test_dpmpp_2m_lower_order_final_is_the_documented_difference(K):
    # scoresde's dpmpp_2m drops to first order on its last step by default (lower_order_final=True,
    # as Lu et al.'s code below 10 steps); k-diffusion's is second order up to the final jump to 0.
    edm, D, model, sigmas, x_T, _ = _problem(K, 12)
    x_kd = K.sample_dpmpp_2m(D, x_T.clone(), sigmas, disable=True)
    ts, denoise = grid_from_sigmas(edm, sigmas)
    default = scoresde.sample(model, edm, (B, 3), "dpmpp_2m", schedule=ts, denoise=denoise, x_T=x_T, dtype=F64)
    diff = float((default.x - x_kd).abs().max())
    assert diff > 1e6 * TOL  # a different algorithm, not round-off (measured 2.8e-2 here; docs/byo-model.md)


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("ours,theirs", [("heun", "sample_heun"), ("dpmpp_2m", "sample_dpmpp_2m")])
def test_k_diffusion_samplers_run_on_a_scoresde_model_through_to_k_diffusion(K, steps, ours, theirs):
    # The check: to_k_diffusion(model) under k-diffusion's sample_heun / sample_dpmpp_2m
    # gives scoresde's heun / dpmpp_2m samples on the same grid and x_T, for a VP-SDE model.
    vp = VPSDE()
    model = GM.model(vp)
    D = to_k_diffusion(model)
    ts = scoresde.schedules.make_grid(vp, steps, "karras")
    x_T = torch.randn(B, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    model.reset_nfe()
    x_kd = getattr(K, theirs)(D, x_T / vp.alpha(ts[:1]), D.sigmas(ts), disable=True)  # k-diffusion's x~ = x / alpha
    nfe_kd = model.nfe
    opts = {"lower_order_final": False} if ours == "dpmpp_2m" else {}
    r = scoresde.sample(model, vp, (B, 3), ours, schedule=ts, x_T=x_T, dtype=F64, denoise=True, **opts)
    # VP: sigma~ -> t through the closed-form inverse and back, alpha rescaling each call: measured 2e-15.
    assert float((r.x - x_kd).abs().max()) < TOL
    assert r.nfe == nfe_kd


def test_float32_runs_agree_to_float32_round_off(K):
    edm, D, model, sigmas, x_T, _ = _problem(K, 12)
    D32 = lambda x, s: GM.x0(x, s, edm)  # float32 in, float32 out (computed in float64 inside)
    x_kd = K.sample_heun(D32, x_T.float(), sigmas.float(), disable=True)
    ts, denoise = grid_from_sigmas(edm, sigmas.float())
    r = scoresde.sample(model, edm, (B, 3), "heun", schedule=ts, denoise=denoise, x_T=x_T.float())
    # float32 states (|x| <= 240 at sigma = 80) through 25 evaluations: relative 1e-6 of the data scale
    # would allow 2e-5; measured: bitwise equal (the same float32 operations in the same order).
    assert r.x.dtype == torch.float32 and float((r.x - x_kd).abs().max()) < 2e-5
