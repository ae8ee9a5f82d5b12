"""scoresde's samplers against diffusers' schedulers, on the same network, timesteps and starting noise.

The "network" is the exact noise prediction of a Gaussian mixture at the table level of the
timestep it is given, ``eps(x, k)`` on the scheduler's own ``alphas_cumprod``: diffusers calls it in
its loop, scoresde through ``from_diffusers`` on the ``DiscreteVPSDE`` of the same table, run on the
scheduler's own timesteps (``sde.grid(scheduler.timesteps)``); diffusers' final step to sigma = 0
(``alpha = 1``) is scoresde's final denoising step (``denoise=True``).

Precision: DDIM runs in the sample's dtype, so with float64 samples and the scheduler's table
upcast to float64 the two agree to round-off (tolerance 1e-12). DPMSolverMultistep, UniPC and
Euler cast the sample to float32 inside ``step`` and keep their sigmas in float32, so they agree to
float32 round-off only (tolerance 1e-5 for data of scale 2; measured up to 1.1e-6).

Known, measured differences are tested as such (docs/byo-model.md has the table):
* DDIMScheduler's ``clip_sample=True`` default clips x0 to [-1, 1] (scoresde does not clip): the
  checks use ``clip_sample=False``;
* DDIMScheduler with ``timestep_spacing="linspace"`` steps each state to ``k - N // steps`` while the
  next evaluation is at the next listed timestep (diffusers issue #12633): reproduced exactly
  with scoresde's ddim on per-step grids;
* scoresde's ``lower_order_final=True`` default (dpmpp_2m, unipc) lowers the order of the last step
  *before* the final jump; diffusers lowers only the jump itself: ``lower_order_final=False`` matches;
* ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` at 1000 steps repeat timestep 500,
  a zero-length step that makes diffusers' output inf / NaN; scoresde refuses that grid;
* EulerDiscreteScheduler's ``linspace`` spacing gives fractional timesteps whose sigma diffusers
  interpolates linearly, scoresde log-linearly (relative sigma differences up to 2e-4 at 50 steps).
"""

from __future__ import annotations

import pytest
import torch
from _peers import require

import scoresde
from scoresde import EDMSDE, DiscreteVPSDE, GaussianMixture
from scoresde.adapters import from_diffusers, to_diffusers

diffusers = require("diffusers")
# diffusers' schedulers call np.array(tensor, copy=False) under numpy 2: a warning about its code, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

F64 = torch.float64
GM = GaussianMixture.ring(4, radius=2.0, std=0.3)  # data beyond [-1, 1]: clipping would show
B = 16
TOL64 = 1e-12  # float64 throughout, the same operations in another order: measured <= 2.0e-15
TOL32 = 1e-5  # diffusers' float32 step arithmetic, data of scale 2: measured <= 1.1e-6


def _eps_net(sde):
    """eps(x, k): the exact noise prediction at the table level of timestep k (scalar or (B,))."""
    calls = {"n": 0}

    def net(x, k):
        calls["n"] += 1
        t = sde.t_from_timestep(torch.as_tensor(k).to(F64).expand(x.shape[0]))
        return (-GM.score(x.to(F64), t, sde) * sde.sigma(t)[:, None]).to(x.dtype)

    return net, calls


def _diffusers_loop(sched, net, x):
    for k in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, k), k), k, x).prev_sample
    return x


