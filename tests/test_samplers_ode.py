"""Probability-flow ODE samplers (torchdiffeq and scipy) against the closed-form PF-ODE map."""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, Gaussian, GaussianMixture, SubVPSDE
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers import get, sample
from scoresde.samplers.ode import FIXED_METHODS, ODE_METHOD_ORDER, ODE_METHODS, SCIPY_METHODS

F64 = torch.float64
GAUSS = Gaussian([0.5, -1.0, 2.0], [0.25, 1.0, 2.25])  # N(mu, diag s^2), s = 0.5, 1, 1.5


def _x_T(sde, B=16, seed=0):
    return torch.randn(B, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * sde.prior_std()


def _error(sde, sampler, steps=None, **opts):
    xT = _x_T(sde)
    exact = GAUSS.pf_ode_map(xT, sde.T, sde.t_min, sde)
    r = sample(GAUSS.model(sde), sde, xT.shape, sampler, steps, x_T=xT, dtype=F64, denoise=False, **opts)
    return float((r.x - exact).abs().max()), r


# Stages of each Butcher tableau in torchdiffeq (euler 1, explicit midpoint 2, Heun's 2nd/3rd order 2/3,
# the 3/8-rule RK4 4): the NFE per step, counted by hand.
STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["VPSDE", "SubVPSDE"])
@pytest.mark.parametrize("method", sorted(ODE_METHOD_ORDER))
def test_fixed_methods_converge_with_their_order(sde, method):
    steps = [8, 16, 32, 64, 128]
    errs = []
    for n in steps:
        err, r = _error(sde, "ode", n, method=method)
        assert r.nfe == STAGES[method] * n  # one method step per interval of ts, NFE counted by the model
        errs.append(err)
    # Fit log-error vs log-steps over the points above the float64 floor (1e-11 here: the state is O(1)-O(3)
    # and each step loses a few ulps).
    pts = [(math.log(n), math.log(e)) for n, e in zip(steps, errs, strict=True) if e > 1e-11]
    assert len(pts) >= 3, errs
    xs, ys = zip(*pts, strict=True)
    xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = -sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sum((x - xm) ** 2 for x in xs)
    # Measured (VP, sub-VP): euler 1.07, 1.09; midpoint 2.00, 1.94; heun2 2.00, 2.08; heun3 2.92, 3.09; rk4 3.88, 4.18;
    # 0.25 leaves room for the pre-asymptotic bend at 8 steps, not for a wrong order (1 apart).
    assert abs(slope - ODE_METHOD_ORDER[method]) < 0.25, (slope, errs)


def test_dopri5_tight_tolerance_matches_the_closed_form():
    for sde in (VPSDE(), VESDE()):
        err, r = _error(sde, "ode", rtol=1e-8, atol=1e-8)
        # Global error of an error-controlled solve is a small multiple of the tolerance (measured 1.1e-8
        # on VP, 1.8e-8 on VE); 1e-6 is the target of the brief, far from both 1e-8 and the defaults' 1e-4.
        assert err < 1e-6, (type(sde).__name__, err)


@pytest.mark.parametrize("sampler", ["ode", "ode_scipy"])
def test_default_tolerances_match_within_their_size(sampler):
    for sde in (VPSDE(), VESDE()):
        err, r = _error(sde, sampler)
        # rtol = atol = 1e-5 (Song et al.): measured global errors 1.7e-5 .. 1.2e-4 on |x| <= 3 states.
        # 1e-3 = 100 x tol bounds the accumulation over the solve; a first-order mistake would be ~1e-1.
        assert err < 1e-3, (sampler, type(sde).__name__, err)
        assert r.nfe > 20  # adaptive: the counter saw every evaluation (RK45/dopri5 need >= 6 per step)


def test_scipy_tight_tolerance_and_methods():
    sde = VPSDE()
    for method, tol in (("RK45", 1e-9), ("DOP853", 1e-9), ("RK23", 1e-7)):
        err, _ = _error(sde, "ode_scipy", method=method, rtol=tol, atol=tol)
        # Global error a small multiple of tol (measured 6e-9 for RK45 at 1e-8); 100 x tol.
        assert err < 100 * tol, (method, err)


