"""Exact Gaussian mixtures and Gaussians: scores vs autograd, sampling, closed-form PF-ODE map."""

import math

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, Gaussian, GaussianMixture, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = [type(s).__name__ for s in SDES]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("dim", [2, 16])
def test_score_is_gradient_of_log_density(sde, dim):
    gm = GaussianMixture.random(4, dim, seed=dim)
    g = torch.Generator().manual_seed(0)
    B = 64
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(B, generator=g, dtype=torch.float64) ** 3  # many small t
    x = gm.noised(sde, 0.5).sample(B, generator=g, dtype=torch.float64).requires_grad_(True)
    lp = gm.log_prob(x, t, sde)
    (grad,) = torch.autograd.grad(lp.sum(), x)
    s = gm.score(x.detach(), t, sde)
    # Both float64; the score magnitude grows like 1/sigma^2, so compare relative to it.
    assert torch.allclose(s, grad, rtol=1e-9, atol=1e-9 * float(grad.abs().max()))


def test_log_density_matches_scipy():
    from scipy.stats import multivariate_normal

    gm = GaussianMixture.random(3, 4, seed=2)
    x = gm.sample(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sum(
        float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
        for w, m, c in zip(gm.weights, gm.means, gm.covariances, strict=True)
    )
    assert torch.allclose(gm.log_prob(x), torch.log(torch.as_tensor(ref)), rtol=1e-10)
    sde = VPSDE()
    t = 0.3
    noised = gm.noised(sde, t)
    assert torch.allclose(gm.log_prob(x, t, sde), noised.log_prob(x), rtol=1e-10)


def test_sampling_moments_and_weights():
    gm = GaussianMixture([1.0, 3.0], [[-4.0, 0.0], [4.0, 1.0]], [[0.5, 0.2], [1.0, 1.0]])
    n = 40000
    x, k = gm.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64, return_labels=True)
    # weight of component 1 is 0.75: binomial SE sqrt(.75*.25/n) = 0.0022; 5 SE.
    assert abs(float((k == 1).double().mean()) - 0.75) < 0.011
    mean, cov = gm.mean(), gm.covariance()
    se = torch.sqrt(torch.diag(cov) / n)
    assert bool(((x.mean(0) - mean).abs() < 5 * se).all())
    emp = torch.cov(x.T)
    # relative SE of a variance estimate ~ sqrt(2/n) (x kurtosis for mixtures); 5% is generous but can fail.
    assert torch.allclose(torch.diag(emp), torch.diag(cov), rtol=0.05)


def test_stability_far_from_modes():
    gm = GaussianMixture.ring(8, 4.0, 0.1)
    sde = VPSDE()
    x = torch.tensor([[40.0, -30.0], [1e3, 1e3]], dtype=torch.float64)
    for t in (1e-3, 0.5, 1.0):
        s = gm.score(x, t, sde)
        assert bool(torch.isfinite(s).all())
        assert bool(torch.isfinite(gm.log_prob(x, t, sde)).all())


def test_point_mass_and_zero_variance():
    pm = Gaussian([1.0, -2.0], cov=0.0)
    sde = VPSDE()
    x = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    t = torch.tensor([0.4], dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    expected = -(x - a * torch.tensor([1.0, -2.0], dtype=torch.float64)) / s**2
    assert torch.allclose(pm.score(x, t, sde), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        pm.log_prob(x)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_pf_ode_map_solves_the_ode(sde):
    gauss = Gaussian([0.5, -1.0, 2.0], cov=torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]]))
    g = torch.Generator().manual_seed(0)
    u = torch.tensor(sde.T, dtype=torch.float64)
    x_u = gauss.noised(sde, sde.T).sample(8, generator=g, dtype=torch.float64)
    for t in (0.7 * sde.T, 0.2 * sde.T, 3 * sde.t_min):
        t = torch.tensor(t, dtype=torch.float64)
        h = min(1e-6 * sde.T, 0.1 * float(t))  # round-off ~1e-16 |x| / h stays far below the drift
        xp, xm = gauss.pf_ode_map(x_u, u, t + h, sde), gauss.pf_ode_map(x_u, u, t - h, sde)
        xt = gauss.pf_ode_map(x_u, u, t, sde)
        deriv = (xp - xm) / (2 * h)
        drift = sde.ode_drift(xt, t.expand(8), gauss.score(xt, t, sde))
        # central difference error O(h^2 x''') ~ 1e-9 relative.
        assert torch.allclose(deriv, drift, rtol=1e-5, atol=1e-6 * float(drift.abs().max()))
    # identity and composition
    assert torch.allclose(gauss.pf_ode_map(x_u, u, u, sde), x_u, atol=1e-12)
    m = torch.tensor(0.5 * sde.T, dtype=torch.float64)
    e = torch.tensor(sde.t_min, dtype=torch.float64)
    two = gauss.pf_ode_map(gauss.pf_ode_map(x_u, u, m, sde), m, e, sde)
    assert torch.allclose(two, gauss.pf_ode_map(x_u, u, e, sde), rtol=1e-10, atol=1e-10)


def test_pf_ode_map_pushes_marginals():
    gauss = Gaussian([1.0, -1.0], cov=[2.0, 0.25])
    sde = VPSDE()
    x_T = gauss.noised(sde, 1.0).sample(50000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_e = gauss.pf_ode_map(x_T, 1.0, 1e-3, sde)
    target = gauss.noised(sde, 1e-3)
    # 50 000 samples: SE of the mean <= sqrt(2/5e4) = 0.0063; 5 SE.
    assert torch.allclose(x_e.mean(0), target.mean(), atol=0.032)
    assert torch.allclose(torch.cov(x_e.T).diag(), target.covariance().diag(), rtol=0.04)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"means must have shape \(K, D\)"):
        GaussianMixture([1.0], [1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture([1.0, 1.0], [[1.0, 2.0]], 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixture([-1.0, 2.0], [[0.0], [1.0]], 1.0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(ValueError, match="covariances must have shape"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 0.0, 0.0]])
    gm = GaussianMixture.ring(4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        gm.score(torch.zeros(3, 3), 0.5, VPSDE())
    with pytest.raises(ValueError, match="give both t and sde"):
        gm.log_prob(torch.zeros(3, 2), t=0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        gm.log_prob(torch.zeros(3, 2), 1.5, VPSDE())
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture([1.0], [[float("nan"), 0.0]], 1.0)


def test_image_shaped_inputs():
    gm = GaussianMixture.random(2, 12, seed=0)
    sde = VESDE()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    s = gm.score(x, 0.5, sde)
    assert s.shape == x.shape
    assert torch.allclose(s.reshape(5, 12), gm.score(x.reshape(5, 12), 0.5, sde))
    assert math.isfinite(float(gm.log_prob(x.reshape(5, 12)).sum()))
