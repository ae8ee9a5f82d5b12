"""Exact conditional oracles: class-conditional mixtures, the closed-form classifier, conditioning
a mixture on observed coordinates and on a linear Gaussian observation.

Every closed form is checked against an independent route: autograd of a log-density, Bayes'
rule between separately computed densities, or the textbook Gaussian conditioning formula.
All float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, GaussianMixture, SubVPSDE
from scoresde.bench.problems import mixture
from scoresde.exact import ClassConditionalMixture

F64 = torch.float64
SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = [type(s).__name__ for s in SDES]


def ccm2d() -> ClassConditionalMixture:
    return ClassConditionalMixture(mixture("gmm2d"), [0, 0, 1, 1, 2])


def ccm16d() -> ClassConditionalMixture:
    return ClassConditionalMixture(mixture("gmm16d"), [0, 0, 1, 1, 2, 2])


def _points(sde, dim, B=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(B, generator=g, dtype=F64) ** 2
    scale = (sde.alpha(t) ** 2 * 9 + sde.sigma(t) ** 2).sqrt()[:, None]
    return scale * torch.randn(B, dim, generator=g, dtype=F64), t


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("make", [ccm2d, ccm16d], ids=["2d", "16d"])
def test_conditional_score_is_gradient_of_conditional_log_density(sde, make):
    ccm = make()
    x, t = _points(sde, ccm.dim)
    for y in [0, 1, 2, None, torch.arange(x.shape[0]) % 4]:  # 3 = the null label (unconditional)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ccm.log_prob(xg, t, sde, y).sum(), xg)
        s = ccm.score(x, t, sde, y)
        # Two float64 routes (softmax-weighted precisions vs autograd through logsumexp); the score
        # grows like 1/sigma^2, so compare relative to its largest value.
        assert torch.allclose(s, grad, rtol=1e-9, atol=1e-9 * float(grad.abs().max())), y


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conditional_score_equals_submixture_score(sde):
    ccm = ccm16d()
    x, t = _points(sde, ccm.dim, seed=1)
    for c in range(ccm.num_classes):
        sub = ccm.conditional(c)
        # Same arithmetic on the sub-mixture object, different code path (masking vs selection).
        ref = sub.score(x, t, sde)
        assert torch.allclose(ccm.score(x, t, sde, c), ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    assert torch.allclose(ccm.score(x, t, sde, None), ccm.mixture.score(x, t, sde), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_classifier_bayes_rule_and_gradient(sde):
    ccm = ccm2d()
    x, t = _points(sde, ccm.dim, seed=2)
    lp = ccm.classifier_log_probs(x, t, sde)
    # A distribution over classes: logsumexp = 0 to round-off.
    assert torch.allclose(torch.logsumexp(lp, 1), torch.zeros(x.shape[0], dtype=F64), atol=1e-12)
    # Bayes: log p(y | x_t) = log p_t(x | y) + log p(y) - log p_t(x), three separate densities.
    for c in range(ccm.num_classes):
        bayes = ccm.log_prob(x, t, sde, c) + math.log(float(ccm.class_probs[c])) - ccm.mixture.log_prob(x, t, sde)
        assert torch.allclose(lp[:, c], bayes, atol=1e-9), c
    # The closed-form gradient score(x|y) - score(x) vs autograd of the classifier.
    y = torch.arange(x.shape[0]) % ccm.num_classes
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ccm.classifier(sde)(xg, t, y).sum(), xg)
    closed = ccm.classifier_grad(x, t, sde, y)
    assert torch.allclose(closed, grad, rtol=1e-8, atol=1e-9 * float(grad.abs().max()))


def test_classifier_tends_to_the_class_prior_at_T_and_the_data_classifier_at_0():
    ccm, sde = ccm2d(), VPSDE()
    x = torch.randn(16, 2, dtype=F64)
    # At T = 1 alpha is e^{-5.0} ~ 0.0067, so p(y | x_T) differs from p(y) by O(alpha |mu|) ~ 3%.
    lp = ccm.classifier_log_probs(x, 1.0, sde).exp()
    assert torch.allclose(lp, ccm.class_probs.expand_as(lp), atol=0.05)
    # t=None: the data classifier, equal to sum over a class's components of the data responsibilities.
    r = ccm.mixture.responsibilities(x)
    by_class = torch.stack([r[:, ccm.labels == c].sum(1) for c in range(3)], 1)
    assert torch.allclose(ccm.classifier_log_probs(x).exp(), by_class, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.0])
def test_cfg_score_closed_form(w):
    ccm, sde = ccm16d(), VESDE()
    x, t = _points(sde, ccm.dim, seed=3)
    y = torch.arange(x.shape[0]) % 3
    s_c, s_u = ccm.score(x, t, sde, y), ccm.score(x, t, sde, None)
    # Equivalent form score(x) + (1 + w) grad log p(y | x_t) (Ho & Salimans 2022, Eq. 6 and 8).
    alt = s_u + (1 + w) * ccm.classifier_grad(x, t, sde, y)
    assert torch.allclose(ccm.cfg_score(x, t, sde, y, w), alt, rtol=1e-10, atol=1e-10 * float(s_c.abs().max()))


def test_class_sampling_weights_binomial():
    ccm = ccm2d()
    n = 20000
    x, lab = ccm.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    frac = torch.bincount(lab, minlength=3).to(F64) / n
    p = ccm.class_probs
    # Binomial standard error sqrt(p(1-p)/n) <= 0.0035; 4 standard errors.
    assert bool(((frac - p).abs() <= 4 * torch.sqrt(p * (1 - p) / n)).all()), (frac, p)
    x1, lab1 = ccm.sample(500, y=1, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert bool((lab1 == 1).all())
    # Class 1 holds components 2 and 3: every sample is nearest (responsibility argmax) to one of them.
    assert set(ccm.mixture.responsibilities(x1).argmax(1).tolist()) <= {2, 3}


# ---------------------------------------------------------------------------------- linear observations
@pytest.mark.parametrize("noise_std", [0.3, 1e-3])
def test_linear_gaussian_posterior_is_prior_times_likelihood(noise_std):
    """log p(x | y) - log p(x) - log N(y; A x, s^2 I) is the constant -log p(y): checks weights, means, covariances."""
    gm = GaussianMixture.random(4, 5, seed=3)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 5, generator=g, dtype=F64)
    y = torch.tensor([0.5, -1.0], dtype=F64)
    post = gm.condition_linear(A, y, noise_std)
    x = post.sample(64, generator=g, dtype=F64)  # points where the posterior has mass
    loglik = -0.5 * ((y - x @ A.T) ** 2).sum(1) / noise_std**2 - 2 * math.log(noise_std) - math.log(2 * math.pi)
    d = post.log_prob(x) - gm.log_prob(x) - loglik
    # The residual sum of squares is O(1/s^2) = 1e6 at s = 1e-3: its float64 rounding is ~1e-10.
    assert float(d.max() - d.min()) < 1e-8, float(d.max() - d.min())
    # The constant is -log p(y); p(y) is the 2-D mixture sum_k w_k N(y; A mu_k, A S_k A^T + s^2 I).
    ym = GaussianMixture(gm.weights, gm.means @ A.T, A @ gm.covariances @ A.T + noise_std**2 * torch.eye(2, dtype=F64))
    assert abs(float(d.mean()) + float(ym.log_prob(y[None]))) < 1e-8


def test_condition_on_coordinates_matches_textbook_formula_and_bayes():
    gm = GaussianMixture.random(4, 4, seed=3)
    mask = torch.tensor([True, False, True, False])
    v = torch.tensor([0.3, 1.0], dtype=F64)
    c = gm.condition(mask, v)
    o, u = mask, ~mask
    for k in range(gm.n_components):  # Sigma_uu - Sigma_uo Sigma_oo^{-1} Sigma_ou and the conditional mean
        S, mu = gm.covariances[k], gm.means[k]
        Soo, Suo = S[o][:, o], S[u][:, o]
        mean = mu[u] + Suo @ torch.linalg.solve(Soo, v - mu[o])
        cov = S[u][:, u] - Suo @ torch.linalg.solve(Soo, Suo.T)
        assert torch.allclose(c.means[k], mean, atol=1e-12) and torch.allclose(c.covariances[k], cov, atol=1e-12)
    # Bayes: log p(x_u | x_o) = log p(x) - log p(x_o), with p(x_o) the marginal mixture.
    xu = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    full = torch.zeros(20, 4, dtype=F64)
    full[:, o], full[:, u] = v, xu
    ref = gm.log_prob(full) - gm.marginal(mask).log_prob(v[None])
    assert torch.allclose(c.log_prob(xu), ref, atol=1e-10)
    # The full vector form of values gives the same mixture.
    c2 = gm.condition(mask, torch.tensor([0.3, 9.0, 1.0, 9.0], dtype=F64))
    assert torch.allclose(c2.means, c.means, atol=0) and torch.allclose(c2.weights, c.weights, atol=0)


def test_noiseless_posterior_pins_the_observed_coordinates():
    gm = mixture("gmm2d")
    post = gm.condition_linear([[1.0, 0.0]], [0.5])
    # Observed coordinate: mean exactly 0.5, variance 0 (to round-off); the exact noised score exists for t > 0.
    assert torch.allclose(post.means[:, 0], torch.full((5,), 0.5, dtype=F64), atol=1e-14)
    assert float(post.covariances[:, 0, :].abs().max()) < 1e-14
    s = post.score(torch.randn(8, 2, dtype=F64), 0.01, VPSDE())
    assert bool(torch.isfinite(s).all())


def test_conditioning_errors():
    gm = mixture("gmm2d")
    with pytest.raises(ValueError, match=r"A must have shape \(m, 2\)"):
        gm.condition_linear(torch.ones(1, 3), [0.0])
    with pytest.raises(ValueError, match="y must have 1 elements"):
        gm.condition_linear(torch.ones(1, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        gm.condition_linear(torch.ones(1, 2), [0.0], float("nan"))
    with pytest.raises(ValueError, match="singular for component"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 0.0]]]).condition_linear([[0.0, 1.0]], [0.0])
    with pytest.raises(ValueError, match=r"observed as a mask must have shape \(2,\)"):
        gm.condition(torch.tensor([True, False, True]), [0.0, 0.0])
    with pytest.raises(ValueError, match="at least one coordinate unobserved"):
        gm.condition(torch.tensor([True, True]), [0.0, 0.0])
    with pytest.raises(ValueError, match="values must have 1"):
        gm.condition(torch.tensor([True, False]), [0.0, 1.0, 2.0])


def test_class_conditional_errors():
    gm = mixture("gmm2d")
    with pytest.raises(ValueError, match="labels must be K = 5"):
        ClassConditionalMixture(gm, [0, 1])
    with pytest.raises(ValueError, match=r"classes \[1\] have none"):
        ClassConditionalMixture(gm, [0, 0, 2, 2, 2])
    ccm = ccm2d()
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"out-of-range labels \[4\]"):
        ccm.score(x, 0.5, VPSDE(), torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"out-of-range labels \[-1"):
        ccm.score(x, 0.5, VPSDE(), -1)
    with pytest.raises(ValueError, match="integer class labels"):
        ccm.score(x, 0.5, VPSDE(), torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ccm.score(x, 0.5, VPSDE(), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\); got out-of-range labels \[3\]"):
        ccm.conditional(3)  # the null label is not a class
    with pytest.raises(ValueError, match="w must be a finite number"):
        ccm.cfg_score(x, 0.5, VPSDE(), 0, float("nan"))