def test_adaptive_solve_never_evaluates_below_t_min():
    """torchdiffeq steps past the end time and interpolates; we make it land on ts[-1] (step_t)."""
    sde = VPSDE()  # below t = 0 the VP sigma(t) is NaN: an overshoot would raise
    seen = []

    def score_fn(x, t):
        seen.append(float(t.min()))
        return GAUSS.score(x, t, sde)

    for dtype in (F64, torch.float32):
        seen.clear()
        sample(score_fn, sde, (8, 3), "ode", dtype=dtype, denoise=False, generator=torch.Generator().manual_seed(0),
               solver_options={"step_t": torch.tensor([0.5])})  # a user's step_t is kept, t_min added
        # float32 states: torchdiffeq casts t to the state dtype (1e-3 -> 1.00000005e-3 in float32).
        assert min(seen) >= sde.t_min * (1 - 1e-7)


def test_fixed_method_trajectory_is_on_the_grid():
    sde = VPSDE()
    xT = _x_T(sde, B=4)
    r = sample(GAUSS.model(sde), sde, xT.shape, "ode", 64, x_T=xT, dtype=F64, denoise=False, method="rk4",
               return_trajectory=True)
    assert r.trajectory.shape == (65, 4, 3) and torch.equal(r.trajectory[-1], r.x)
    exact = torch.stack([GAUSS.pf_ode_map(xT, sde.T, t, sde) for t in r.ts.tolist()])
    # rk4 with 64 steps: global error ~1e-7 (see the slope test); state k must be the solution at ts[k].
    assert float((r.trajectory - exact).abs().max()) < 1e-5


def test_point_mass_euler_is_visibly_inexact():
    """Point mass: the PF-ODE is linear, x_t = alpha_t c + (sigma_t/sigma_s)(x_s - alpha_s c); Euler is not exact."""
    c = torch.tensor([1.0, -0.5], dtype=F64)
    pm = Gaussian(c, 0.0)
    sde = VPSDE()
    xT = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a_T, s_T = float(sde.alpha(torch.tensor(sde.T, dtype=F64))), float(sde.sigma(torch.tensor(sde.T, dtype=F64)))
    a_0, s_0 = float(sde.alpha(torch.tensor(sde.t_min, dtype=F64))), float(sde.sigma(torch.tensor(sde.t_min, dtype=F64)))
    exact = a_0 * c + (s_0 / s_T) * (xT - a_T * c)  # by hand
    assert torch.allclose(pm.pf_ode_map(xT, sde.T, sde.t_min, sde), exact, rtol=1e-12, atol=1e-12)
    errs = []
    for n in (20, 80):
        r = sample(pm.model(sde), sde, xT.shape, "ode", n, x_T=xT, dtype=F64, denoise=False, method="euler")
        errs.append(float((r.x - exact).abs().max()))
    # Visible: Euler in t freezes sigma'/sigma ~ 1/(2t) over each step (measured 2.7e-2 at 20 steps and
    # 1.1e-2 at 80, ~1e13 x float64 round-off; slower than first order because that rate is stiff near t_min).
    assert errs[1] > 1e-3 and errs[0] > 1.5 * errs[1], errs


