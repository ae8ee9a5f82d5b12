"""Linear SDEs against exact truths: forward simulation, hand formulas, inverses, bad inputs."""

import math

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE
from scoresde.sde import sde_from_config

SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = [type(s).__name__ for s in SDES]


def grid(sde, n=9):
    return torch.linspace(sde.t_min, sde.T, n, dtype=torch.float64)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginals_match_forward_euler_maruyama(sde):
    """Simulate dx = f x dt + g dW from t_min (exact marginal draw) and compare mean/std at later times."""
    g = torch.Generator().manual_seed(0)
    n_paths, n_steps = 20000, 4000
    x0 = 1.5
    s = sde.t_min
    t_end = sde.T if not isinstance(sde, EDMSDE) else 2.0  # EDM: keep the sigma range moderate
    ts = torch.linspace(s, t_end, n_steps + 1, dtype=torch.float64)
    a0, s0 = sde.alpha(ts[:1]), sde.sigma(ts[:1])
    x = a0 * x0 + s0 * torch.randn(n_paths, generator=g, dtype=torch.float64)
    checks = {n_steps // 4, n_steps // 2, n_steps}
    for i in range(n_steps):
        t, dt = ts[i : i + 1], ts[i + 1] - ts[i]
        x = x + sde.f(t) * x * dt + sde.g(t) * dt.sqrt() * torch.randn(n_paths, generator=g, dtype=torch.float64)
        if i + 1 in checks:
            tt = ts[i + 1 : i + 2]
            mean, std = float(sde.alpha(tt) * x0), float(sde.sigma(tt))
            # 5 standard errors of the Monte Carlo estimates, plus 1% for the O(dt) Euler bias.
            se_mean = std / math.sqrt(n_paths)
            se_std = std / math.sqrt(2 * n_paths)
            assert abs(float(x.mean()) - mean) < 5 * se_mean + 0.01 * (abs(mean) + std)
            assert abs(float(x.std()) - std) < 5 * se_std + 0.01 * std


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_closed_forms_match_derivatives_of_the_schedules(sde):
    t = grid(sde)
    # The base class derives f and g^2 by float64 autograd from log_alpha and sigma alone.
    assert torch.allclose(sde.f(t), LinearSDE.f(sde, t), rtol=1e-12, atol=1e-12)
    assert torch.allclose(sde.g2(t), LinearSDE.g2(sde, t), rtol=1e-10, atol=1e-12)
    # And lambda = log alpha - log sigma.
    assert torch.allclose(sde.lam(t), sde.log_alpha(t) - torch.log(sde.sigma(t)), rtol=1e-12, atol=1e-12)


def test_hand_formulas():
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    vp = VPSDE(0.1, 20.0)
    log_mean = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1  # Song et al. sde_lib marginal_prob
    assert torch.allclose(vp.alpha(t), torch.exp(log_mean), rtol=1e-14)
    assert torch.allclose(vp.sigma(t), torch.sqrt(1 - torch.exp(2 * log_mean)), rtol=1e-14)
    assert torch.allclose(vp.g2(t), 0.1 + t * (20 - 0.1), rtol=1e-14)
    sub = SubVPSDE(0.1, 20.0)
    assert torch.allclose(sub.sigma(t), 1 - torch.exp(2 * log_mean), rtol=1e-14)  # no sqrt (see ALGORITHMS.md)
    disc = 1 - torch.exp(-2 * 0.1 * t - (20 - 0.1) * t**2)
    assert torch.allclose(sub.g2(t), (0.1 + t * (20 - 0.1)) * disc, rtol=1e-12)
    ve = VESDE(0.01, 50.0)
    assert torch.allclose(ve.sigma(t), 0.01 * (50 / 0.01) ** t, rtol=1e-14)
    assert torch.allclose(ve.g(t), ve.sigma(t) * math.sqrt(2 * math.log(50 / 0.01)), rtol=1e-14)
    edm = EDMSDE()
    s = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    assert torch.equal(edm.sigma(s), s) and torch.equal(edm.alpha(s), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(edm.g2(s), 2 * s)
    assert vp.prior_std() == 1.0 and sub.prior_std() == 1.0 and ve.prior_std() == 50.0 and edm.prior_std() == 80.0


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_lambda_inverse(sde):
    t = grid(sde, 33)
    lam = sde.lam(t)
    assert bool((lam[1:] < lam[:-1]).all()), "lambda must decrease"
    # Analytic inverse and the generic float64 bisection both invert to near round-off.
    assert torch.allclose(sde.inverse_lambda(lam), t, rtol=1e-10, atol=1e-12 * sde.T)
    assert torch.allclose(LinearSDE.inverse_lambda(sde, lam), t, rtol=1e-10, atol=1e-12 * sde.T)
    assert torch.allclose(sde.t_from_sigma_tilde(sde.sigma_tilde(t)), t, rtol=1e-10, atol=1e-12 * sde.T)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_reverse_and_ode_drifts(sde):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = grid(sde, 5)
    f, g2 = sde.f(t)[:, None], sde.g2(t)[:, None]
    assert torch.allclose(sde.drift(x, t), f * x)
    assert torch.allclose(sde.reverse_drift(x, t, s), f * x - g2 * s)
    assert torch.allclose(sde.ode_drift(x, t, s), f * x - 0.5 * g2 * s)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_transition_composes_with_marginals(sde):
    ts = grid(sde, 6)
    s, t = ts[:-1], ts[1:]
    a, b2 = sde.transition(s, t)
    assert torch.allclose(a * sde.alpha(s), sde.alpha(t), rtol=1e-12)
    assert torch.allclose(a**2 * sde.sigma(s) ** 2 + b2, sde.sigma(t) ** 2, rtol=1e-10)


def test_discretize_is_song_smld_and_ddpm():
    # VE: f = 0, G^2 = sigma_i^2 - sigma_{i-1}^2 (SMLD); VP: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z.
    x = torch.ones(2, 1, dtype=torch.float64)
    t, tn = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    ve = VESDE()
    f, G = ve.discretize(x, t, tn)
    assert torch.allclose(f, torch.zeros_like(x))
    assert torch.allclose(G**2, (ve.sigma(t) ** 2 - ve.sigma(tn) ** 2).expand(2, 1))
    vp = VPSDE()
    beta = 1 - math.exp(-((0.1 * (0.6 - 0.55)) + 0.5 * (20 - 0.1) * (0.6**2 - 0.55**2)))  # 1 - exp(-int beta)
    f, G = vp.discretize(x, t, tn)
    assert torch.allclose(f, (math.sqrt(1 - beta) - 1) * x, rtol=1e-12)
    assert torch.allclose(G**2, torch.full_like(x, beta), rtol=1e-12)
    # Song et al.'s beta_max / N > 1 pitfall: with 10 steps our beta_i stays inside (0, 1).
    f, G = vp.discretize(x, torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64))
    assert 0 < float(G[0, 0]) ** 2 < 1


def test_user_defined_sde_from_schedule():
    # A cosine-like schedule given only by its two functions; f and g^2 are derived.
    la = lambda t: torch.log(torch.cos(0.5 * math.pi * (t + 0.008) / 1.008))
    sg = lambda t: torch.sqrt(-torch.expm1(2 * la(t)))
    sde = LinearSDE.from_schedule(la, sg, T=0.999, t_min=1e-3, name="Cosine")
    t = torch.linspace(0.01, 0.99, 11, dtype=torch.float64)
    h = 1e-6
    f_fd = (la(t + h) - la(t - h)) / (2 * h)
    assert torch.allclose(sde.f(t), f_fd, rtol=1e-6)
    sig2_fd = (sg(t + h) ** 2 - sg(t - h) ** 2) / (2 * h)
    assert torch.allclose(sde.g2(t), sig2_fd - 2 * f_fd * sg(t) ** 2, rtol=1e-5)
    assert torch.allclose(sde.inverse_lambda(sde.lam(t)), t, atol=1e-12)
    # The VP SDE written as schedules agrees with the built-in one.
    vp = VPSDE()
    custom = LinearSDE.from_schedule(vp.log_alpha, vp.sigma, T=1.0, t_min=1e-3)
    assert torch.allclose(custom.g2(t), vp.g2(t), rtol=1e-10)
    with pytest.raises(TypeError, match="user-defined"):
        custom.config()
    with pytest.raises(ValueError, match="strictly decreasing"):
        LinearSDE.from_schedule(lambda t: torch.zeros_like(t), lambda t: torch.ones_like(t))


def test_prior():
    for sde in SDES:
        z = sde.prior_sample((4000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        # std estimate of 12 000 draws: relative SE 0.65%; 4% is > 5 SE.
        assert abs(float(z.std()) / sde.prior_std() - 1) < 0.04
        std = torch.tensor(sde.prior_std(), dtype=torch.float64)
        ref = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), std).log_prob(z).sum(1)
        assert torch.allclose(sde.prior_logp(z), ref, rtol=1e-10)


def test_config_round_trip():
    for sde in SDES:
        again = sde_from_config(sde.config())
        assert type(again) is type(sde) and again.config() == sde.config()
    with pytest.raises(ValueError, match="unknown SDE class 'Evil'"):
        sde_from_config({"class": "Evil", "kwargs": {}})


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=50, sigma_max=0.01)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMSDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="beta_min must be a positive"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        SubVPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="t_min < T"):
        VPSDE(t_min=2.0)
    with pytest.raises(ValueError, match="sigma_max must be a positive finite"):
        VESDE(sigma_max=float("inf"))


def test_bad_inputs_raise():
    sde = VPSDE()
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0.001, 1\]"):
        sde.marginal(x0, torch.tensor([0.5, 0.5, 1.5]))
    with pytest.raises(ValueError, match="t must lie in"):
        sde.marginal(x0, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="batch size 3"):
        sde.marginal(x0, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="NaN"):
        sde.marginal(x0, torch.tensor([0.5, float("nan"), 0.5]))
    with pytest.raises(ValueError, match="noise must have the shape"):
        sde.perturb(x0, 0.5, torch.zeros(3, 3))
    mean, std = sde.marginal(x0 + 1, 0.5)
    assert mean.shape == (3, 2) and std.shape == (3, 1)