def _x_T(seed=0):
    return torch.randn(B, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _float64_table(sched):
    sched.alphas_cumprod = sched.alphas_cumprod.to(F64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(F64)
    return sched


# ------------------------------------------------------------------------------------------ DDIM
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_sde_ddim_on_the_tables_timesteps_equals_ddimscheduler(schedule, spacing, steps, set_alpha_to_one):
    kw = dict(beta_start=0.00085, beta_end=0.012) if schedule == "scaled_linear" else {}
    sched = _float64_table(diffusers.DDIMScheduler(beta_schedule=schedule, timestep_spacing=spacing, clip_sample=False,
                                                   set_alpha_to_one=set_alpha_to_one, **kw))
    sched.set_timesteps(steps)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, calls = _eps_net(sde)
    x_T = _x_T()
    x_d = _diffusers_loop(sched, net, x_T.clone())
    nfe_d, calls["n"] = calls["n"], 0
    # The last step goes to alpha = 1 (set_alpha_to_one): scoresde's denoising step. Otherwise to
    # timestep 0's level: one more grid point (none when the last timestep already is 0).
    ks = sched.timesteps
    if not set_alpha_to_one and int(ks[-1]) != 0:
        ks = torch.cat([ks, ks.new_zeros(1)])
    r = scoresde.sample(from_diffusers(net, sched), sde, (B, 2), "ddim", schedule=sde.grid(ks), x_T=x_T,
                        denoise=set_alpha_to_one, dtype=F64)
    assert float((r.x - x_d).abs().max()) < TOL64
    # leading spacing without set_alpha_to_one: diffusers' last call steps from timestep 0 to the
    # level of timestep 0, a zero-length step that still costs a network evaluation.
    noop = 1 if (not set_alpha_to_one and int(sched.timesteps[-1]) == 0) else 0
    assert r.nfe == calls["n"] == nfe_d - noop


def test_ddim_with_diffusers_float32_table_agrees_to_float32_round_off():
    sched = diffusers.DDIMScheduler(clip_sample=False)
    sched.set_timesteps(50)
    sde = DiscreteVPSDE(sched.alphas_cumprod)  # the float32 values, read exactly into float64
    net, _ = _eps_net(sde)
    x_T = _x_T()
    x_d = _diffusers_loop(sched, net, x_T.clone())
    r = scoresde.sample(from_diffusers(net, sched), sde, (B, 2), "ddim", schedule=sde.grid(sched.timesteps), x_T=x_T, dtype=F64)
    # diffusers takes sqrt(abar) of float32 tensors in float32: relative 6e-8 per coefficient; measured 1.2e-8.
    assert float((r.x - x_d).abs().max()) < 1e-6


def test_ddim_clip_sample_default_is_a_documented_difference():
    sched = _float64_table(diffusers.DDIMScheduler())  # clip_sample=True: x0 clipped to [-1, 1]
    sched.set_timesteps(10)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, _ = _eps_net(sde)
    x_T = _x_T()
    x_d = _diffusers_loop(sched, net, x_T.clone())
    r = scoresde.sample(from_diffusers(net, sched), sde, (B, 2), "ddim", schedule=sde.grid(sched.timesteps), x_T=x_T, dtype=F64)
    assert float(x_d.abs().max()) <= 1.0 + 1e-12 < float(r.x.abs().max())  # diffusers' samples are clipped


@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("linspace", 50), ("trailing", 12)])
def test_ddim_steps_to_the_stride_not_the_next_timestep(spacing, steps):
    # diffusers issue #12633: DDIMScheduler.step moves the state to k - N // steps, while the next
    # call evaluates the network at the next listed timestep; the two differ for linspace spacing,
    # and for trailing spacing when steps does not divide N (by one timestep).
    sched = _float64_table(diffusers.DDIMScheduler(timestep_spacing=spacing, clip_sample=False))
    sched.set_timesteps(steps)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, _ = _eps_net(sde)
    model = from_diffusers(net, sched)
    x_T = _x_T()
    x_d = _diffusers_loop(sched, net, x_T.clone())
    on_grid = scoresde.sample(model, sde, (B, 2), "ddim", schedule=sde.grid(sched.timesteps), x_T=x_T, dtype=F64)
    # scoresde's DDIM on the listed timesteps is a different (consistent) sampler: measured
    # 0.11 (linspace 10), 0.017 (linspace 50), 0.0036 (trailing 12) apart.
    assert float((on_grid.x - x_d).abs().max()) > 1e-3
    # diffusers' behaviour, rebuilt from one-step scoresde DDIM runs (evaluate at k, land at k - stride):
    x = x_T
    for k in sched.timesteps.tolist():
        prev = k - 1000 // steps
        if prev >= 0:
            x = scoresde.sample(model, sde, (B, 2), "ddim", schedule=sde.grid([k, prev]), x_T=x, dtype=F64, denoise=False).x
        else:  # below timestep 0: set_alpha_to_one, the jump to the data
            x = model(x, sde.t_from_timestep(torch.tensor(float(k)))).x0
    assert float((x - x_d).abs().max()) < TOL64


