"""PF-ODE log-likelihood against closed-form Gaussian densities; Hutchinson statistics; bits/dim,
dequantisation and the integer-pixel refusal; the likelihood command's evaluation logic."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, Gaussian, ScoreModel, SubVPSDE
from scoresde.likelihood import EXACT_MAX_DIM, bits_per_dim, dequantize, log_likelihood

SDES = [VPSDE(), VESDE(), SubVPSDE(), EDMSDE()]
IDS = [type(s).__name__ for s in SDES]
D = 3


def _gaussian(full: bool = True) -> Gaussian:
    g = torch.Generator().manual_seed(1)
    if not full:
        return Gaussian(torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64), torch.tensor([0.3, 1.5, 0.8], dtype=torch.float64))
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = 0.5 * A @ A.T / D + 0.2 * torch.eye(D, dtype=torch.float64)
    return Gaussian(torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64), cov)


def _exact_ode_value(gm, sde, x, z, t0):
    """What the PF-ODE with the exact score must return: log p_t0(x) + [prior_logp(z) - log p_T(z)].

    Along the exact flow, integral of div F = log p_t0(x) - log p_T(z) with the TRUE marginals; the
    method then adds the SDE's prior at z instead of the true p_T(z) (the prior mismatch)."""
    return gm.log_prob(x, t0, sde) - gm.log_prob(z, sde.T, sde) + sde.prior_logp(z)


