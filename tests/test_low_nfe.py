"""Low-NFE samplers (ipndm, lms, deis, restart, unipc variants), time grids and the final step (issue 12).

Oracles: the closed-form probability-flow map of Gaussians (scoresde.exact), scipy's adaptive
quadrature for the multistep weights (k-diffusion computes lms's weights that way), brute force
for the dynamic programme, the exact marginals of a Gaussian at restart points, and algebraic
identities between samplers. The registry-driven tests (test_samplers_common) also cover every
new sampler. CPU, float64.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, Gaussian, GaussianMixture, SubVPSDE
from scoresde.cli import main as cli_main
from scoresde.grids import (
    PUBLISHED,
    TimeGrid,
    _dp,
    load_schedule,
    optimize_schedule,
    published_grid,
    save_schedule,
    steps_for_nfe,
)
from scoresde.samplers import get, sample
from scoresde.samplers.final import final_step
from scoresde.samplers.multistep import IPNDM_WEIGHTS, adams_weights
from scoresde.samplers.restart import restart_plan
from scoresde.schedules import make_grid

F64 = torch.float64
SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
SDE_IDS = [type(s).__name__ for s in SDES]
GAUSS = Gaussian(torch.tensor([0.5, -1.0, 2.0]), cov=torch.tensor([0.25, 1.0, 0.04]))


def _x_T(sde, batch, dim, seed=0):
    return torch.randn(batch, dim, dtype=F64, generator=torch.Generator().manual_seed(seed)) * sde.prior_std()


def _run(model, sde, name, steps, x_T, **kw):
    kw.setdefault("denoise", False)
    return sample(model, sde, tuple(x_T.shape), name, steps, x_T=x_T, dtype=F64, **kw)


def _err(res, x_T, sde, g=GAUSS):
    return float((res.x - g.pf_ode_map(x_T, res.ts[0], res.ts[-1], sde)).abs().max())


def _slope(steps, errs):
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0]


# ------------------------------------------------------------------------------------ multistep weights
def _lagrange_np(nodes, j, u):
    return np.prod([(u - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j], axis=0)


def test_lms_weights_are_k_diffusions_quadrature():
    from scipy.integrate import quad

    s = make_grid(EDMSDE(), 7, "karras")  # EDM: t = sigma~, a strongly graded grid
    C = adams_weights(s, 4, kind="lms")
    for i in range(7):
        p = min(4, i + 1)
        nodes = s[i - p + 1:i + 1].flip(0).numpy()
        for j in range(p):
            ref = quad(lambda u, nodes=nodes, j=j: _lagrange_np(nodes, j, u), float(s[i]), float(s[i + 1]),
                       epsabs=1e-13, epsrel=1e-13)[0]
            # Gauss-Legendre is exact for these cubics: a few ulps of the weights (up to ~1e3 x the step).
            assert abs(float(C[i, j]) - ref) <= 1e-12 * max(1.0, abs(ref)), (i, j, float(C[i, j]), ref)
        assert float(C[i, p:].abs().sum()) == 0.0  # warm start: no weight beyond the history


def test_ipndm_weights_are_fixed_and_equal_lms_on_a_uniform_grid():
    s = torch.linspace(5.0, 1.0, 9, dtype=F64)
    C_fixed, C_lms = adams_weights(s, 4, kind="ipndm"), adams_weights(s, 4, kind="lms")
    h = float(s[1] - s[0])
    for i in range(8):
        p = min(4, i + 1)
        assert torch.equal(C_fixed[i, :p], h * torch.tensor(IPNDM_WEIGHTS[p], dtype=F64))
    # On equal steps the variable-step weights are the fixed ones (float64 round-off of the quadrature).
    torch.testing.assert_close(C_lms, C_fixed, rtol=0, atol=1e-13)


def test_deis_weights_match_adaptive_quadrature_on_vp_and_lms_on_edm():
    from scipy.integrate import quad

    sde = VPSDE()
    ts = make_grid(sde, 6, "karras")
    C = adams_weights(sde.sigma_tilde(ts), 3, kind="deis", t=ts, sde=sde)

    def dsig(tau):  # d sigma~ / d tau by float64 autograd
        t = torch.tensor(tau, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(sde.sigma_tilde(t), t)
        return float(g)

    for i in range(6):
        p = min(3, i + 1)
        nodes = ts[i - p + 1:i + 1].flip(0).numpy()
        for j in range(p):
            ref = quad(lambda u, nodes=nodes, j=j: _lagrange_np(nodes, j, u) * dsig(u), float(ts[i]), float(ts[i + 1]),
                       epsabs=1e-12, epsrel=1e-12, limit=200)[0]
            # 24-point Gauss-Legendre in log sigma~ vs scipy's adaptive rule in t: both ~1e-12.
            assert abs(float(C[i, j]) - ref) <= 1e-9 * max(1.0, abs(ref)), (i, j, float(C[i, j]), ref)
    # On the EDM SDE t = sigma~, so tAB (polynomials in t) is rhoAB = lms.
    edm = EDMSDE()
    te = make_grid(edm, 8, "karras")
    torch.testing.assert_close(adams_weights(te, 4, kind="deis", t=te, sde=edm), adams_weights(te, 4, kind="lms"),
                               rtol=1e-11, atol=1e-11)  # quadrature in log sigma~ vs in sigma~: round-off only


@pytest.mark.parametrize("kind", ["ipndm", "lms", "deis"])
def test_adams_weights_on_grids_shorter_than_the_order(kind):
    sde = VPSDE()
    for steps in (1, 2, 3):
        ts = make_grid(sde, steps, "karras")
        C = adams_weights(sde.sigma_tilde(ts), 4, kind=kind, t=ts, sde=sde)
        assert C.shape == (steps, 4) and float(C[0, 1:].abs().sum()) == 0.0  # warm start: Euler first


def test_adams_weights_reject_a_repeated_level():
    s = torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="repeated noise levels"):
        adams_weights(s, 3, kind="lms")


def test_adams_rows_integrate_polynomials_ipndm_only_on_uniform_steps():
    # Row i of an order-4 rule integrates f over [s_i, s_{i+1}] from f(s_i), ..., f(s_{i-3}).
    # lms: exact for cubics on any grid; ipndm: exact for cubics on uniform steps only, and
    # already wrong for a quadratic on graded steps (the O(h) weight mismatch that makes it
    # second order on Karras grids).
    k = torch.linspace(0.0, 1.0, 9, dtype=F64)
    uniform, graded = 5.0 - 4.0 * k, (5.0 ** (1 / 7) + k * (1.0 - 5.0 ** (1 / 7))) ** 7
    cubic = (lambda u: 1 + u - 2 * u**2 + 0.5 * u**3, lambda a, b: (b - a) + (b**2 - a**2) / 2 - 2 * (b**3 - a**3) / 3
             + (b**4 - a**4) / 8)
    quad = (lambda u: u**2, lambda a, b: (b**3 - a**3) / 3)

    def row_error(s, kind, fF):
        f, F = fF
        C = adams_weights(s, 4, kind=kind)
        i = 6
        got = sum(float(C[i, j]) * float(f(s[i - j])) for j in range(4))
        return abs(got - float(F(s[i], s[i + 1])))

    assert row_error(uniform, "ipndm", cubic) < 1e-12  # float64 round-off of ~10 terms of size ~10
    assert row_error(uniform, "lms", cubic) < 1e-12
    assert row_error(graded, "lms", cubic) < 1e-12
    assert row_error(graded, "ipndm", quad) > 1e-4  # measured 3e-3: a visible consistency error


@pytest.mark.parametrize("name,order", [("lms", 2), ("lms", 3), ("deis", 2), ("deis", 4), ("ipndm", 1)])
def test_lower_orders_converge_at_their_order(name, order):
    # The registry test checks the default order; the option sets it (Karras grids on VP).
    sde = VPSDE()
    x_T = _x_T(sde, 16, 3, seed=3)
    steps = [64, 128, 256]
    errs = [_err(_run(GAUSS.model(sde), sde, name, n, x_T, order=order), x_T, sde) for n in steps]
    expected = 2 if name == "ipndm" and order > 2 else order
    assert abs(_slope(steps, errs) - expected) < 0.3, errs  # local slopes measured within 0.15


def test_order_options_are_checked():
    sde = VPSDE()
    for name in ("ipndm", "lms", "deis"):
        with pytest.raises(ValueError, match=rf"sampler '{name}': order=5 is not accepted; accepted: 1, 2, 3, 4"):
            sample(GAUSS.model(sde), sde, (2, 3), name, 4, order=5)


# ------------------------------------------------------------------------------------ unipc variants
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_order_3_on_every_sde(sde, variant):
    # Point mass: exact to round-off at any step count.
    point = Gaussian(torch.tensor([1.0, -2.0, 0.5]), cov=0.0)
    x_T = _x_T(sde, 8, 3)
    for steps in (2, 5, 17):
        r = _run(point.model(sde), sde, "unipc", steps, x_T, order=3, variant=variant)
        # a few float64 operations on |x| <= ~4 prior_std
        assert _err(r, x_T, sde, point) < 1e-12 * max(1.0, sde.prior_std()), steps
    # Gaussian data: nominal order 4, capped at 3 by the UniP-1/UniC-1 first step (see
    # test_samplers_fast); the measured slopes over 64-256 steps are 3.1-3.8 on the four SDEs.
    steps = [64, 128, 256]
    errs = [_err(_run(GAUSS.model(sde), sde, "unipc", n, x_T, order=3, variant=variant), x_T, sde) for n in steps]
    assert _slope(steps, errs) > 2.75, errs


# ------------------------------------------------------------------------------------ restart
def test_restart_states_at_the_restart_point_have_the_exact_marginal():
    # 16-D Gaussian, accurate ODE parts (200 Heun steps, 40 per back-solve): after K = 3 restarts
    # the state at the restart point must be distributed as p_t there, N(alpha mu, alpha^2 v + sigma^2).
    sde = VPSDE()
    g = torch.Generator().manual_seed(5)
    mu, var = torch.randn(16, generator=g, dtype=F64), 0.05 + torch.rand(16, generator=g, dtype=F64)
    gauss = Gaussian(mu, var)
    n = 4000
    res = sample(gauss.model(sde), sde, (n, 16), "restart", 200, K=3, restart_steps=40, s_min=0.5, s_max=2.0,
                 seeds=range(n), dtype=F64, denoise=False, return_trajectory=True)
    (idx,) = restart_plan(sde, res.ts, [(40, 3, 0.5, 2.0)])
    t = res.ts[idx]
    x = res.trajectory[idx]
    a, s = sde.alpha(t), sde.sigma(t)
    m_exact, v_exact = a * mu, a * a * var + s * s
    # Sampling error: mean sd sqrt(v/n), variance sd v sqrt(2/n); 4.5 sd over 16 dims each
    # (the Heun discretisation error at these step counts is below 1e-4, far smaller).
    z_mean = (x.mean(0) - m_exact) / torch.sqrt(v_exact / n)
    z_var = (x.var(0) - v_exact) / (v_exact * math.sqrt(2.0 / n))
    assert float(z_mean.abs().max()) < 4.5, z_mean
    assert float(z_var.abs().max()) < 4.5, z_var
    # The restarts changed the state (they are not a no-op): compare with K = 0 (plain Heun).
    plain = sample(gauss.model(sde), sde, (n, 16), "heun", 200, seeds=range(n), dtype=F64, denoise=False,
                   return_trajectory=True)
    assert float((plain.trajectory[idx] - x).abs().max()) > 0.1
    assert res.nfe == 2 * 200 + 2 * 40 * 3


def test_restart_nfe_intervals_and_plain_heun_without_restarts():
    sde, gm = VPSDE(), GaussianMixture.ring(4, 2.0, 0.3)
    m = gm.model(sde)
    a = sample(m, sde, (5, 2), "restart", 9, K=0, seeds=range(5), dtype=F64)
    b = sample(m, sde, (5, 2), "heun", 9, seeds=range(5), dtype=F64)
    assert torch.equal(a.x, b.x)  # K = 0: the main pass is EDM's Heun loop itself
    r = sample(m, sde, (5, 2), "restart", 12, intervals=[(2, 2, 0.06, 0.3), (3, 1, 1.0, 5.0)], seeds=range(5))
    assert r.nfe == 2 * 12 + 2 * 2 * 2 + 2 * 3 * 1 + 1  # + denoise
    with pytest.raises(ValueError, match="s_max <= sigma~"):
        sample(m, sde, (2, 2), "restart", 9, s_min=0.06, s_max=500.0, seeds=range(2))
    with pytest.raises(ValueError, match="same grid point"):
        sample(m, sde, (2, 2), "restart", 9, intervals=[(2, 1, 0.06, 0.3), (2, 1, 0.061, 0.5)], seeds=range(2))
    with pytest.raises(ValueError, match="s_min < s_max"):
        sample(m, sde, (2, 2), "restart", 9, s_min=0.3, s_max=0.1, seeds=range(2))
    with pytest.raises(ValueError, match="K=-1"):
        sample(m, sde, (2, 2), "restart", 9, K=-1, seeds=range(2))


# ------------------------------------------------------------------------------------ ald's default
def test_ald_default_eps_is_ncsns_ratio_and_runs_at_small_sigma_min():
    sde = VESDE(sigma_min=0.002, sigma_max=50.0)  # EDM / k-diffusion range: 2e-5 would be refused
    gm = GaussianMixture.ring(4, 2.0, 0.3)
    ts = make_grid(sde, 3, "logsnr")
    eps = 0.2 * float(sde.sigma(ts[-1:])[0]) ** 2
    a = sample(gm.model(sde), sde, (4, 2), "ald", 3, n_steps_each=3, seeds=range(4), dtype=F64)
    b = sample(gm.model(sde), sde, (4, 2), "ald", 3, n_steps_each=3, seeds=range(4), dtype=F64, eps=eps)
    assert torch.equal(a.x, b.x) and bool(torch.isfinite(a.x).all())
    with pytest.raises(ValueError, match="must be below 2 sigma_L"):
        sample(gm.model(sde), sde, (4, 2), "ald", 3, eps=2e-5, seeds=range(4))


# ------------------------------------------------------------------------------------ final step
def test_ode_final_step_keeps_the_variance_tweedie_shrinks_it():
    # 1-D Gaussian N(0, v): from x_t with sigma~ = s, the exact PF map to sigma~ = 0 scales x~ by
    # sqrt(v/(v+s^2)); Tweedie by v/(v+s^2); the ode step by 1 - s^2/(2(v+s^2)).
    sde = VPSDE()
    v = 0.05
    g = Gaussian(torch.zeros(1), torch.tensor([v]))
    t = torch.tensor(sde.t_min, dtype=F64)
    a, s = float(sde.alpha(t)), float(sde.sigma_tilde(t))
    x = torch.linspace(-1, 1, 5, dtype=F64)[:, None]
    exact = x / a * math.sqrt(v / (v + s * s))
    tw, od = (final_step(g.model(sde), x, t, rule) for rule in ("tweedie", "ode"))
    e_tw, e_od = float((tw - exact).abs().max()), float((od - exact).abs().max())
    r = s * s / v
    assert e_tw > 0.4 * r * float(x.abs().max() / a)  # O(s^2/v): the over-shrinking
    assert e_od < 0.2 * r * r * float(x.abs().max() / a)  # O(s^4/v^2): (1/8) r^2 to leading order
    torch.testing.assert_close(final_step(g.model(sde), x, t, "none"), x / a, rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="rule='mean'"):
        final_step(g.model(sde), x, t, "mean")


# ------------------------------------------------------------------------------------ grids
def test_time_grid_is_an_explicit_schedule_and_round_trips_through_json(tmp_path):
    sde = VPSDE()
    ts = make_grid(sde, 7, "karras")
    grid = TimeGrid(ts, {"note": "test"})
    assert grid.steps == 7 and torch.equal(grid.ts, ts)
    m = GaussianMixture.ring(4, 2.0, 0.3).model(sde)
    a = sample(m, sde, (3, 2), "ipndm", schedule=grid, seeds=range(3), dtype=F64)
    b = sample(m, sde, (3, 2), "ipndm", schedule=ts, seeds=range(3), dtype=F64)
    assert torch.equal(a.x, b.x) and a.nfe == 8
    path = tmp_path / "g.json"
    save_schedule(path, grid, sde=sde)
    back = load_schedule(path, sde)
    assert torch.equal(back.ts, ts) and back.info["note"] == "test"  # shortest-repr floats: bit-identical
    assert json.loads(path.read_text())["format"] == "scoresde-schedule"
    with pytest.raises(ValueError, match="was made for the SDE"):
        load_schedule(path, VESDE())
    path.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a scoresde schedule"):
        load_schedule(path)
    bad = TimeGrid([1.0, 0.5, 0.5, 0.001])
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(m, sde, (3, 2), "ipndm", schedule=bad, seeds=range(3))


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_published_grids_keep_their_shape_on_every_sde(sde):
    for name, levels in PUBLISHED.items():
        g = published_grid(name, sde)
        assert g.steps == 10 and g[0] == sde.T and g[-1] == sde.t_min
        assert all(b < a for a, b in zip(g, g[1:], strict=False))
        # The shape: the fraction of the log sigma~ range at each step is the published one.
        ls = torch.log(sde.sigma_tilde(g.ts))
        frac = (ls[0] - ls) / (ls[0] - ls[-1])
        pub = torch.log(torch.tensor(levels, dtype=F64))
        torch.testing.assert_close(frac, (pub[0] - pub) / (pub[0] - pub[-1]), rtol=0, atol=1e-9)  # bisection-free inverses
    assert published_grid("ays_sd15", sde, 4).steps == 4


def test_published_grid_without_rescaling_is_the_published_levels():
    sde = VPSDE()  # sigma~ from 0.0105 to 152 contains SD 1.5's 0.029 .. 14.6
    g = published_grid("ays_sd15", sde, rescale=False)
    torch.testing.assert_close(sde.sigma_tilde(g.ts), torch.tensor(PUBLISHED["ays_sd15"], dtype=F64), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="outside"):
        published_grid("ays_svd", sde, rescale=False)  # sigma~ 700 is above the VP range


def test_dynamic_programme_finds_the_cheapest_path():
    import itertools

    rng = np.random.default_rng(0)
    M, steps = 9, 3
    cost = rng.random((M, M))
    best = min((sum(cost[a, b] for a, b in zip((0,) + mid, mid + (M - 1,), strict=True)), (0,) + mid + (M - 1,))
               for mid in itertools.combinations(range(1, M - 1), steps - 1))
    path = _dp(cost, steps, 1.0)
    assert tuple(path) == best[1]
    with pytest.raises(ValueError, match="at least"):
        _dp(cost[:3, :3], 3, 1.0)


def test_steps_for_nfe_counts_the_network_calls():
    sde, m = VPSDE(), GaussianMixture.ring(4, 2.0, 0.3).model(VPSDE())
    assert steps_for_nfe(m, sde, "ipndm", 10, shape=(2,)) == 9  # 1 per step + denoise
    assert steps_for_nfe(m, sde, "heun", 10, shape=(2,)) == 4  # 2 per step: 9 NFE
    assert steps_for_nfe(m, sde, "restart", 20, shape=(2,)) == 5  # 2 per step + 8 restart + 1
    assert steps_for_nfe(m, sde, "ipndm", 10, shape=(2,), denoise=False) == 10
    with pytest.raises(ValueError, match="nfe=1 is below"):
        steps_for_nfe(m, sde, "heun", 1, shape=(2,))


def test_optimised_grid_beats_the_default_on_held_out_samples():
    sde = VPSDE()
    gm = GaussianMixture([0.3, 0.7], torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([0.1, 0.3]))
    grid = optimize_schedule(gm.model(sde), sde, "ipndm", 6, options={"order": 3}, shape=(2,), n_samples=64,
                             n_validate=128, candidates=40, max_sweeps=4)
    info = grid.info
    assert grid.steps == 5 and grid[0] == sde.T and grid[-1] == sde.t_min
    assert info["fit_error"]["final"] <= min(info["fit"]["start_errors"].values())  # the search only accepts gains
    # Held-out x_T (another seed): measured mean 0.169 -> 0.135 and median 0.098 -> 0.049 of the
    # pathwise error; a grid that only fit its 64 samples would not keep gains of 10% and 30%.
    v = info["validation_error"]
    assert v["final"]["mean"] < 0.9 * v["default"]["mean"], v
    assert v["final"]["median"] < 0.7 * v["default"]["median"], v
    assert info["cost"]["network_batch_calls"] > 0 and info["cost"]["sample_evaluations"] > 0
    with pytest.raises(ValueError, match="stochastic"):
        optimize_schedule(gm.model(sde), sde, "euler_maruyama", 10, shape=(2,))
    with pytest.raises(ValueError, match="objective='max'"):
        optimize_schedule(gm.model(sde), sde, "ipndm", 10, shape=(2,), objective="max")


def test_schedule_command_writes_loadable_grids(tmp_path, capsys):
    out = tmp_path / "ays.json"
    assert cli_main(["schedule", "--problem", "gmm2d-vp", "--published", "ays_sd15", "--steps", "6", "--out", str(out)]) == 0
    g = load_schedule(out, VPSDE())
    assert g.steps == 6 and g.info["source"] == "ays_sd15" and g.info["problem"] == "gmm2d-vp"
    out2 = tmp_path / "opt.json"
    assert cli_main(["schedule", "--problem", "gmm2d-vp", "--sampler", "ipndm(order=2)", "--nfe", "5", "--out", str(out2),
                     "--n-samples", "16", "--n-validate", "0", "--candidates", "12", "--no-refine"]) == 0
    g2 = load_schedule(out2, VPSDE())
    assert g2.steps == 4 and g2.info["sampler"] == "ipndm" and g2.info["options"] == {"order": 2}
    assert "cost" in capsys.readouterr().out
    assert cli_main(["schedule", "--problem", "gmm2d-vp", "--out", str(out)]) == 2  # no mode given
    assert get("ipndm").default_schedule == "karras"