def test_ode_samples_a_mixture():
    """With the exact score of an unequal-weight 2-D ring, the PF-ODE sample matches the data."""
    gm = GaussianMixture.ring(4, 4.0, 0.5, weights=[1.0, 2.0, 3.0, 4.0])
    sde, n = VPSDE(), 1000
    ref = gm.sample(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    floor = torch.tensor([sliced_wasserstein(ref, gm.sample(n, generator=torch.Generator().manual_seed(100 + j),
                                                             dtype=F64), p=1) for j in range(8)])
    sw = {}
    for name, opts, steps in (("ode", {"method": "euler"}, 3), ("ode", {"method": "rk4"}, 25), ("ode", {}, None),
                              ("ode_scipy", {}, None)):
        r = sample(gm.model(sde), sde, (n, 2), name, steps, dtype=F64, generator=torch.Generator().manual_seed(0),
                   **opts)
        sw[name + str(opts)] = sliced_wasserstein(r.x, ref, p=1)
        if steps != 3:
            # Binomial mode weights: 4 standard errors + 0.01 for solver bias (labels by nearest mode are exact here).
            frac = torch.bincount(gm.responsibilities(r.x).argmax(1), minlength=4).to(F64) / n
            w = gm.weights
            assert bool(((frac - w).abs() <= 4 * torch.sqrt(w * (1 - w) / n) + 0.01).all()), (name, frac)
    # SW1 within 4 sd of the exact-vs-exact floor (8 pairs); 3 Euler steps is clearly off it.
    bound = float(floor.mean() + 4 * floor.std())
    assert all(v < bound for k, v in sw.items() if "euler" not in k), (sw, bound)
    assert sw["ode{'method': 'euler'}"] > bound, (sw, bound)


def test_16d_mixture_ode():
    gm = GaussianMixture.random(4, 16, seed=0)
    sde, n = VPSDE(), 1000
    ref = gm.sample(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    floor = torch.tensor([sliced_wasserstein(ref, gm.sample(n, generator=torch.Generator().manual_seed(100 + j),
                                                             dtype=F64), p=1) for j in range(8)])
    r = sample(gm.model(sde), sde, (n, 16), "ode", dtype=F64, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(r.x, ref, p=1) < float(floor.mean() + 4 * floor.std())
    frac = torch.bincount(gm.responsibilities(r.x).argmax(1), minlength=4).to(F64) / n
    w = gm.weights
    # 4 binomial standard errors + 0.01 (modes in 16-D overlap a little; the labels are argmax responsibilities).
    assert bool(((frac - w).abs() <= 4 * torch.sqrt(w * (1 - w) / n) + 0.01).all()), (frac, w)


@pytest.mark.parametrize("sampler", ["ode", "ode_scipy"])
@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(sampler, shape, dtype):
    D = math.prod(shape[1:])
    g = Gaussian(torch.linspace(-1, 1, D, dtype=F64), torch.linspace(0.2, 1.0, D, dtype=F64))
    sde = VPSDE()
    r = sample(g.model(sde), sde, shape, sampler, dtype=dtype, seeds=range(shape[0]))
    assert r.x.shape == shape and r.x.dtype == dtype and bool(torch.isfinite(r.x).all())


def test_scipy_failure_raises_with_scipy_message():
    sde = VPSDE()
    c = 1 / math.pi

    def jumps(x, t):  # finite but huge: the score jumps to 1e20 below t = c, so RK45's step size -> 0 there
        return torch.ones_like(x) * torch.where(t < c, 1e20, 1.0).reshape(-1, 1)

    with pytest.raises(RuntimeError) as err:
        sample(jumps, sde, (2, 2), "ode_scipy", generator=torch.Generator().manual_seed(0))
    msg = str(err.value)
    assert "solve_ivp(method='RK45') failed" in msg and "Required step size is less than spacing" in msg
    assert "last evaluation at t=0.3183" in msg  # where it stalled: c = 1/pi


@pytest.mark.parametrize("sampler,opts,needle", [
    ("ode", {"method": "rk45"}, "method='rk45' is not accepted; accepted: 'dopri8', 'dopri5'"),
    ("ode_scipy", {"method": "dopri5"}, "method='dopri5' is not accepted; accepted: 'RK45'"),
    ("ode", {"rtol": 0.0}, "rtol=0.0 is not accepted; accepted: a finite number > 0"),
    ("ode_scipy", {"atol": -1.0}, "atol=-1.0 is not accepted; accepted: a finite number > 0"),
    ("ode", {"method": "rk4", "solver_options": {"step_size": 0.1}}, "solver_options ['step_size'] are not accepted"),
])
def test_bad_options_raise(sampler, opts, needle):
    with pytest.raises(ValueError) as err:
        sample(GAUSS.model(VPSDE()), VPSDE(), (2, 3), sampler, **opts)
    assert needle in str(err.value)


def test_method_lists_and_metadata():
    assert set(ODE_METHOD_ORDER) <= set(FIXED_METHODS) <= set(ODE_METHODS)
    assert "dopri5" in ODE_METHODS and "dopri5" not in FIXED_METHODS
    assert SCIPY_METHODS[0] == "RK45"
    for name in ("ode", "ode_scipy"):
        spec = get(name)
        assert spec.kind == "ode" and not spec.stochastic and spec.order is None and not spec.fixed_grid
        assert spec.options["rtol"] == spec.options["atol"] == 1e-5  # Song et al. (torchdiffeq's own: 1e-7 / 1e-9)
    assert get("ode").options["method"] == "dopri5" and get("ode_scipy").options["method"] == "RK45"
