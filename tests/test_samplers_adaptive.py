"""adaptive_sde (Jolicoeur-Martineau et al. 2021, Alg. 1): hand formulas, step control, per-sample
independence, NFE against tolerance, and convergence to exact mixtures.

Oracles: the first two iterations recomputed by hand with closed-form VP coefficients and the
closed-form Gaussian score; calls counted by the test's own model; exact mixture samples and the
sliced-Wasserstein floor; binomial and chi-square tolerances. CPU, float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_samplers_common import ExactGaussianScore, ExactIsoMixtureScore, mixture_2d

import scoresde
from scoresde import VESDE, VPSDE
from scoresde.metrics import sliced_wasserstein
from scoresde.random import PerSampleNoise

F64 = torch.float64


def _run(model, sde, shape, **kw):
    kw.setdefault("dtype", F64)
    return scoresde.sample(model, sde, shape, "adaptive_sde", **kw)


# ------------------------------------------------------------------------------------ by hand
def _vp_by_hand(t: float):
    """VPSDE(0.1, 20) closed forms: alpha, sigma, f, g (Song et al. 2021, App. B)."""
    beta = 0.1 + 19.9 * t
    log_alpha = -0.25 * t * t * 19.9 - 0.5 * t * 0.1
    alpha = math.exp(log_alpha)
    return alpha, math.sqrt(1 - alpha * alpha), -0.5 * beta, math.sqrt(beta)


@pytest.mark.parametrize("error_estimate", ["sde", "ode"])
@pytest.mark.parametrize("extrapolation", [True, False])
def test_first_two_iterations_by_hand(error_estimate, extrapolation):
    sde, seed = VPSDE(), 11
    mu, v = torch.tensor([0.5, -1.0], dtype=F64), 0.25
    abstol, reltol, safety, expo, h0 = 0.0078, 0.01, 0.9, 0.9, 0.01
    res = _run(ExactGaussianScore(sde, mu, v), sde, (1, 2), seeds=[seed], return_trajectory=True, denoise=False,
               error_estimate=error_estimate, extrapolation=extrapolation)

    def F(x, t):  # reverse drift f x - g^2 score with the exact score of N(mu, v I)
        a, s, f, g = _vp_by_hand(t)
        return f * x + g * g * (x - a * mu) / (a * a * v + s * s)

    noise = PerSampleNoise(torch.tensor([seed]))
    x = noise(torch.empty(1, 2, dtype=F64))[0]  # x_T (prior std 1), draw 0
    x_prev, t, h = x, 1.0, h0
    for it in range(2):
        z = noise.draw_per_sample(torch.empty(1, 2, dtype=F64), torch.tensor([1 + it]))[0]  # attempt counter
        g_t, g_n = _vp_by_hand(t)[3], _vp_by_hand(t - h)[3]
        if error_estimate == "sde":
            K1 = -h * F(x, t) + g_t * math.sqrt(h) * z
            K2 = -h * F(x + K1, t - h) + g_n * math.sqrt(h) * z
            em, ie, E = x + K1, x + (K1 + K2) / 2, (K2 - K1) / 2
            new, check = (ie, em) if extrapolation else (em, ie)
        else:  # Lamba: Heun on the drift, error of the drift, Euler-Maruyama noise at t
            mean_em = x - h * F(x, t)
            F2 = F(mean_em, t - h)
            check = x - h / 2 * (F(x, t) + F2) if extrapolation else mean_em
            new, E = check + g_t * math.sqrt(h) * z, h / 2 * (F2 - F(x, t))
        delta = torch.clamp(reltol * torch.maximum(check.abs(), x_prev.abs()), min=abstol)
        err = float(((E / delta) ** 2).mean().sqrt())
        if err <= 1:
            x, x_prev, t = new, check, t - h
        h = min(t - sde.t_min, safety * h * err**-expo)
        # Same operations in another order: agreement to ~1e-13 relative.
        torch.testing.assert_close(res.trajectory[1 + it][0], x, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------ NFE and step counts
def test_nfe_falls_as_the_tolerance_loosens():
    sde, gm = VPSDE(), mixture_2d()
    nfes = []
    for abstol, reltol in [(0.002, 0.002), (0.0078, 0.01), (0.02, 0.05), (0.1, 0.1)]:
        model = ExactIsoMixtureScore(sde, gm)
        res = _run(model, sde, (32, 2), seeds=range(32), abstol=abstol, reltol=reltol)
        # NFE is counted by the model wrapper: 2 per attempt plus the final denoise.
        assert res.nfe == model.calls == 2 * res.extra["iterations"] + 1
        nfes.append(res.nfe)
    assert all(a > b for a, b in zip(nfes[:-1], nfes[1:], strict=True)), nfes


def test_step_counts_are_per_sample_and_consistent():
    sde, gm = VPSDE(), mixture_2d()
    res = _run(ExactIsoMixtureScore(sde, gm), sde, (16, 2), seeds=range(16))
    acc, rej, its = res.extra["accepted"], res.extra["rejected"], res.extra["iterations"]
    assert acc.shape == rej.shape == (16,)
    assert int(acc.max()) > int(acc.min())  # each sample chose its own steps
    attempts = acc + rej
    assert bool((attempts <= its).all()) and int(attempts.max()) == its  # the slowest sample set the length
    # Each sample alone takes the same steps as in the batch.
    for i in (0, 5):
        alone = _run(ExactIsoMixtureScore(sde, gm), sde, (1, 2), seeds=[i])
        assert int(alone.extra["accepted"][0]) == int(acc[i]) and int(alone.extra["rejected"][0]) == int(rej[i])
        assert torch.equal(alone.x[0], res.x[i])


def test_sample_i_does_not_depend_on_batch_size():
    sde = VESDE()
    model = ExactIsoMixtureScore(sde, mixture_2d())
    seeds = list(range(1000, 1064))
    # VE (the common test runs VP at the defaults); a looser tolerance keeps it cheap.
    runs = {B: _run(model, sde, (B, 2), seeds=seeds[:B], abstol=0.02, reltol=0.05).x for B in (1, 5, 64)}
    assert torch.equal(runs[1][0], runs[5][0]) and torch.equal(runs[5], runs[64][:5])


def test_max_iterations_raises_naming_it():
    sde = VPSDE()
    with pytest.raises(RuntimeError, match=r"t_min=0.001 within max_iterations=5 \(3 samples still at t up to"):
        _run(ExactGaussianScore(sde, [0.0, 0.0], 1.0), sde, (3, 2), seeds=[1, 2, 3], max_iterations=5)


# ------------------------------------------------------------------------------------ options
def test_norms_coincide_in_one_dimension_and_order_in_more():
    sde = VPSDE()
    tol = {"abstol": 0.05, "reltol": 0.05}  # loose: fewer iterations, same comparison
    norms = ("L2_scaled", "L2", "Linf")
    one = {n: _run(ExactGaussianScore(sde, [0.5], 0.25), sde, (4, 1), seeds=range(4), norm=n, **tol) for n in norms}
    # For D = 1 all three norms are |E/delta|: identical runs.
    assert torch.equal(one["L2"].x, one["L2_scaled"].x) and torch.equal(one["Linf"].x, one["L2_scaled"].x)
    # For D > 1: L2 = sqrt(D) L2_scaled >= Linf >= L2_scaled, so L2 is the strictest and L2_scaled the loosest.
    mean, var = torch.linspace(-1, 1, 4), 0.25
    nfe = {n: _run(ExactGaussianScore(sde, mean, var), sde, (2, 4), seeds=range(2), norm=n, **tol).nfe for n in norms}
    assert nfe["L2"] > nfe["Linf"] > nfe["L2_scaled"], nfe


@pytest.mark.parametrize(
    "opts,needle",
    [
        ({"norm": "L1"}, "norm='L1' is not accepted; accepted: 'L2_scaled', 'L2', 'Linf'"),
        ({"error_estimate": "both"}, "error_estimate='both' is not accepted; accepted: 'sde', 'ode'"),
        ({"abstol": 0.0}, "abstol=0.0 is not accepted; accepted: a finite number > 0"),
        ({"reltol": -1e-3}, "reltol=-0.001 is not accepted; accepted: a finite number >= 0"),
        ({"safety": 1.5}, "safety=1.5 is not accepted; accepted: a finite number > 0 and <= 1"),
        ({"h_init": 0}, "h_init=0 is not accepted; accepted: a finite number > 0"),
        ({"max_iterations": 0}, "max_iterations=0 is not accepted; accepted: an integer >= 1"),
        ({"max_iterations": 2.5}, "max_iterations=2.5 is not accepted; accepted: an integer >= 1"),
    ],
)
def test_bad_options_raise_naming_them(opts, needle):
    sde = VPSDE()
    with pytest.raises(ValueError, match=needle):
        _run(ExactGaussianScore(sde, [0.0, 0.0], 1.0), sde, (2, 2), **opts)


def test_batch_noise_source_is_accepted():
    # A source without draw_per_sample (one torch.Generator for the batch) falls back to noise(like).
    sde = VPSDE()
    res = _run(ExactGaussianScore(sde, [0.0, 0.0], 1.0), sde, (8, 2), noise=torch.Generator().manual_seed(0))
    again = _run(ExactGaussianScore(sde, [0.0, 0.0], 1.0), sde, (8, 2), noise=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(res.x).all()) and torch.equal(res.x, again.x)
    assert int(res.extra["accepted"].min()) > 0


# ------------------------------------------------------------------------------------ distributions
N = 2000


def _spread_ratios(gm, x):
    """Per mode: mean ||x - mu_k||^2 / (D v_k) (1 for exact samples) and its sampling sd sqrt(2/(D n_k))."""
    label = gm.responsibilities(x).argmax(1)
    v = gm.covariances.diagonal(dim1=1, dim2=2)[:, 0]
    ratio = [float(((x[label == k] - gm.means[k]) ** 2).sum(1).mean() / (gm.dim * v[k])) for k in range(gm.n_components)]
    sd = [math.sqrt(2.0 / (gm.dim * float(w) * N)) for w in gm.weights]
    return ratio, sd, label


@pytest.mark.parametrize(
    "error_estimate",
    [
        "ode",
        pytest.param("sde", marks=pytest.mark.xfail(strict=True, reason=(
            "the paper's error estimate contains the step's noise z, so accept/reject selects on z: in 2-D "
            "tightening the tolerance does not remove the bias (VP spread ratios 1.2-1.4 at abstol=reltol "
            "from 0.1 to 0.002; on VE they grow from 1.4-1.7 to 2.6-2.9)"))),
    ],
)
def test_converges_to_a_2d_mixture_as_the_tolerance_tightens(error_estimate):
    sde, gm = VPSDE(), mixture_2d()
    refs = [gm.sample(N, generator=torch.Generator().manual_seed(s), dtype=F64) for s in range(1, 6)]
    floor = sum(sliced_wasserstein(refs[0], r) for r in refs[1:]) / 4
    worst = []
    for tol in (0.1, 0.02, 0.004):
        x = _run(ExactIsoMixtureScore(sde, gm), sde, (N, 2), noise=torch.Generator().manual_seed(3),
                 abstol=tol, reltol=tol, error_estimate=error_estimate).x
        ratio, sd, label = _spread_ratios(gm, x)
        worst.append(max(abs(r - 1) for r in ratio))
    # Tightening the tolerance shrinks the largest spread error (measured 1.68, 0.56, 0.28 for 'ode')...
    assert worst[0] > worst[1] > worst[2], worst
    # ...and at the tightest one the samples match the mixture: SW2 within 1.6x the floor of two exact
    # sets (their own ratio spans 0.7-1.25), mode weights within 4 binomial sd, spreads within 8 sd
    # ('ode' adds Euler-Maruyama noise with g(t): weak order 1, ~20% spread error left at tol 0.004).
    assert sliced_wasserstein(x, refs[0]) <= 1.6 * floor
    frac = torch.bincount(label, minlength=gm.n_components).to(F64) / N
    w = gm.weights
    assert bool(((frac - w).abs() <= 4 * torch.sqrt(w * (1 - w) / N)).all()), (frac, w)
    assert all(abs(r - 1) <= 8 * s for r, s in zip(ratio, sd, strict=True)), (ratio, sd)


def test_default_is_unbiased_in_high_dimension():
    # With D = 256 elements per sample the scaled L2 norm of E averages out the noise, and the
    # paper's defaults sample N(mu, diag v) correctly (measured rejection rate ~2%).
    sde, D, n = VPSDE(), 256, 64
    mean = torch.linspace(-2, 2, D)
    var = torch.linspace(0.1, 2.0, D)
    res = _run(ExactGaussianScore(sde, mean, var), sde, (n, D), seeds=range(n))
    # Per-coordinate standardised second moment, pooled over D coordinates and n samples: mean 1,
    # sd sqrt(2 / (n D)) = 0.011; 4 sd. (Denoised at t_min, the law is exact up to sigma(t_min)^2 ~ 1e-4.)
    m2 = float((((res.x - mean) ** 2) / var).mean())
    assert abs(m2 - 1) <= 4 * math.sqrt(2 / (n * D)), m2
    rejected = float(res.extra["rejected"].sum()) / float((res.extra["accepted"] + res.extra["rejected"]).sum())
    assert rejected < 0.1, rejected
