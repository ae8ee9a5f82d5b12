"""scoresde.adapters: networks in the call conventions of diffusers, k-diffusion, score_sde and EDM.

Two kinds of checks:

* **every registered sampler** runs, with NFE counted, on a randomly initialised network of each
  convention (a tiny diffusers ``UNet2DModel``, a k-diffusion-style denoiser, score_sde-style
  time-label nets on VP and VE, an EDM-style preconditioned net): the model wrapper's NFE must
  equal the calls counted on the network itself, and the samples must be finite;
* **the conventions are right**: each adapter, given a "network" that computes the exact answer
  of a Gaussian mixture in that library's convention (its time labels, its output), must give
  the exact scoresde prediction; and what each network receives (labels, timesteps, class
  labels) is recorded and checked.

Only the UNet2DModel case needs a peer (diffusers); the rest are written here.
"""

from __future__ import annotations

import math

import pytest
import torch
from _peers import require
from torch import nn

import scoresde
from scoresde import EDMSDE, VESDE, VPSDE, DiscreteVPSDE, GaussianMixture, ScoreModel, SubVPSDE
from scoresde.adapters import (
    from_diffusers,
    from_edm,
    from_k_diffusion,
    from_score_sde,
    grid_from_sigmas,
    to_diffusers,
    to_k_diffusion,
)

F64 = torch.float64
NAMES = scoresde.samplers.available()  # collected at import time: a new sampler is tested too
# Small budgets: random networks, only plumbing and NFE are checked here.
OPTS = {
    "ald": {"n_steps_each": 2, "eps": 1e-6},  # eps below 2 sigma_min^2 of every SDE here (EDM: 8e-6)
    "pc": {"norm": "batch"},  # the per-sample default warns below 16 dimensions
    "ode": {"rtol": 1e-2, "atol": 1e-2},
    "ode_scipy": {"rtol": 1e-2, "atol": 1e-2},
    "adaptive_sde": {"abstol": 0.1, "reltol": 0.1},
}
GM = GaussianMixture.ring(4, radius=1.5, std=0.3)


# ------------------------------------------------------------------------- random networks
class _Embed(nn.Module):
    """Random Fourier features of a per-sample scalar (B,) -> (B, 16)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(8) * 3.0)

    def forward(self, c):
        c = c.reshape(-1, 1).float()
        return torch.cat([torch.sin(c * self.w), torch.cos(c * self.w)], 1)


class _MLP(nn.Module):
    """out = MLP([x, embed(c)]) on (B, 4) data, with optional class labels."""

    def __init__(self, dim=4, classes=0):
        super().__init__()
        self.embed = _Embed()
        self.label = nn.Embedding(classes, 16) if classes else None
        self.body = nn.Sequential(nn.Linear(dim + 16, 32), nn.SiLU(), nn.Linear(32, dim))

    def forward(self, x, c, class_labels=None):
        e = self.embed(c)
        if self.label is not None and class_labels is not None:
            e = e + self.label(class_labels)
        return self.body(torch.cat([x.float(), e], 1))


class KDiffusionStyle(nn.Module):
    """A k-diffusion-style denoiser D(x, sigma): EDM preconditioning around a random MLP, with the
    ``sigma_min`` / ``sigma_max`` attributes of k-diffusion's discrete-schedule wrappers."""

    sigma_min, sigma_max, sigma_data = 0.01, 20.0, 0.5

    def __init__(self):
        super().__init__()
        self.inner = _MLP()

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1).to(x.dtype)
        sd = self.sigma_data
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.inner(c_in * x, sigma.log() / 4).to(x.dtype)


class EDMStyle(KDiffusionStyle):
    """An EDM-style ``*Precond`` net: D(x, sigma, class_labels) with EDMPrecond's default range 0 .. inf."""

    sigma_min, sigma_max = 0.0, math.inf

    def __init__(self):
        nn.Module.__init__(self)
        self.inner = _MLP(classes=3)
        self.seen_labels = []

    def forward(self, x, sigma, class_labels=None):
        self.seen_labels.append(class_labels)
        s = sigma.reshape(-1, 1).to(x.dtype)
        sd = self.sigma_data
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.inner(c_in * x, sigma.log() / 4, class_labels).to(x.dtype)


