"""DiscreteVPSDE: a DDPM alphas_cumprod table as a linear SDE (no peer library needed).

Oracles: the table itself (reproduced at every integer timestep), DDPM's one-step transition
``1 - beta_k``, the closed-form betas of the named schedules, float64 autograd of the schedule
functions (for the closed-form f and g^2), the closed-form probability-flow map of a Gaussian
(which the ODE samplers must reach through the table's knots), and point-mass exactness.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde
from scoresde import DiscreteVPSDE, Gaussian, LinearSDE
from scoresde.discrete import BETA_SCHEDULES, make_betas
from scoresde.sde import sde_from_config

F64 = torch.float64
SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]
IDS = [s["beta_schedule"] for s in SCHEDULES]


def _sde(kw, n=1000):
    return DiscreteVPSDE(**kw, num_train_timesteps=n)


@pytest.mark.parametrize("n", [2, 7, 50, 1000, 4000])
@pytest.mark.parametrize("kw", SCHEDULES, ids=IDS)
def test_alphas_cumprod_reproduced_at_every_integer_timestep(kw, n):
    sde = _sde(kw, n)
    k = torch.arange(n)
    t = sde.t_from_timestep(k)
    ac = sde.alphas_cumprod
    a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
    # The bound: 1e-12 absolute; measured max 2.2e-16 (a few ulps of logit/sigmoid round trips).
    assert float((a2 - ac).abs().max()) < 1e-12
    # Relative too (the cosine table ends near 1e-9 at N = 1000): measured <= 3e-15.
    assert float(((a2 - ac) / ac).abs().max()) < 1e-12
    assert float((s2 - (1.0 - ac)).abs().max()) < 1e-12
    # Variance preserving everywhere, also between table points.
    u = torch.rand(257, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert float((sde.alpha(u) ** 2 + sde.sigma(u) ** 2 - 1.0).abs().max()) < 1e-14  # a few ulps of 1


@pytest.mark.parametrize("kw", SCHEDULES, ids=IDS)
def test_one_table_step_is_ddpm_transition(kw):
    # DDPM: x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z; the exact transition between two table
    # points of the SDE must be exactly that.
    sde = _sde(kw, 1000)
    betas = make_betas(**kw, num_train_timesteps=1000)
    t = sde.t_from_timestep(torch.arange(1000))
    a, b2 = sde.transition(t[:-1], t[1:])
    assert torch.allclose(a**2, 1.0 - betas[1:], rtol=1e-12, atol=0)  # float64 round-off over 1000 products
    assert torch.allclose(b2, betas[1:], rtol=1e-10, atol=0)  # b^2 = beta via expm1: relative 1e-12 of 1e-4


def test_named_betas_are_the_published_formulas():
    n = 1000
    lin = make_betas("linear", n, 1e-4, 0.02)
    assert float(lin[0]) == 1e-4 and abs(float(lin[-1]) - 0.02) < 1e-17 and torch.allclose(lin.diff(), lin.diff()[:1])
    sl = make_betas("scaled_linear", n, 0.00085, 0.012)
    assert torch.allclose(sl.sqrt().diff(), sl.sqrt().diff()[:1], rtol=1e-10, atol=0)  # linear in sqrt(beta)
    cos = make_betas("squaredcos_cap_v2", n)
    # Nichol & Dhariwal 2021, Eq. 17: abar_k = f(k+1)/f(0) with f(u) = cos((u/N + s)/(1 + s) pi/2)^2,
    # as long as no beta is clipped at 0.999 (only the last few are).
    f = lambda u: math.cos((u / n + 0.008) / 1.008 * math.pi / 2) ** 2
    abar = torch.cumprod(1.0 - cos, 0)
    for k in (0, 10, 500, 900, 990):
        assert abs(float(abar[k]) - f(k + 1) / f(0)) < 1e-13 * max(1.0, 1 / float(abar[k]))
    assert float(cos.max()) == 0.999  # the cap


@pytest.mark.parametrize("kw", SCHEDULES, ids=IDS)
def test_lambda_is_linear_between_table_points_and_inverse_is_exact(kw):
    sde = _sde(kw, 1000)
    k = torch.arange(999, dtype=F64)
    lo, hi = sde.lam(sde.t_from_timestep(k)), sde.lam(sde.t_from_timestep(k + 1))
    for w in (0.25, 0.5, 0.9):
        mid = sde.lam(sde.t_from_timestep(k + w))
        assert torch.allclose(mid, lo + w * (hi - lo), rtol=0, atol=1e-12)  # lerp, float64
    # inverse_lambda: closed form, at table points exactly and in between to round-off.
    t = torch.cat([sde.t_from_timestep(torch.arange(1000)), torch.rand(500, dtype=F64)])
    assert float((sde.inverse_lambda(sde.lam(t)) - t).abs().max()) < 1e-13
    # Outside [0, 1] both continue the end segments linearly (EDM churn may ask above T).
    out = torch.tensor([-0.01, 1.02], dtype=F64)
    assert torch.allclose(sde.inverse_lambda(sde.lam(out)), out, rtol=0, atol=1e-13)


@pytest.mark.parametrize("kw", SCHEDULES, ids=IDS)
def test_closed_form_f_and_g2_equal_autograd_of_the_schedules(kw):
    sde = _sde(kw, 1000)
    # Random times are off the knots with probability 1 (at a knot the derivative is one-sided).
    t = torch.rand(300, dtype=F64, generator=torch.Generator().manual_seed(1))
    f_ad, g2_ad = LinearSDE.f(sde, t), LinearSDE.g2(sde, t)
    assert torch.allclose(sde.f(t), f_ad, rtol=1e-10, atol=0)  # autograd through softplus: ~1e-14 measured
    assert torch.allclose(sde.g2(t), g2_ad, rtol=1e-10, atol=1e-300)
    assert torch.allclose(sde.g2(t), -2.0 * sde.f(t), rtol=1e-14, atol=0)  # every VP SDE: g^2 = -2 f
    assert bool((sde.g2(t) > 0).all())
    # At a knot the derivative is that of the segment below it (where samplers step), first segment at t = 0.
    k = torch.tensor([0.0, 1.0, 10.0, 999.0], dtype=F64)
    lam = sde._lam
    slope = torch.stack([lam[1] - lam[0], lam[1] - lam[0], lam[10] - lam[9], lam[999] - lam[998]]) * 999
    tk = sde.t_from_timestep(k)
    assert torch.allclose(sde.f(tk), slope * sde.sigma(tk) ** 2, rtol=1e-12, atol=0)


def test_pf_ode_with_these_f_and_g2_reaches_the_closed_form_map():
    # The closed-form map of a Gaussian depends on alpha and sigma only; integrating
    # dx/dt = f x - g^2 score / 2 with the closed-form f and g^2 must reach it. Classical RK4 on m
    # substeps per table segment (the drift is smooth inside a segment; stages at a segment's ends
    # are nudged inside it) must converge at order 4, which only consistent f and g^2 allow.
    n = 20
    sde = DiscreteVPSDE(beta_schedule="linear", num_train_timesteps=n)
    g = Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.25, 2.0]))
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = g.pf_ode_map(x_T, 1.0, 0.0, sde)

    def drift(x, t):
        tt = torch.full((x.shape[0],), t, dtype=F64)
        return sde.ode_drift(x, tt, g.score(x, tt, sde))

    errors = []
    for m in (2, 4, 8):
        x, e = x_T.clone(), 1e-13
        for k in range(n - 1, 0, -1):
            sub = torch.linspace(k / (n - 1), (k - 1) / (n - 1), m + 1, dtype=F64).tolist()
            for t0, t1 in zip(sub[:-1], sub[1:], strict=True):
                h = t1 - t0
                k1 = drift(x, t0 - e)
                k2 = drift(x + h / 2 * k1, t0 + h / 2)
                k3 = drift(x + h / 2 * k2, t0 + h / 2)
                k4 = drift(x + h * k3, t1 + e)
                x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        errors.append(float((x - exact).abs().max()))
    slopes = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:], strict=True)]
    # Measured errors 4.3e-6, 2.8e-7, 1.7e-8 (slopes 3.96, 3.99); an inconsistent g^2 would stall.
    assert all(3.7 < s < 4.3 for s in slopes), (errors, slopes)
    assert errors[-1] < 1e-7


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "unipc", "heun"])
def test_exponential_and_karras_samplers_exact_for_a_point_mass(name):
    sde = DiscreteVPSDE(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    c = torch.tensor([0.7, -1.3], dtype=F64)
    model = scoresde.ScoreModel(lambda x, t: c.expand_as(x), sde, "x0")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = sde.grid(sde.timesteps(7, "trailing"))
    r = scoresde.sample(model, sde, (8, 2), name, schedule=grid, x_T=x_T, dtype=F64, denoise=False)
    a_T, s_T = sde.alpha(grid[:1]), sde.sigma(grid[:1])
    a_0, s_0 = sde.alpha(grid[-1:]), sde.sigma(grid[-1:])
    exact = a_0 * c + s_0 / s_T * (x_T - a_T * c)
    assert float((r.x - exact).abs().max()) < 1e-12  # float64, exact up to round-off


def test_timesteps_conventions_by_hand():
    sde = DiscreteVPSDE(beta_schedule="linear")
    assert sde.timesteps(4).tolist() == [750, 500, 250, 0]
    assert sde.timesteps(4, steps_offset=1).tolist() == [751, 501, 251, 1]
    assert sde.timesteps(4, "trailing").tolist() == [999, 749, 499, 249]
    assert sde.timesteps(4, "linspace").tolist() == [999, 666, 333, 0]
    assert sde.timesteps(4, "linspace", convention="multistep").tolist() == [999, 749, 500, 250]
    assert sde.timesteps(4, "leading", convention="multistep").tolist() == [800, 600, 400, 200]
    ks = sde.timesteps(1000, "linspace", convention="multistep")
    assert len(ks) == 1000 and len(torch.unique(ks)) == 999  # diffusers' repeated timestep at N steps
    with pytest.raises(ValueError, match=r"strictly decreasing; timesteps\[499\] = 500, timesteps\[500\] = 500"):
        sde.grid(ks)


def test_grid_and_snap():
    sde = DiscreteVPSDE(beta_schedule="linear")
    g = sde.grid([999, 500, 0])
    assert g.dtype == F64 and g.tolist() == [1.0, 500 / 999, 0.0]
    ts = scoresde.schedules.make_grid(sde, 40, "karras")
    snapped = sde.snap(ts)
    k = sde.timestep(snapped)
    assert torch.equal(k, torch.round(k)) and bool((k[1:] < k[:-1]).all())
    # Each snapped time is the nearest table point of a grid time (duplicates near t = 0 dropped).
    assert set(k.tolist()) == set(torch.round(sde.timestep(ts)).tolist())
    for bad, msg in [([999, 500.5, 0], "must be integers"), ([999, 1000], r"lie in \[0, 999\]"), ([5], "at least 2")]:
        with pytest.raises(ValueError, match=msg):
            sde.grid(bad)


def test_bad_tables_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="exactly one of alphas_cumprod=, betas= or beta_schedule="):
        DiscreteVPSDE()
    with pytest.raises(ValueError, match="exactly one of"):
        DiscreteVPSDE([0.9, 0.5], beta_schedule="linear")
    with pytest.raises(ValueError, match=r"strictly in \(0, 1\); alphas_cumprod\[2\] = 0.0 \(a zero-terminal-SNR"):
        DiscreteVPSDE([0.9, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"strictly decreasing; alphas_cumprod\[1\] = 0.5"):
        DiscreteVPSDE([0.9, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\); betas\[1\] = 1.0"):
        DiscreteVPSDE(betas=[0.1, 1.0])
    with pytest.raises(ValueError, match="beta_schedule='cosine' is not one of the accepted values"):
        DiscreteVPSDE(beta_schedule="cosine")
    with pytest.raises(ValueError, match="NaN or Inf"):
        DiscreteVPSDE([0.9, float("nan")])
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000\]"):
        DiscreteVPSDE(beta_schedule="linear").timesteps(0)
    with pytest.raises(ValueError, match="spacing='uniform' is not one of"):
        DiscreteVPSDE(beta_schedule="linear").timesteps(10, "uniform")
    assert set(BETA_SCHEDULES) == {"linear", "scaled_linear", "squaredcos_cap_v2"}


@pytest.mark.parametrize("make", [lambda: DiscreteVPSDE(beta_schedule="squaredcos_cap_v2", t_min=0.01),
                                  lambda: DiscreteVPSDE(betas=torch.linspace(1e-4, 0.02, 20)),
                                  lambda: DiscreteVPSDE(torch.linspace(0.99, 0.01, 30))], ids=["named", "betas", "table"])
def test_config_round_trip(make):
    sde = make()
    back = sde_from_config(sde.config())
    t = torch.rand(50, dtype=F64)
    assert type(back) is DiscreteVPSDE and back.t_min == sde.t_min
    assert torch.equal(back.alphas_cumprod, sde.alphas_cumprod) and torch.equal(back.sigma(t), sde.sigma(t))
    # A ScoreModel built for one and sampled with the other is accepted (same config).
    scoresde.model.as_model(scoresde.ScoreModel(lambda x, t: x, sde), back)


def test_python_float_tables_are_read_in_float64():
    # torch.as_tensor([0.9, ...]) would round to float32 (0.8999999762); a table given as Python
    # floats must be the float64 values themselves.
    assert DiscreteVPSDE([0.9, 0.5, 0.1]).alphas_cumprod.tolist() == [0.9, 0.5, 0.1]
    assert DiscreteVPSDE(betas=[0.1, 0.2]).alphas_cumprod.tolist() == [0.9, 0.9 * 0.8]
