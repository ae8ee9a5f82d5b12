"""``diffusers_compatible(sampler, scheduler)``: the sample() arguments under which scoresde's sampler
gives a diffusers scheduler's samples, on the same network and starting noise.

The network is the exact noise prediction of a 2-D Gaussian mixture at the table level of the
timestep it is given (as in test_crosscheck_diffusers.py). diffusers casts samples to float32 in
its multistep ``step`` and keeps float32 sigmas, so the two agree to float32 round-off: measured
at most 1.1e-6 over the configurations below (data of scale 2), tolerance 1e-5. A wrong grid,
final step or lowered order shows at 1e-2 or more (the default lower_order_final: 1.7e-2 .. 1.4e-1).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _peers import require

import scoresde
from scoresde import DiscreteVPSDE, GaussianMixture
from scoresde.adapters import diffusers_compatible, from_diffusers

diffusers = require("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

F64 = torch.float64
GM = GaussianMixture.ring(4, radius=2.0, std=0.3)
B = 16
TOL32 = 1e-5  # module docstring


def _eps_net(sde):
    def net(x, k):
        t = sde.t_from_timestep(torch.as_tensor(k).to(F64).expand(x.shape[0]))
        return (-GM.score(x.to(F64), t, sde) * sde.sigma(t)[:, None]).to(x.dtype)

    return net


def _both(cls, steps, **config):
    """diffusers' loop and scoresde's sample(**preset) from the same x_T; (ours, theirs, preset, nfe ours)."""
    sched = getattr(diffusers, cls)(**config)
    sched.set_timesteps(steps)
    net = _eps_net(DiscreteVPSDE(sched.alphas_cumprod))
    x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(steps), dtype=F64)
    x = x_T.clone()
    for k in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, k), k), k, x).prev_sample
    model = from_diffusers(net, sched)
    preset = diffusers_compatible(None, sched)
    r = scoresde.sample(model, model.sde, (B, 2), x_T=x_T, dtype=F64, **preset)
    return r.x, x, preset, r.nfe


DPM = [{}, {"solver_type": "heun"}, {"final_sigmas_type": "sigma_min"},
       {"final_sigmas_type": "sigma_min", "lower_order_final": False}, {"euler_at_final": True},
       {"timestep_spacing": "trailing"}, {"solver_order": 1}]
UNIPC = [{}, {"final_sigmas_type": "sigma_min"}, {"final_sigmas_type": "sigma_min", "lower_order_final": False},
         {"solver_order": 3, "final_sigmas_type": "sigma_min"}, {"solver_order": 1}, {"timestep_spacing": "trailing"}]


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("config", DPM, ids=[str(c) for c in DPM])
def test_preset_reproduces_dpmsolvermultistep(steps, config):
    ours, theirs, preset, nfe = _both("DPMSolverMultistepScheduler", steps, **config)
    assert preset["sampler"] == ("ddim" if config.get("solver_order") == 1 else "dpmpp_2m")
    assert float((ours - theirs).abs().max()) < TOL32
    assert nfe == steps  # one network call per diffusers step, the final one included


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("config", UNIPC, ids=[str(c) for c in UNIPC])
def test_preset_reproduces_unipcmultistep(steps, config):
    ours, theirs, preset, nfe = _both("UniPCMultistepScheduler", steps, **config)
    assert preset["sampler"] == "unipc" and preset["order"] == config.get("solver_order", 2)
    assert float((ours - theirs).abs().max()) < TOL32
    assert nfe == steps


@pytest.mark.parametrize("config", [{"clip_sample": False}, {"clip_sample": False, "set_alpha_to_one": False},
                                    {"clip_sample": False, "timestep_spacing": "trailing"}])
def test_preset_reproduces_ddim(config):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, theirs, preset, nfe = _both("DDIMScheduler", 10, **config)
    # DDIM keeps the sample's float64 and reads the float32 table: measured 2.6e-8 (cross-check docs).
    assert preset["sampler"] == "ddim" and float((ours - theirs).abs().max()) < 1e-6
    if config.get("set_alpha_to_one") is False:  # leading spacing ends at 0, then a zero-length step in diffusers
        assert not preset["denoise"] and nfe == 9
        assert any("zero-length step" in str(w.message) for w in caught)
    else:
        assert preset["denoise"] and nfe == 10


def test_the_default_lower_order_final_is_not_diffusers(steps=10):
    # The reason for the preset: scoresde's own default lowers the step before the jump as well.
    sched = diffusers.DPMSolverMultistepScheduler()
    sched.set_timesteps(steps)
    net = _eps_net(DiscreteVPSDE(sched.alphas_cumprod))
    x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x_T.clone()
    for k in sched.timesteps:
        x = sched.step(net(x, k), k, x).prev_sample
    model = from_diffusers(net, sched)
    preset = diffusers_compatible("dpmpp_2m", sched)
    assert preset["lower_order_final"] is False
    default = scoresde.sample(model, model.sde, (B, 2), "dpmpp_2m", schedule=preset["schedule"], x_T=x_T, dtype=F64)
    assert float((default.x - x).abs().max()) > 100 * TOL32  # measured 0.13


def test_a_random_unet_through_the_preset():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    sched = diffusers.UniPCMultistepScheduler()
    sched.set_timesteps(6)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = x_T.clone()
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x).prev_sample
        model = from_diffusers(unet, sched)
        r = scoresde.sample(model, model.sde, (2, 1, 8, 8), x_T=x_T, **diffusers_compatible("unipc", sched))
    # float32 network and samples; a random UNet's samples reach |x| ~ 500 (the cross-check measures
    # relative 2e-7 .. 4e-7 for the same setting without the preset).
    assert float((r.x - x).abs().max()) < 1e-4 * max(1.0, float(x.abs().max()))


def test_preset_warnings_for_what_scoresde_does_not_reproduce():
    def warns(match, **config):
        cls = config.pop("cls", "DDIMScheduler")
        sched = getattr(diffusers, cls)(**config)
        sched.set_timesteps(10)
        with pytest.warns(UserWarning, match=match):
            return diffusers_compatible(None, sched)

    warns(r"clip_sample=True\) clips x0 to \[-1.0, 1.0\] at every step; scoresde never clips")  # DDIMScheduler()
    warns(r"from timestep k to k - 100 .*issue #12633.* not the next listed timestep at 9 of 10 steps \(first: 999 -> 899, "
          r"listed next 888\)",
          clip_sample=False, timestep_spacing="linspace")
    warns(r"thresholding=True", clip_sample=False, thresholding=True)
    warns(r"use_karras_sigmas=True\) steps between its own sigmas", cls="DPMSolverMultistepScheduler", use_karras_sigmas=True)
    warns(r"fails on its final jump to sigma = 0 .*NaN for bh1", cls="UniPCMultistepScheduler", solver_type="bh1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # leading spacing, steps dividing 1000, no clipping: nothing to say
        sched = diffusers.DDIMScheduler(clip_sample=False)
        sched.set_timesteps(10)
        diffusers_compatible("ddim", sched)


def test_preset_errors_name_the_setting():
    def refused(match, sampler=None, cls="DPMSolverMultistepScheduler", steps=10, **config):
        sched = getattr(diffusers, cls)(**config)
        if steps:
            sched.set_timesteps(steps)
        with pytest.raises(ValueError, match=match):
            diffusers_compatible(sampler, sched)

    refused(r"call scheduler.set_timesteps\(steps\) first", steps=0)
    refused(r"sampler='unipc' does not reproduce this DPMSolverMultistepScheduler .* accepted: 'dpmpp_2m'", sampler="unipc")
    refused(r"algorithm_type='sde-dpmsolver\+\+'\) has no scoresde preset", algorithm_type="sde-dpmsolver++")
    refused(r"solver_order=3\) has no scoresde preset; accepted: 1 \(ddim\), 2 \(dpmpp_2m\)", solver_order=3)
    refused(r"UniPC order 3 with lower_order_final=True and the final jump", cls="UniPCMultistepScheduler", solver_order=3)
    refused(r"predict_x0=False", cls="UniPCMultistepScheduler", predict_x0=False)
    refused(r"disable_corrector", cls="UniPCMultistepScheduler", disable_corrector=[0])
    refused(r"scheduler EulerDiscreteScheduler is not one of the accepted values: DDIMScheduler", cls="EulerDiscreteScheduler")