class Counter:
    """Counts forward calls of a module (and its returned values' batch sizes)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def _tiny_unet():
    diffusers = require("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=3,
    )


def _case(kind):
    """(model, network that is counted, shape, cond) for each convention."""
    torch.manual_seed(1)
    if kind == "diffusers":
        unet = _tiny_unet()
        return from_diffusers(unet, {"num_train_timesteps": 1000, "beta_schedule": "linear"}), unet, (2, 1, 8, 8), \
            {"class_labels": torch.tensor([0, 2])}
    if kind == "k_diffusion":
        net = KDiffusionStyle()
        return from_k_diffusion(net), net, (2, 4), {}
    if kind == "score_sde_vp":
        net = _MLP()
        return from_score_sde(net, VPSDE(), continuous=True), net, (2, 4), {}
    if kind == "score_sde_ve":
        net = _MLP()
        return from_score_sde(net, VESDE(sigma_max=20.0), continuous=True), net, (2, 4), {}
    net = EDMStyle()
    return from_edm(net), net, (2, 4), {"class_labels": torch.tensor([1, 2])}


KINDS = ["diffusers", "k_diffusion", "score_sde_vp", "score_sde_ve", "edm"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_sampler_runs_on_every_adapter_with_nfe_counted(kind, name):
    model, net, shape, cond = _case(kind)
    counter = Counter(net)
    with torch.no_grad():
        r = scoresde.sample(model, model.sde, shape, name, steps=3, cond=cond,
                            generator=torch.Generator().manual_seed(0), **OPTS.get(name, {}))
    assert r.x.shape == shape and bool(torch.isfinite(r.x).all())
    assert r.nfe == counter.calls > 0  # counted in one place, equal to the network's own calls


# ------------------------------------------------------------------------- conventions
def _x(n=6, d=2, seed=0, scale=1.0):
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_from_k_diffusion_is_the_denoiser_on_edm_noise_levels():
    edm = EDMSDE()
    calls = []

    def D(x, sigma):  # the exact denoiser of the mixture, k-diffusion's call convention
        calls.append(sigma)
        return GM.x0(x, sigma, edm)

    model = from_k_diffusion(D)
    assert isinstance(model, ScoreModel) and (model.sde.sigma_min, model.sde.sigma_max) == (0.002, 80.0)
    x, t = _x(scale=3.0), torch.tensor([0.01, 0.1, 1.0, 5.0, 30.0, 80.0], dtype=F64)
    exact = GM.model(edm)(x, t)
    got = model(x, t)
    assert torch.allclose(got.x0, exact.x0, rtol=0, atol=1e-12)  # float64, same formula
    assert torch.allclose(got.score, exact.score, rtol=1e-10, atol=1e-12)
    assert torch.equal(calls[-1], t)  # the denoiser gets sigma = t on the EDM SDE, per sample
    # Range from the wrapped denoiser's attributes (k-diffusion's discrete wrappers have them).
    assert (from_k_diffusion(KDiffusionStyle()).sde.sigma_min, from_k_diffusion(KDiffusionStyle()).sde.sigma_max) == (0.01, 20.0)
    with pytest.raises(ValueError, match="either sde= or sigma_min="):
        from_k_diffusion(D, EDMSDE(), sigma_min=0.1)
    with pytest.raises(TypeError, match="denoiser must be callable"):
        from_k_diffusion(3)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["VP", "subVP"])
def test_from_score_sde_vp_labels_are_999_t_and_output_is_eps(sde):
    seen = []

    def net(x, labels):  # the exact eps, at the time its label encodes (score_sde: labels = 999 t)
        seen.append(labels)
        t = labels.to(F64) / 999
        return -GM.score(x, t, sde) * sde.sigma(t)[:, None]

    model = from_score_sde(net, sde)
    x, t = _x(), torch.tensor([0.001, 0.01, 0.2, 0.5, 0.8, 1.0], dtype=F64)
    model(x, t)
    assert torch.equal(seen[-1], (999 * t).float())
    # Labels are float32 (score_sde's), so the net answers at t (1 +- 6e-8): relative 1e-5 is ample.
    assert torch.allclose(model(x, t).score, GM.score(x, t, sde), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match=r"DiscreteVPSDE\(betas=torch.linspace\(0.1/N, 20.0/N, N\)\)"):
        from_score_sde(net, sde, continuous=False)


def test_from_score_sde_ve_labels_sigma_or_level_index_and_output_is_score():
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    seen = []

    def net(x, labels):
        seen.append(labels)
        return torch.zeros_like(x)

    x, t = _x(), torch.tensor([1e-5, 0.1, 0.25, 0.5, 0.9, 1.0], dtype=F64)
    m = from_score_sde(net, ve)
    assert m.parameterization == "score"
    m(x, t)
    assert torch.equal(seen[-1], ve.sigma(t).float())  # continuous: labels = sigma(t)
    from_score_sde(net, ve, continuous=False, num_scales=1000)(x, t)
    # discrete: the index of the level in NCSN's decreasing sigmas, round((T - t) (N - 1))
    assert seen[-1].dtype == torch.int64 and seen[-1].tolist() == [999, 899, 749, 500, 100, 0]
    with pytest.raises(TypeError, match="supports score_sde's SDEs"):
        from_score_sde(net, EDMSDE())
    with pytest.raises(ValueError, match="output='x0' is not one of the accepted values"):
        from_score_sde(net, ve, output="x0")


def test_from_score_sde_ddpm_labels_are_table_timesteps():
    sde = DiscreteVPSDE(betas=torch.linspace(0.1 / 1000, 20 / 1000, 1000, dtype=F64))
    seen = []
    model = from_score_sde(lambda x, labels: seen.append(labels) or torch.zeros_like(x), sde, continuous=False)
    model(_x(3), sde.grid([999, 500, 7]))
    assert seen[-1].tolist() == [999.0, 500.0, 7.0]


def test_from_edm_preconditioned_and_raw_with_class_labels():
    edm = EDMSDE()
    seen = []

    def precond(x, sigma, class_labels=None):  # EDM's *Precond call convention, exact D
        seen.append(class_labels)
        return GM.x0(x, sigma, edm)

    x, t = _x(scale=2.0), torch.tensor([0.002, 0.05, 0.5, 2.0, 10.0, 80.0], dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = from_edm(precond)(x, t, class_labels=y)
    assert torch.allclose(got.x0, GM.x0(x, t, edm), rtol=0, atol=1e-12) and seen[-1] is y

    sd = 0.5

    def raw(x_in, c_noise, class_labels=None):  # the raw F of EDM Eq. 7 that makes D exact
        s = torch.exp(4 * c_noise).to(F64)[:, None]
        x_ = x_in * torch.sqrt(s**2 + sd**2)  # undo c_in
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / torch.sqrt(s**2 + sd**2)
        return (GM.x0(x_, s[:, 0], edm) - c_skip * x_) / c_out

    got = from_edm(raw, preconditioned=False, sigma_data=sd)(x, t)
    # F is recovered through exp(4 ln(s)/4) and c_in, c_out: round-off of order 1e-13 at sigma = 80.
    assert torch.allclose(got.x0, GM.x0(x, t, edm), rtol=0, atol=1e-10)
    # EDMPrecond's default range 0 .. inf falls back to EDM's sampling range.
    assert (from_edm(EDMStyle()).sde.sigma_min, from_edm(EDMStyle()).sde.sigma_max) == (0.002, 80.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_from_diffusers_prediction_types_give_the_exact_model(prediction_type):
    cfg = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
           "prediction_type": prediction_type}
    sde = DiscreteVPSDE(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    def unet(x, timestep):  # exact outputs at the table level of the timestep, diffusers' conventions
        t = sde.t_from_timestep(timestep.to(F64))
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        x0 = GM.x0(x.to(F64), t, sde)
        eps = (x - a * x0) / s
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]
        return type("UNet2DOutput", (), {"sample": out})()  # a .sample container, as diffusers returns

    model = from_diffusers(unet, cfg)
    assert model.parameterization == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[prediction_type]
    x, t = _x(scale=1.5), sde.grid([999, 800, 500, 200, 10, 0])
    exact = GM.model(sde)(x, t)
    got = model(x, t)
    # Timesteps reach the net as float32 (999 * t exact to 6e-5 timesteps: here integers, exact).
    assert torch.allclose(got.x0, exact.x0, rtol=0, atol=1e-9) and torch.allclose(got.eps, exact.eps, rtol=0, atol=1e-9)


def test_from_diffusers_timestep_choices():
    sde = DiscreteVPSDE(beta_schedule="linear")
    seen = []

    def unet(x, timestep):
        seen.append(timestep)
        return torch.zeros_like(x)

    t = torch.tensor([1.0, 0.5004, 0.25, 0.0], dtype=F64)  # 999, 499.9, 249.75, 0 in timesteps
    x = _x(4)
    from_diffusers(unet, sde, timesteps="continuous")(x, t)
    assert seen[-1].dtype == torch.float32 and torch.allclose(seen[-1].double(), 999 * t, atol=1e-4)
    from_diffusers(unet, sde, timesteps="round")(x, t)
    assert seen[-1].dtype == torch.int64 and seen[-1].tolist() == [999, 500, 250, 0]
    exact = from_diffusers(unet, sde, timesteps="exact")
    with pytest.raises(ValueError, match=r"evaluated the network at timestep 499.8996 \(t=0.5004\), which is not a table"):
        exact(x, t)
    exact(x, sde.grid([999, 500, 250, 0]))
    assert seen[-1].tolist() == [999, 500, 250, 0]
    with pytest.raises(ValueError, match="timesteps='int' is not one of the accepted values"):
        from_diffusers(unet, sde, timesteps="int")


def test_from_diffusers_timestep_choices_agree_on_table_grids():
    # On a grid of table points the three choices feed the same timesteps: bitwise-equal samples.
    sde = DiscreteVPSDE(beta_schedule="linear")

    def unet(x, k):
        t = sde.t_from_timestep(k.to(F64))
        return (-GM.score(x.to(F64), t, sde) * sde.sigma(t)[:, None]).to(x.dtype)

    grid = sde.grid(sde.timesteps(10, "trailing"))
    x_T = _x(8)
    outs = [scoresde.sample(from_diffusers(unet, sde, timesteps=m), sde, (8, 2), "dpmpp_2m", schedule=grid, x_T=x_T).x
            for m in ("continuous", "round", "exact")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_from_diffusers_bad_configs():
    net = lambda x, k: x
    with pytest.raises(ValueError, match="prediction_type='flow' is not one of the accepted values"):
        from_diffusers(net, {"prediction_type": "flow"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr=True gives alphas_cumprod = 0"):
        from_diffusers(net, {"rescale_betas_zero_snr": True})
    with pytest.raises(TypeError, match="scheduler_or_config must be a diffusers scheduler with a discrete DDPM table"):
        from_diffusers(net, object())
    with pytest.raises(TypeError, match="unet must be callable"):
        from_diffusers(None, {})
    # trained_betas in a config: the table is cumprod(1 - betas)
    m = from_diffusers(net, {"trained_betas": [0.1, 0.2, 0.3]})
    assert torch.allclose(m.sde.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=F64), rtol=1e-14, atol=0)


def test_adapted_models_own_their_network():
    net = KDiffusionStyle()
    model = from_k_diffusion(net)
    assert {id(p) for p in model.parameters()} == {id(p) for p in net.parameters()}
    assert model.network is net and set(model.state_dict()) == {"network." + k for k in net.state_dict()}
    model.to(F64)
    assert next(net.parameters()).dtype == F64


# ------------------------------------------------------------------------- the other direction
@pytest.mark.parametrize("sde", [VPSDE(), EDMSDE(), VESDE()], ids=["VP", "EDM", "VE"])
def test_to_k_diffusion_denoiser_is_x0_at_the_same_noise_level(sde):
    model = GM.model(sde)
    D = to_k_diffusion(model)
    t = torch.tensor([0.05, 0.2, 0.5, 0.7, 0.9, 1.0], dtype=F64) * (sde.T - sde.t_min) + sde.t_min
    s = sde.sigma_tilde(t)
    xt = _x(scale=2.0)  # k-diffusion's state x~ = x / alpha
    got = D(xt, s)
    want = GM.x0(xt * sde.alpha(t)[:, None], t, sde)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)  # t recovered from sigma~ to ~1e-15 relative
    assert D.sigma_min == pytest.approx(float(sde.sigma_tilde(torch.tensor(sde.t_min, dtype=F64))), rel=1e-12)
    assert D.sigma_max == pytest.approx(float(sde.sigma_tilde(torch.tensor(sde.T, dtype=F64))), rel=1e-12)
    # Round trip through from_k_diffusion on the EDM SDE: the same data prediction.
    back = from_k_diffusion(D, EDMSDE(sigma_min=D.sigma_min, sigma_max=D.sigma_max))
    assert torch.allclose(back(xt, s).x0, want, rtol=0, atol=1e-10)
    assert torch.allclose(D.sigma_to_t(D.t_to_sigma(t)), t, rtol=1e-12, atol=0)


def test_grid_from_sigmas_takes_the_final_zero_as_denoise():
    edm = EDMSDE()
    ts, denoise = grid_from_sigmas(edm, [80.0, 10.0, 1.0, 0.002, 0.0])
    assert denoise and torch.allclose(ts, torch.tensor([80.0, 10.0, 1.0, 0.002], dtype=F64), rtol=1e-15, atol=0)
    ts, denoise = grid_from_sigmas(edm, torch.tensor([80.0, 1.0]))
    assert not denoise and len(ts) == 2
    with pytest.raises(ValueError, match="0 only as the last entry"):
        grid_from_sigmas(edm, [80.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2 positive levels"):
        grid_from_sigmas(edm, [80.0, 0.0])


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sde", [VPSDE(), EDMSDE()], ids=["VP", "EDM"])
def test_to_diffusers_gives_the_table_level_prediction(sde, prediction_type):
    # A scoresde model of any SDE, called as a diffusers UNet at table timesteps, must answer what
    # the exact model on the table's own SDE answers (the same log-SNR, the state rescaled).
    table = DiscreteVPSDE(beta_schedule="linear")
    wrapper = to_diffusers(GM.model(sde), {"beta_schedule": "linear", "prediction_type": prediction_type})
    k = torch.tensor([999, 700, 300, 50, 5, 0])
    x = _x(scale=1.5)
    out = wrapper(x, k).sample
    tt = table.t_from_timestep(k.to(F64))
    ref = GM.model(table)(x, tt)
    a, s = table.alpha(tt)[:, None], table.sigma(tt)[:, None]
    want = {"epsilon": ref.eps, "sample": ref.x0, "v_prediction": a * ref.eps - s * ref.x0}[prediction_type]
    # Through inverse_lambda of the model's SDE and back: relative ~1e-13 measured at timestep 0.
    assert torch.allclose(out, want, rtol=1e-9, atol=1e-9)
    assert wrapper(x, 500, return_dict=False)[0].shape == x.shape  # scalar timestep, tuple output
    with pytest.raises(TypeError, match="a plain score_fn needs sde="):
        to_diffusers(GM.score_fn(sde), {})


def test_low_precision_networks_get_exact_timesteps_and_their_own_dtype():
    # The adapters hand the network its time input computed from the sampling dtype's t, not from t
    # rounded to the network's dtype: in bfloat16, t = 0.981 would be 0.98046875 (timestep 979.5).
    sde = DiscreteVPSDE(beta_schedule="linear")
    seen = {}

    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones((), dtype=torch.bfloat16))

        def forward(self, x, timestep):
            seen["x"], seen["k"] = x.dtype, timestep
            return x * self.w

    ks = [999, 981, 980, 500, 1]
    for mode in ("round", "continuous"):
        pred = from_diffusers(Half(), sde, timesteps=mode)(torch.randn(5, 2), sde.grid(ks).float())
        assert seen["x"] == torch.bfloat16 and pred.x0.dtype == torch.float32
        assert torch.allclose(seen["k"].double(), torch.tensor(ks, dtype=F64), atol=1e-3)  # float32 t: 6e-5 timesteps