def _integrated_jacobian(gm, sde, t0):
    """M = int_{t0}^{T} dF/dx dt for Gaussian data: U diag(m) U^T, m_j = 1/2 log((a_T^2 l_j + s_T^2)/(a_0^2 l_j + s_0^2)),
    since dF/dx = f I + g^2/2 (a^2 Sigma + s^2 I)^-1 = 1/2 d/dt log(a^2 l + s^2) in the eigenbasis."""
    lam, U = torch.linalg.eigh(gm.covariances[0])
    t = torch.tensor([t0, sde.T], dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    m = 0.5 * torch.log((a[1] ** 2 * lam + s[1] ** 2) / (a[0] ** 2 * lam + s[0] ** 2))
    return (U * m) @ U.T


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_exact_divergence_matches_closed_form(sde):
    gm = _gaussian()
    x = gm.sample(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = log_likelihood(gm.model(sde), sde, x)
    ref = _exact_ode_value(gm, sde, x, r.z, sde.t_min)
    # dopri5 at rtol = atol = 1e-5 on a state of size ~1-50: measured <= 1.4e-4 nats/dim; 1e-3 is the target.
    assert (r.logp - ref).abs().max() / D < 1e-3
    # The flow map itself is closed form; relative 1e-3 of |z| (~1 for VP, ~50 for VE/EDM) is loose for 1e-5 tolerances.
    z_exact = gm.pf_ode_map(x, sde.t_min, sde.T, sde)
    assert (r.z - z_exact).abs().max() < 1e-3 * float(z_exact.abs().max())
    assert torch.allclose(r.logp, r.prior_logp + r.delta_logp, rtol=0, atol=1e-12)  # log p = prior + delta
    assert r.stderr is None and r.bpd is None and r.logp.dtype == torch.float64 and r.logp.shape == (12,)


def test_t_min_bias_and_prior_mismatch_bound_the_gap_to_the_data_density():
    sde, gm = VPSDE(), _gaussian()
    x = gm.sample(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = log_likelihood(gm.model(sde), sde, x)
    t_min_bias = gm.log_prob(x, sde.t_min, sde) - gm.log_prob(x)  # closed form, p_{t_min} vs p_0
    prior_gap = sde.prior_logp(r.z) - gm.log_prob(r.z, sde.T, sde)  # closed form, N(0, I) vs true p_T
    # sigma(t_min)^2 = 1e-4 against covariance eigenvalues >= 0.2: ~1e-3 nats/dim or less (measured 6.5e-4).
    assert t_min_bias.abs().max() / D < 1e-3
    # alpha(T) = 6.6e-3 shrinks a mean of size ~1 and a z of size ~3 to a ~1e-2 nats/dim gap (measured 6.5e-3).
    assert prior_gap.abs().max() / D < 2e-2
    # Nothing else separates the result from the data density than these two and the solver (1e-3 nats/dim).
    assert ((r.logp - gm.log_prob(x)).abs() <= t_min_bias.abs() + prior_gap.abs() + 1e-3 * D).all()
    # From t_min = 0 the t_min bias vanishes: the result is the data density up to the prior gap and the solver.
    r0 = log_likelihood(gm.model(sde), sde, x, t_min=0.0)
    assert (r0.logp - (gm.log_prob(x) + sde.prior_logp(r0.z) - gm.log_prob(r0.z, sde.T, sde))).abs().max() / D < 1e-3


def test_hutchinson_rademacher_is_exact_for_a_diagonal_jacobian():
    # Axis-aligned Gaussian: dF/dx is diagonal, so v^T M v = tr M for every sign vector v.
    sde, gm = VESDE(), _gaussian(full=False)
    x = gm.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = log_likelihood(gm.model(sde), sde, x, estimator="hutchinson", n_probes=4, generator=torch.Generator().manual_seed(3))
    ref = _exact_ode_value(gm, sde, x, r.z, sde.t_min)
    assert (r.logp - ref).abs().max() / D < 1e-3  # solver error only, as for the exact divergence
    assert r.stderr.max() < 1e-3  # the probes agree up to solver error (which differs per channel)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_error_within_its_standard_error(probe):
    sde, gm = VPSDE(), _gaussian(full=True)
    B, K = 16, 32
    x = gm.sample(B, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = log_likelihood(gm.model(sde), sde, x, estimator="hutchinson", n_probes=K, probe=probe,
                       generator=torch.Generator().manual_seed(5))
    ref = _exact_ode_value(gm, sde, x, r.z, sde.t_min)
    # With v fixed per solve, delta = v^T M v: Var = 2 |M|_F^2 (Gaussian) or 2 sum_{i!=j} M_ij^2 (Rademacher).
    M = _integrated_jacobian(gm, sde, sde.t_min)
    var, kurt = _quadratic_form_moments(M, probe)
    hand = 2 * (M**2).sum() - (2 * (torch.diag(M) ** 2).sum() if probe == "rademacher" else 0.0)
    assert abs(var - float(hand)) < 1e-12 * float(hand)  # enumeration / cumulants agree with the formula
    se_theory = math.sqrt(var / K)
    zscore = (r.logp - ref) / se_theory
    # 16 independent z ~ N(0, 1) (mean of 32 probes): max |z| < 4.5 fails with probability ~1e-4.
    assert zscore.abs().max() < 4.5
    # Each sample's error is within 5 reported standard errors.
    assert ((r.logp - ref).abs() < 5 * r.stderr).all()
    # The reported SE estimates the true one: the sample variance of K draws has relative variance
    # 2/(K-1) + kurt/K (kurt = excess kurtosis of v^T M v), averaged over B samples; allow 4 of its s.d.
    rel_sd = math.sqrt((2 / (K - 1) + kurt / K) / B)
    assert abs(float(r.stderr.pow(2).mean()) / se_theory**2 - 1) < 4 * rel_sd


def _quadratic_form_moments(M, probe):
    """Variance and excess kurtosis of v^T M v for Gaussian (closed form: cumulants of chi^2_1 in
    the eigenbasis) or Rademacher probes (exact enumeration of the 2^D sign vectors)."""
    if probe == "gaussian":
        m = torch.linalg.eigvalsh(M)
        return float(2 * (m**2).sum()), float(12 * (m**4).sum() / (m**2).sum() ** 2)
    Dm = M.shape[0]
    signs = torch.tensor([[1.0 if (i >> j) & 1 else -1.0 for j in range(Dm)] for i in range(2**Dm)], dtype=torch.float64)
    q = torch.einsum("ni,ij,nj->n", signs, M, signs)
    c = q - q.mean()
    return float(c.pow(2).mean()), float(c.pow(4).mean() / c.pow(2).mean() ** 2 - 3)


def test_probes_are_per_sample():
    sde, gm = VPSDE(), _gaussian()
    x = gm.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seeds = torch.arange(100, 108)
    full = log_likelihood(gm.model(sde), sde, x, estimator="hutchinson", n_probes=2, seeds=seeds)
    part = log_likelihood(gm.model(sde), sde, x[:3], estimator="hutchinson", n_probes=2, seeds=seeds[:3])
    # Same probes -> same values up to the solver (its steps are shared by the batch); different probes
    # would differ by the Hutchinson spread (~0.5 nats here, see the test above).
    assert torch.allclose(full.logp[:3], part.logp, rtol=0, atol=1e-3)
    other = log_likelihood(gm.model(sde), sde, x[:3], estimator="hutchinson", n_probes=2, seeds=seeds[:3] + 50)
    assert (other.logp - part.logp).abs().max() > 1e-2


def test_nfe_is_the_counted_number_of_batch_calls_and_float32_nets_work():
    sde, gm = VPSDE(), _gaussian()
    calls = []

    class Net(torch.nn.Module):  # a float32 score network
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            calls.append(x.shape[0])
            return self.w * gm.score(x.double(), t.double(), sde).float()

    model = ScoreModel(Net(), sde, "score")
    x = gm.sample(5, generator=torch.Generator().manual_seed(0))  # float32 data
    r = log_likelihood(model, sde, x)
    assert r.nfe == len(calls) == model.nfe and all(b == 5 for b in calls)
    assert model.net.w.grad is None  # no gradients leak into the parameters
    ref = _exact_ode_value(gm, sde, x.double(), r.z, sde.t_min)
    # A float32 network: score rounding ~1e-7 relative is far below the solver's 1e-5 tolerances.
    assert (r.logp - ref).abs().max() / D < 1e-3
    calls.clear()
    r = log_likelihood(model, sde, x, estimator="hutchinson", n_probes=3)
    assert r.nfe == len(calls) and r.stderr.shape == (5,)  # one network call per evaluation for all 3 probes


def test_errors_name_the_argument():
    sde, gm = VPSDE(), _gaussian()
    x = torch.zeros(2, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="estimator='bogus'"):
        log_likelihood(gm.model(sde), sde, x, estimator="bogus")
    with pytest.raises(ValueError, match="probe="):
        log_likelihood(gm.model(sde), sde, x, estimator="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="method='rk4' is a fixed-step solver"):
        log_likelihood(gm.model(sde), sde, x, method="rk4")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(gm.model(sde), sde, x, estimator="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(gm.model(sde), sde, x, t_min=1.0)
    big = torch.zeros(2, EXACT_MAX_DIM + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="estimator='hutchinson'"):
        log_likelihood(lambda x, t: -x, sde, big)


def test_fixed_step_solver_with_options():
    sde, gm = VPSDE(), _gaussian()
    x = gm.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = log_likelihood(gm.model(sde), sde, x, method="rk4", options={"step_size": 1e-2})
    ref = _exact_ode_value(gm, sde, x, r.z, sde.t_min)
    # RK4 with h = 0.01 on the stiff start of VP (beta up to 20): ~1e-4 nats/dim measured; order-4 error budget.
    assert (r.logp - ref).abs().max() / D < 1e-2
    assert r.nfe == 4 * 100  # 4 evaluations per RK4 step, (T - t_min)/h rounded up to 100 steps


# ------------------------------------------------------------------ bits/dim and dequantisation
def test_bits_per_dim_by_hand():
    # logp = -10 nats, D = 4, 8-bit data in [-1, 1]: 10 / (4 ln 2) + 8 - log2(2) = 3.6067 + 7.
    assert abs(float(bits_per_dim(-10.0, 4)) - (10 / (4 * math.log(2)) + 7)) < 1e-12
    # A uniform density on [-1, 1]^D (logp = -D ln 2) is exactly `bits` bits/dim; on [0, 1]^D (logp = 0) too.
    assert abs(float(bits_per_dim(-5 * math.log(2), 5, (-1, 1), 8)) - 8) < 1e-12
    assert abs(float(bits_per_dim(0.0, 5, (0, 1), 8)) - 8) < 1e-12
    assert abs(float(bits_per_dim(0.0, 5, (0, 1), 5)) - 5) < 1e-12
    assert abs(float(bits_per_dim(-math.log(2), 1, None)) - 1) < 1e-12  # continuous: -logp / (D ln 2)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(0.0, 1, (1, -1))


def test_dequantize_range_and_offset():
    x = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    y, off = dequantize(x, 8, torch.Generator().manual_seed(0))
    lo = x.double() / 128 - 1  # cell of pixel k in [-1, 1]: [k/128 - 1, (k+1)/128 - 1)
    assert ((y.double() >= lo - 1e-7) & (y.double() < lo + 1 / 128 + 1e-7)).all()  # float32 rounding
    assert torch.allclose(off, torch.full((4,), 64 * (math.log(2) - 8 * math.log(2)), dtype=torch.float64))
    y01, off01 = dequantize(x, 8, torch.Generator().manual_seed(0), data_range=(0, 1))
    assert torch.allclose(y01.double(), (y.double() + 1) / 2, atol=1e-6)  # same noise, other range
    assert torch.allclose(off01, torch.full((4,), -64 * 8 * math.log(2), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        dequantize(torch.full((1, 2), 256), 8)
    with pytest.raises(ValueError, match="integer pixel values"):
        dequantize(torch.full((1, 2), 0.5), 8)


def test_dequantisation_bound_against_the_exact_discrete_likelihood():
    # 2-bit pixels in [-1, 1] under a 1-D Gaussian density: P(k) = Phi(b_k) - Phi(a_k) over the cell.
    # Jensen: E_u[log p(y)] + offset <= log P(k), and close for a density smooth on the cell scale.
    mu, s = 0.1, 0.7
    k = torch.arange(4).repeat_interleave(4000)[:, None]
    y, off = dequantize(k, 2, torch.Generator().manual_seed(0), dtype=torch.float64)
    logp = -0.5 * ((y[:, 0] - mu) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
    bound = (logp + off).reshape(4, 4000).mean(1)
    edges = torch.linspace(-1, 1, 5, dtype=torch.float64)
    cdf = torch.special.ndtr((edges - mu) / s)
    exact = torch.log(cdf[1:] - cdf[:-1])
    # MC s.e. of the mean over 4000 draws: sd(log p over a cell) <= 0.6 -> 0.01; 4 s.e. slack.
    assert (bound <= exact + 0.04).all()
    assert (exact - bound < 0.15).all()  # the Jensen gap is the variance of log p over a cell / 2 (<= 0.15 here)


def test_integer_pixels_are_refused():
    sde = VPSDE()
    score = lambda x, t: -x  # N(0, I) data under VP: exact at every t
    g = torch.Generator().manual_seed(0)
    pix = torch.randint(0, 256, (2, 1, 4, 4), generator=g)
    with pytest.raises(ValueError, match="integer dtype"):
        log_likelihood(score, sde, pix)
    with pytest.raises(ValueError, match="1/255 pixel lattice"):
        log_likelihood(score, sde, pix.float() / 255)  # [0, 1] scaling
    with pytest.raises(ValueError, match="1/255 pixel lattice"):
        log_likelihood(score, sde, pix.float() / 127.5 - 1)  # [-1, 1] scaling
    digits = torch.randint(0, 17, (32, 1, 8, 8), generator=g).float() / 8 - 1  # 17 levels: not on 1/255
    with pytest.raises(ValueError, match="distinct values"):
        log_likelihood(score, sde, digits, estimator="hutchinson")
    # dequantize=False trusts the caller; dequantize=8 dequantises integer pixels here.
    r = log_likelihood(score, sde, pix.float() / 127.5 - 1, dequantize=False)
    assert r.bpd is not None and torch.isfinite(r.logp).all()


def test_dequantize_in_log_likelihood_gives_bits_per_dim():
    sde = VPSDE()
    score = lambda x, t: -x  # N(0, I) under VP: the PF-ODE is the identity, log p = log N(x; 0, I) exactly
    pix = torch.randint(0, 256, (6, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    r = log_likelihood(score, sde, pix, dequantize=8, generator=torch.Generator().manual_seed(1))
    assert ((r.x + 1) * 128 - pix).min() >= 0 and ((r.x + 1) * 128 - pix).max() < 1  # in the pixel's cell
    exact = -0.5 * r.x.reshape(6, -1).pow(2).sum(1) - 2 * math.log(2 * math.pi)
    assert (r.logp - exact).abs().max() < 1e-6  # identity flow, no prior mismatch: solver round-off only
    assert torch.allclose(r.bpd, -r.logp / (4 * math.log(2)) + 7, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ the likelihood command
def _affine_problem():
    """Data-space Gaussian, an elementwise-affine scaler, and the exact model-space score."""
    from scoresde.data import Scaler

    sde = VPSDE()
    loc, scale = np.array([2.0, -1.0, 0.5]), np.array([3.0, 0.5, 2.0])
    gm_model = _gaussian()
    gm_data = Gaussian(gm_model.means[0] * torch.as_tensor(scale) + torch.as_tensor(loc),
                       gm_model.covariances[0] * torch.as_tensor(np.outer(scale, scale)))
    return sde, Scaler(loc, scale), gm_model, gm_data


def test_command_evaluate_adds_the_scaler_log_jacobian():
    from scoresde.commands.likelihood import evaluate

    sde, scaler, gm_model, gm_data = _affine_problem()
    x = gm_data.sample(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = evaluate(gm_model.model(sde), sde, scaler, x.numpy(), batch_size=4)
    y = scaler.to_model(x)
    logj = -math.log(3.0 * 0.5 * 2.0)  # log|det d to_model/dx| = -sum log scale
    assert abs(res["log_jacobian"] - logj) < 1e-12
    # Change of variables, closed form: log p_data(x) = log p_model(y) + log|J|.
    assert torch.allclose(gm_data.log_prob(x), gm_model.log_prob(y) + logj, atol=1e-10)
    r = log_likelihood(gm_model.model(sde), sde, y)
    ref = _exact_ode_value(gm_model, sde, y, r.z, sde.t_min) + logj
    lp = torch.tensor(res["logp"], dtype=torch.float64)
    assert (lp - ref).abs().max() / D < 1e-3  # same solver target as above; batches of 4 share steps
    assert abs(res["mean_logp"] - float(lp.mean())) < 1e-12
    assert abs(res["stderr_logp"] - float(lp.std()) / math.sqrt(10)) < 1e-12
    assert res["estimator"] == "exact" and res["n"] == 10 and res["dim"] == D and "mean_bpd" not in res


def test_command_run_with_a_checkpoint_loader(tmp_path, monkeypatch, capsys):
    from scoresde.cli import main
    from scoresde.data import Scaler

    sde = VPSDE()
    score = lambda x, t: -x  # N(0, I) in model space under VP: log p exact, no prior gap
    fake = types.ModuleType("scoresde.checkpoint")
    fake.load_model = lambda path: (ScoreModel(score, sde, "score"), sde, Scaler(127.5, 127.5))
    monkeypatch.setitem(sys.modules, "scoresde.checkpoint", fake)
    pix = np.random.default_rng(0).integers(0, 256, size=(6, 1, 2, 2)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=pix)
    out = tmp_path / "r.json"
    rc = main(["likelihood", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "d.npz"), "--estimator",
               "hutchinson", "--n-probes", "2", "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "log p / dim" in printed
    res = json.loads(out.read_text())
    D4 = 4
    assert res["dequantized"] and res["n"] == 6 and res["dim"] == D4
    assert abs(res["log_jacobian"] - D4 * math.log(1 / 127.5)) < 1e-12
    assert abs(res["mean_bpd"] - (-res["mean_logp"] / (D4 * math.log(2)))) < 1e-12
    # Each value is log p_data(x + u) for some u in [0, 1)^D: bracketed by the exact density's range on the cell.
    lp = torch.tensor(res["logp"], dtype=torch.float64)
    v = torch.as_tensor(pix, dtype=torch.float64).reshape(6, -1)
    y_lo, y_hi = (v - 127.5) / 127.5, (v + 1 - 127.5) / 127.5
    worst = -0.5 * torch.maximum(y_lo**2, y_hi**2).sum(1) - 2 * math.log(2 * math.pi) + res["log_jacobian"]
    best = -0.5 * torch.where(y_lo * y_hi < 0, 0.0, torch.minimum(y_lo**2, y_hi**2)).sum(1) - 2 * math.log(2 * math.pi)
    best = best + res["log_jacobian"]
    assert ((lp >= worst - 1e-5) & (lp <= best + 1e-5)).all()  # identity flow: round-off slack only


def test_command_refuses_float_pixels(tmp_path):
    from scoresde.commands.likelihood import evaluate

    sde = VPSDE()
    pix = np.random.default_rng(0).integers(0, 256, size=(2, 1, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="integer dtype"):
        evaluate(lambda x, t: -x, sde, None, pix)


def test_command_end_to_end_with_a_saved_checkpoint(tmp_path, capsys):
    from scoresde.checkpoint import load_model, save_checkpoint
    from scoresde.cli import main
    from scoresde.data import Scaler
    from scoresde.nets import MLP

    torch.manual_seed(0)
    sde, net = VPSDE(), MLP(dim=2, hidden=16, depth=1, emb_dim=8)
    scaler = Scaler([1.0, -2.0], [0.5, 4.0])
    save_checkpoint(tmp_path / "ck", ScoreModel(net, sde, "eps"), ema=net, config={"scaler": scaler.config()})
    x = np.random.default_rng(0).normal(size=(7, 2)) * [0.5, 4.0] + [1.0, -2.0]
    np.save(tmp_path / "d.npy", x)
    rc = main(["likelihood", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "d.npy"),
               "--out", str(tmp_path / "r.json")])
    assert rc == 0 and "log p / dim" in capsys.readouterr().out
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["estimator"] == "exact" and res["nfe"] > 0
    # The same computation by hand: map to model space, PF-ODE likelihood, add -sum log scale.
    model, sde2, scaler2 = load_model(tmp_path / "ck")
    r = log_likelihood(model, sde2, scaler2.to_model(torch.as_tensor(x)))
    expect = r.logp - math.log(0.5 * 4.0)
    assert abs(res["log_jacobian"] + math.log(2.0)) < 1e-12
    assert torch.allclose(torch.tensor(res["logp"], dtype=torch.float64), expect, rtol=0, atol=1e-9)  # same solve