# ------------------------------------------------------------------------- DPM-Solver++ and UniPC
@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("solver_type,ours", [("midpoint", "dpmsolver"), ("heun", "taylor")])
def test_dpmpp_2m_equals_dpmsolvermultistep(steps, solver_type, ours):
    sched = diffusers.DPMSolverMultistepScheduler(solver_type=solver_type)  # dpmsolver++, order 2, final sigma 0
    sched.set_timesteps(steps)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, calls = _eps_net(sde)
    x_T = _x_T()
    x_d = _diffusers_loop(sched, net, x_T.clone())
    nfe_d, calls["n"] = calls["n"], 0
    grid = sde.grid(sched.timesteps)
    model = from_diffusers(net, sched)
    r = scoresde.sample(model, sde, (B, 2), "dpmpp_2m", schedule=grid, x_T=x_T, dtype=F64,
                        lower_order_final=False, solver_type=ours)
    assert float((r.x - x_d).abs().max()) < TOL32
    assert r.nfe == calls["n"] == nfe_d
    # scoresde's default lowers the step before the jump as well: a documented difference.
    default = scoresde.sample(model, sde, (B, 2), "dpmpp_2m", schedule=grid, x_T=x_T, dtype=F64, solver_type=ours)
    assert float((default.x - x_d).abs().max()) > 100 * TOL32  # measured 0.017 (50 steps) .. 0.14


@pytest.mark.parametrize("steps", [3, 5, 10, 20])
def test_unipc_equals_unipcmultistep(steps):
    sched = diffusers.UniPCMultistepScheduler()  # bh2, order 2, predict_x0, corrector on, final sigma 0
    sched.set_timesteps(steps)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, calls = _eps_net(sde)
    x_T = _x_T()
    x_d = _diffusers_loop(sched, net, x_T.clone())
    nfe_d, calls["n"] = calls["n"], 0
    r = scoresde.sample(from_diffusers(net, sched), sde, (B, 2), "unipc", schedule=sde.grid(sched.timesteps), x_T=x_T,
                        dtype=F64, lower_order_final=False)
    assert float((r.x - x_d).abs().max()) < TOL32
    assert r.nfe == calls["n"] == nfe_d


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_a_thousand_steps_repeat_a_timestep(cls):
    sched = getattr(diffusers, cls)()
    sched.set_timesteps(1000)
    ks = sched.timesteps
    assert len(ks) == 1000 and len(torch.unique(ks)) == 999
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, _ = _eps_net(sde)
    x_d = _diffusers_loop(sched, net, _x_T())
    assert not bool(torch.isfinite(x_d).all())  # the zero-length step (h = 0) gives inf / NaN
    with pytest.raises(ValueError, match=r"timesteps\[499\] = 500, timesteps\[500\] = 500"):
        sde.grid(ks)
    assert torch.equal(sde.timesteps(1000, "linspace", convention="multistep"), ks)  # the same list, made by scoresde


# ------------------------------------------------------------------------------------------ Euler
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_equals_eulerdiscrete(spacing, steps):
    # Euler in (x~, sigma~) is DDIM: x~' = x~ + (s' - s)(x~ - x0)/s = (s'/s) x~ + (1 - s'/s) x0.
    sched = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing)
    sched.set_timesteps(steps)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    net, calls = _eps_net(sde)
    ks = sched.timesteps.to(F64)
    ts = sde.t_from_timestep(ks)
    x_T = _x_T()  # diffusers' state is x~ = x / alpha, starting at init_noise_sigma
    x_d = _diffusers_loop(sched, net, x_T * sched.init_noise_sigma)
    nfe_d, calls["n"] = calls["n"], 0
    x_start = x_T * sched.init_noise_sigma * sde.alpha(ts[:1])
    r = scoresde.sample(from_diffusers(net, sched), sde, (B, 2), "ddim", schedule=ts, x_T=x_start, dtype=F64)
    s_d, s_ours = sched.sigmas[:-1].to(F64), sde.sigma_tilde(ts)
    rel = float(((s_d - s_ours) / s_ours).abs().max())
    diff = float((r.x - x_d).abs().max())
    assert r.nfe == calls["n"] == nfe_d
    if bool((ks == torch.round(ks)).all()):  # integer timesteps: the table's own levels on both sides
        assert rel < 2e-7 and diff < TOL32  # float32 sigmas in diffusers
    else:
        # Fractional timesteps (linspace, 50 steps): diffusers interpolates sigma~ linearly in the
        # timestep, scoresde log-linearly: measured relative sigma difference 1.9e-4, output 6.8e-6.
        assert 1e-5 < rel < 1e-3 and diff < 1e-4


# ------------------------------------------------------------------------- real UNets, both directions
def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )


@pytest.mark.parametrize("scheduler,ours,opts", [
    ("DDIMScheduler", "ddim", {}),
    ("DPMSolverMultistepScheduler", "dpmpp_2m", {"lower_order_final": False}),
    ("UniPCMultistepScheduler", "unipc", {"lower_order_final": False}),
])
def test_a_random_unet_samples_the_same_under_diffusers_and_scoresde(scheduler, ours, opts):
    unet = _tiny_unet()
    sched = getattr(diffusers, scheduler)(**({"clip_sample": False} if scheduler == "DDIMScheduler" else {}))
    sched.set_timesteps(8)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_d = _diffusers_loop(sched, lambda x, k: unet(x, k).sample, x_T.clone())
        model = from_diffusers(unet, sched)
        r = scoresde.sample(model, model.sde, (2, 1, 8, 8), ours, schedule=model.sde.grid(sched.timesteps), x_T=x_T, **opts)
    # float32 network and samples; a random UNet's samples reach |x| ~ 500: float32 round-off over 8
    # steps, relative to that scale (measured 2e-7 .. 4e-7 relative).
    assert float((r.x - x_d).abs().max()) < 1e-4 * max(1.0, float(x_d.abs().max()))
    assert r.nfe == 8


def test_diffusers_schedulers_run_a_scoresde_model_through_to_diffusers():
    # A scoresde model on another SDE (EDM's, alpha = 1) under DDIMScheduler's loop: scoresde's ddim
    # on the times of the same log-SNRs gives the same samples. The EDM range is widened to the
    # table's (sigma~ from 0.01 at timestep 0 to 157 at 999).
    edm = EDMSDE(sigma_min=0.002, sigma_max=200.0)
    model = GM.model(edm)
    sched = _float64_table(diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"))
    sched.set_timesteps(10)  # trailing with steps dividing N: DDIM's stride is the listed spacing
    wrapper = to_diffusers(model, sched)
    x_T = _x_T()  # diffusers' VP state at timestep 999
    x_d = _diffusers_loop(sched, lambda x, k: wrapper(x, k).sample, x_T.clone())
    table = DiscreteVPSDE(sched.alphas_cumprod)
    tau = table.grid(sched.timesteps)
    ts = edm.inverse_lambda(table.lam(tau))
    x_start = x_T / table.alpha(tau[:1])  # the same state on the EDM SDE: x = x_VP alpha_EDM / alpha_VP
    r = scoresde.sample(model, edm, (B, 2), "ddim", schedule=ts, x_T=x_start, dtype=F64)
    # Closed-form maps per call (table lambda -> EDM time, state rescaling): measured 4.2e-15.
    assert float((r.x - x_d).abs().max()) < 1e-10


def test_a_diffusers_pipeline_runs_a_scoresde_model():
    # DDIMPipeline itself (its noise draw, loop and output scaling) with a scoresde model as its UNet.
    gm = GaussianMixture([1.0, 2.0], 0.3 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0), dtype=F64),
                         torch.full((2,), 0.01, dtype=F64))
    edm = EDMSDE(sigma_min=0.002, sigma_max=200.0)
    sched = diffusers.DDIMScheduler(clip_sample=False)
    wrapper = to_diffusers(gm.model(edm), sched, in_channels=1, sample_size=8)
    pipe = diffusers.DDIMPipeline(unet=wrapper, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=3, generator=torch.Generator().manual_seed(5), num_inference_steps=6, output_type="np").images
    assert wrapper.model.nfe == 6
    # The pipeline's x_T is torch.randn from its generator; scoresde from the same draw:
    x_T = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    table = DiscreteVPSDE(pipe.scheduler.alphas_cumprod)  # the pipeline's own scheduler (a copy made from config)
    tau = table.grid(pipe.scheduler.timesteps)
    ts = edm.inverse_lambda(table.lam(tau))
    r = scoresde.sample(gm.model(edm), edm, (3, 1, 8, 8), "ddim", schedule=ts, x_T=x_T / float(table.alpha(tau[:1])))
    ours = (r.x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(ours - out).max() < 1e-5  # float32 samples and the float32 table in the pipeline


@pytest.mark.parametrize("steps", [1, 7, 10, 50, 333, 1000])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("cls,convention", [("DDIMScheduler", "ddim"), ("DPMSolverMultistepScheduler", "multistep"),
                                            ("UniPCMultistepScheduler", "multistep")])
def test_table_timesteps_are_diffusers_set_timesteps(cls, convention, spacing, steps):
    sched = getattr(diffusers, cls)(timestep_spacing=spacing)
    sched.set_timesteps(steps)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    assert torch.equal(sde.timesteps(steps, spacing, convention=convention), sched.timesteps)
