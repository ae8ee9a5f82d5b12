"""Every registered sampler, checked through the front door and driven by the registry.

The cases are collected at import time from ``scoresde.samplers.available()``, so a newly
registered sampler is tested without editing this file; what is checked follows each spec's
metadata (kind, order, stochastic, fixed_grid, exact_for_point_mass, default_steps, needs).

Oracles: closed-form scores of Gaussians and isotropic Gaussian mixtures (written out below and
checked against scoresde.exact), the closed-form probability-flow map (Gaussian.pf_ode_map),
exact mixture samples and the sliced-Wasserstein floor of two exact sample sets, binomial
tolerances on mode weights, and calls counted by a wrapper written here. CPU, float64 where it
matters.

Known failures of individual samplers are listed in KNOWN_FAILURES with the measured numbers and
marked ``xfail(strict=True)``: the suite stays green and the failure stays visible (an
unexpected pass fails the run, so a fixed sampler must be taken off the list).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import scoresde
from scoresde import EDMSDE, VESDE, VPSDE, Gaussian, GaussianMixture, NonFiniteError, SubVPSDE
from scoresde._utils import append_dims
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers import registry
from scoresde.schedules import SCHEDULES, make_grid

F64 = torch.float64
EPS = torch.finfo(F64).eps
SPECS = {s.name: s for s in scoresde.samplers.specs()}  # collected at import time
NAMES = sorted(SPECS)
SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
SDE_IDS = [type(s).__name__ for s in SDES]

# (test, sampler) -> why it fails: measured failures of the sampler's defaults, kept visible.
_ADAPTIVE_Z_SELECTION = (
    "adaptive_sde's error estimate (the paper's, E = (K2 - K1)/2) contains the step's own noise z, so "
    "accept/reject selects on z; with few dimensions per sample the per-sample norm does not average "
    "this out and the law is biased (see docs/samplers.md; error_estimate='ode' converges). "
)
_BATCH_ERROR_NORM = (
    "the adaptive ODE solver controls its steps with one error norm over the whole batch state, so "
    "every sample's steps depend on its batch; measured max difference 2.4e-5 (batch 1 vs 7, float64)"
)
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    ("batch_independence", "ode"): "torchdiffeq dopri5: " + _BATCH_ERROR_NORM,
    ("batch_independence", "ode_scipy"): "scipy solve_ivp on the flattened batch: " + _BATCH_ERROR_NORM,
    ("order", "dpmpp_3m"): (
        "declared order 2 at its defaults (asymptotically: its first step, and its last under lower_order_final, "
        "are first order, local error O(h^2)), but 64..1024 steps are pre-asymptotic: on VPSDE/logsnr the errors "
        "are 7.4e-5, 3.6e-6, 2.2e-7, 8.0e-8, 2.2e-8 (local slopes 4.4, 4.0, 1.46, 1.86: the third-order term "
        "still dominates, then the capped terms cancel and approach slope 2 from below); first_step='midpoint' "
        "with lower_order_final=False is declared and measured order 3 (the variant's case passes)"
    ),
    ("order", "dpmpp_3m[solver_type=taylor]"): "the same first/last-step cap as the defaults: local slopes 1.46, 1.86 "
                                               "at 256-1024 steps (declared 2)",
    ("order", "dpmpp_3m[first_step=midpoint,lower_order_final=False]"): (
        "declared order 3, measured 4.01 on VPSDE/logsnr at 64-1024 steps: on uniform-lambda grids the leading "
        "error term cancels (superconvergence); on karras grids the slope is 3 (test_samplers_fast)"),
    ("distribution_2d", "pc"): (
        "pc's default norm='per_sample' Langevin step is biased in low dimension (documented by its "
        "author): SW2 1.42 vs floor 0.20, mode weights off by up to 12 sd, spread ratios 5-28"
    ),
    ("distribution_2d", "adaptive_sde"): _ADAPTIVE_Z_SELECTION + "2-D: spread ratios 1.27-1.42 (tolerance 0.14-0.28)",
    ("distribution_16d", "adaptive_sde"): _ADAPTIVE_Z_SELECTION + "16-D: spread ratios 1.06-1.09 (tolerance 0.045-0.07)",
}


def _cases(test: str, names=NAMES):
    """pytest params over sampler names, marking the known failures of ``test``."""
    out = []
    for n in names:
        reason = KNOWN_FAILURES.get((test, n))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(n, marks=marks, id=n))
    return out


def _supports(spec, sde) -> bool:
    try:
        spec.check_sde(sde)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------ exact models
class ExactGaussianScore:
    """Closed-form score of N(mean, diag(var)) under ``sde``: -(x - alpha mean) / (alpha^2 var + sigma^2).

    A plain ``score_fn(x, t)`` (the front door lifts it into a ScoreModel). Counts its calls and,
    when asked, returns NaN at call number ``nan_at_call`` and records that call's largest t.
    Elementwise arithmetic only, so each sample's score does not depend on its batch. ``mean``
    and ``var`` have D elements; x is (B, *D) with D elements per sample.
    """

    def __init__(self, sde, mean, var, nan_at_call: int | None = None):
        self.sde = sde
        self.mean = torch.as_tensor(mean, dtype=F64).flatten()
        self.var = torch.as_tensor(var, dtype=F64).flatten().expand_as(self.mean)
        self.nan_at_call = nan_at_call
        self.nan_t: float | None = None
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        t64 = t.to(F64)
        a = append_dims(self.sde.alpha(t64), x.ndim)
        s = append_dims(self.sde.sigma(t64), x.ndim)
        per_sample = (1,) + tuple(x.shape[1:])
        mu, v = self.mean.reshape(per_sample), self.var.reshape(per_sample)
        score = -(x.to(F64) - a * mu) / (a * a * v + s * s)
        if self.calls == self.nan_at_call:
            self.nan_t = float(t64.max())
            score = torch.full_like(score, math.nan)
        return score.to(x.dtype)


class ExactIsoMixtureScore:
    """Closed-form score of an isotropic Gaussian mixture sum_k w_k N(mu_k, v_k I) under ``sde``.

    score = sum_k r_k (alpha mu_k - x) / (alpha^2 v_k + sigma^2), r_k the responsibilities.
    """

    def __init__(self, sde, gm: GaussianMixture):
        self.sde = sde
        self.logw = gm.weights.log()
        self.mu = gm.means  # (K, D)
        self.v = gm.covariances.diagonal(dim1=1, dim2=2)[:, 0]  # (K,), isotropic
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        t64 = t.to(F64)
        x64 = x.reshape(x.shape[0], -1).to(F64)
        a, s = self.sde.alpha(t64)[:, None], self.sde.sigma(t64)[:, None]
        var = a * a * self.v[None] + s * s  # (B, K)
        r = x64[:, None, :] - a[:, :, None] * self.mu[None]  # (B, K, D)
        D = x64.shape[1]
        logn = self.logw[None] - 0.5 * (r * r).sum(-1) / var - 0.5 * D * torch.log(var)
        resp = torch.softmax(logn, dim=1)
        score = -(resp[:, :, None] * r / var[:, :, None]).sum(1)
        return score.reshape(x.shape).to(x.dtype)


def mixture_2d() -> GaussianMixture:
    """Four well-separated isotropic modes with unequal weights and widths."""
    means = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])
    return GaussianMixture([0.1, 0.2, 0.3, 0.4], means, torch.tensor([0.16, 0.16, 0.09, 0.25]))


def mixture_16d() -> GaussianMixture:
    g = torch.Generator().manual_seed(3)
    means = 2.0 * torch.randn(3, 16, generator=g, dtype=F64)
    return GaussianMixture([0.2, 0.3, 0.5], means, torch.tensor([0.3, 0.5, 0.2]))


def test_closed_form_scores_match_scoresde_exact():
    # The models above are test oracles: they must equal the library's exact scores (float64;
    # 1e-10 relative covers the different order of operations, at any t incl. near t_min).
    for sde in SDES:
        t = torch.linspace(sde.t_min, sde.T, 7, dtype=F64)
        x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 2
        g = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.25, 1.0, 2.25]))
        ours = ExactGaussianScore(sde, [0.5, -1.0, 2.0], [0.25, 1.0, 2.25])(x, t)
        torch.testing.assert_close(ours, g.score(x, t, sde), rtol=1e-10, atol=0)
        for gm in (mixture_2d(), mixture_16d()):
            xx = torch.randn(7, gm.dim, dtype=F64, generator=torch.Generator().manual_seed(1)) * 3
            torch.testing.assert_close(ExactIsoMixtureScore(sde, gm)(xx, t), gm.score(xx, t, sde), rtol=1e-10, atol=1e-12)


def _gaussian(sde, dim=2, **kw) -> ExactGaussianScore:
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0])[:dim] if dim <= 4 else torch.linspace(-1, 1, dim)
    return ExactGaussianScore(sde, mean, 0.25, **kw)


def _sample(model, sde, shape, name, steps=None, **kw):
    return scoresde.sample(model, sde, shape, name, steps, **kw)


# ------------------------------------------------------------------------------------ NFE
@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("name", _cases("nfe"))
def test_reported_nfe_equals_counted_calls(name, denoise):
    spec, sde = SPECS[name], VPSDE()
    model = _gaussian(sde)
    steps = 6
    res = _sample(model, sde, (3, 2), name, steps, denoise=denoise, noise=torch.Generator().manual_seed(0), dtype=F64)
    assert model.calls > 0
    assert res.nfe == model.calls, (res.nfe, model.calls)
    declared = spec.traits().nfe(steps)
    if declared is not None:  # a declared NFE is a promise
        assert res.nfe == declared + int(denoise), (res.nfe, declared)


# ------------------------------------------------------------------------------------ per-sample randomness
@pytest.mark.parametrize("name", _cases("batch_independence"))
def test_sample_i_does_not_depend_on_batch_size(name):
    sde = VPSDE()
    seeds = list(range(100, 1100))
    steps = 3  # few steps: the 1000-sample run must stay cheap
    runs = {}
    for B in (1, 7, 1000):
        runs[B] = _sample(_gaussian(sde), sde, (B, 2), name, steps, seeds=seeds[:B], dtype=F64).x
    # Bit-identical: per-sample seeds and elementwise models leave nothing batch-dependent.
    assert torch.equal(runs[1][0], runs[7][0]), f"max diff {float((runs[1][0] - runs[7][0]).abs().max()):.3g}"
    assert torch.equal(runs[7], runs[1000][:7]), f"max diff {float((runs[7] - runs[1000][:7]).abs().max()):.3g}"


@pytest.mark.parametrize("name", _cases("seeds"))
def test_same_seed_same_samples_different_seed_different(name):
    spec, sde = SPECS[name], VPSDE()

    def run(seed, x_T=None):
        return _sample(_gaussian(sde), sde, (4, 2), name, 4, generator=torch.Generator().manual_seed(seed),
                       x_T=x_T, dtype=F64).x

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # a different x_T (and noise) gives different samples
    # From one x_T: a stochastic sampler's noise must matter, a deterministic one must draw none.
    x_T = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    d, e = run(0, x_T), run(1, x_T)
    if spec.stochastic:
        assert not torch.allclose(d, e), "declared stochastic, but the noise seed does not change the samples"
    else:
        assert torch.equal(d, e), "declared deterministic, but the noise seed changes the samples"


# ------------------------------------------------------------------------------------ NaN
@pytest.mark.parametrize("name", _cases("nan"))
def test_nan_from_the_model_names_step_and_t(name):
    sde = VPSDE()
    model = _gaussian(sde, nan_at_call=3)
    with pytest.raises(NonFiniteError) as info:
        _sample(model, sde, (3, 2), name, 8, noise=torch.Generator().manual_seed(0), dtype=F64, denoise=False)
    msg = str(info.value)
    m = re.search(r"at step (\d+) of (\d+) \(t_cur=", msg)
    assert m, msg
    assert 0 <= int(m.group(1)) < int(m.group(2)), msg
    assert model.nan_t is not None and f"{model.nan_t:.6g}" in msg, (model.nan_t, msg)
    assert model.calls == 3  # it stopped at the bad call


# ------------------------------------------------------------------------------------ robustness
SWEEP_STEPS = (2, 3, 5, 17, 100, 2000)
OTHER_SCHEDULE_STEPS = (2, 5, 17)
SWEEP_MAX_NFE = 4100  # many-NFE-per-step samplers (ald: 100 per level) stop where NFE passes this


def _sweep(spec, sde):
    """(schedule, steps) pairs: the full step sweep on the default schedule, a few counts on the others."""
    if not spec.fixed_grid:
        return [(spec.default_schedule, None)]
    pairs = [(spec.default_schedule, n) for n in SWEEP_STEPS]
    pairs += [(s, n) for s in ("uniform", "karras", "logsnr") if s != spec.default_schedule for n in OTHER_SCHEDULE_STEPS]
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("name", _cases("robustness"))
def test_no_nan_or_inf_at_any_step_count(name, sde):
    spec = SPECS[name]
    if not _supports(spec, sde):
        pytest.skip(f"{name} does not support {sde!r}")
    model = _gaussian(sde, 2)
    try:
        probe = _sample(model, sde, (3, 2), name, 3 if spec.fixed_grid else None, noise=torch.Generator().manual_seed(0),
                        denoise=False)
    except ValueError as err:
        if model.calls == 0:  # refused before sampling (e.g. an option incompatible with this SDE)
            pytest.skip(f"{name} refuses {sde!r} at its defaults: {err}")
        raise
    per_step = max(probe.nfe / 3, 1.0) if spec.fixed_grid else 0.0
    for schedule, steps in _sweep(spec, sde):
        if steps is not None and steps * per_step > SWEEP_MAX_NFE:
            continue
        # float32 (the default dtype, where overflow and cancellation show); exact scores.
        res = _sample(_gaussian(sde, 2), sde, (3, 2), name, steps, schedule=schedule,
                      noise=torch.Generator().manual_seed(1), return_trajectory=True)
        assert bool(torch.isfinite(res.trajectory).all()), (schedule, steps)
        assert bool(torch.isfinite(res.x).all()), (schedule, steps)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_grids_have_no_zero_length_step(sde, schedule):
    for steps in (1, 2, 3, 5, 17, 100, 1000, 2000, 10000):
        ts = make_grid(sde, steps, schedule)
        assert ts.dtype == F64 and ts.shape == (steps + 1,)
        assert float(ts[0]) == sde.T and float(ts[-1]) == sde.t_min
        assert bool((ts[1:] < ts[:-1]).all()), (schedule, steps)
        # lambda must strictly increase too: exponential integrators divide by h = lam_next - lam.
        lam = sde.lam(ts)
        assert bool((lam[1:] > lam[:-1]).all()), (schedule, steps)


# ------------------------------------------------------------------------------------ shapes and dtypes
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", _cases("shapes"))
def test_shapes_and_dtypes(name, dtype):
    sde = VPSDE()
    flat = _sample(_gaussian(sde, 4), sde, (3, 4), name, 4, seeds=[1, 2, 3], dtype=dtype)
    img = _sample(_gaussian(sde, 4), sde, (3, 1, 2, 2), name, 4, seeds=[1, 2, 3], dtype=dtype)
    assert flat.x.shape == (3, 4) and img.x.shape == (3, 1, 2, 2)
    assert flat.x.dtype == dtype and img.x.dtype == dtype
    assert bool(torch.isfinite(img.x).all())
    # Same seeds, same D elements per sample: the (B, C, H, W) run is the (B, D) run reshaped
    # (broadcasting per sample must not depend on the rank). Elementwise model: bit-identical.
    assert torch.equal(img.x.reshape(3, 4), flat.x)


# ------------------------------------------------------------------------------------ errors and registry
def test_unknown_sampler_lists_the_valid_names():
    sde = VPSDE()
    with pytest.raises(ValueError, match="no_such_sampler") as info:
        scoresde.sample(_gaussian(sde), sde, (2, 2), "no_such_sampler")
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", _cases("unknown_option"))
def test_unknown_option_lists_the_valid_ones(name):
    sde = VPSDE()
    with pytest.raises(TypeError, match="not_an_option") as info:
        scoresde.sample(_gaussian(sde), sde, (2, 2), name, 2, not_an_option=1)
    for opt in SPECS[name].options:
        assert opt in str(info.value)


@pytest.mark.parametrize("name", _cases("explicit_defaults"))
def test_passing_the_declared_defaults_changes_nothing(name):
    # The registry reads options and defaults from the signature; passing them explicitly must
    # give bit-identical samples.
    spec, sde = SPECS[name], VPSDE()
    a = _sample(_gaussian(sde), sde, (3, 2), name, 4, seeds=[4, 5, 6], dtype=F64)
    b = _sample(_gaussian(sde), sde, (3, 2), name, 4, seeds=[4, 5, 6], dtype=F64, **spec.options)
    assert torch.equal(a.x, b.x)
    assert b.options == {**spec.options}


def test_registered_sampler_is_usable_by_name():
    name = "_test_one_step_tweedie"
    assert name not in scoresde.samplers.available()

    @registry.register(name, kind="ode", order=None, stochastic=False, nfe=lambda steps, o: 1, default_steps=1)
    def one_step(model, sde, x, ts, *, noise, callback, scale: float = 1.0):
        """One Tweedie step from T (test sampler)."""
        x = scale * model(x, ts[0]).x0
        return callback(0, x)

    try:
        assert name in scoresde.samplers.available()
        sde = VPSDE()
        x_T = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
        res = scoresde.sample(_gaussian(sde), sde, (5, 2), name, x_T=x_T, denoise=False, dtype=F64, scale=2.0)
        # By hand: E[x0 | x_T] for N(mu, v I) is mu + a v / (a^2 v + s^2) (x_T - a mu).
        T = torch.tensor(sde.T, dtype=F64)
        a, s = float(sde.alpha(T)), float(sde.sigma(T))
        mu, v = torch.tensor([0.5, -1.0], dtype=F64), 0.25
        expected = 2.0 * (mu + a * v / (a * a * v + s * s) * (x_T - a * mu))
        torch.testing.assert_close(res.x, expected, rtol=1e-12, atol=1e-12)
        assert res.nfe == 1 and res.options == {"scale": 2.0}
    finally:
        registry.unregister(name)
    assert name not in scoresde.samplers.available()
    with pytest.raises(ValueError, match=name):
        scoresde.sample(_gaussian(VPSDE()), VPSDE(), (2, 2), name)


# ------------------------------------------------------------------------------------ convergence order
def _configs(test: str, keep) -> list:
    """pytest params over (sampler, options) for the defaults and every registered variant that ``keep``
    accepts (keep(traits) -> bool); KNOWN_FAILURES keys name a variant as ``name[key=value,...]``."""
    out = []
    for n in NAMES:
        for o in ({},) + SPECS[n].variants:
            if not keep(SPECS[n].traits(o)):
                continue
            label = n + ("[" + ",".join(f"{k}={v}" for k, v in o.items()) + "]" if o else "")
            reason = KNOWN_FAILURES.get((test, label))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(n, dict(o), marks=marks, id=label))
    return out


ORDER_CASES = _configs("order", lambda t: t.fixed_grid and not t.stochastic and t.order is not None)
ORDER_STEPS = (64, 128, 256, 512, 1024)
ORDER_FLOOR = 1e-10  # float64 round-off over <= 1024 steps at |x| ~ 3 is ~1e-13; points below 1e-10 are not fitted
ORDER_TOL = 0.25  # all slopes are asymptotic by 256-1024 steps (measured within 0.05 of 1, 2, 2, 2, 3 for the others)


def _slope(steps, errs) -> float:
    """Least-squares slope of -log(err) against log(steps)."""
    n = len(steps)
    lx = [math.log(s) for s in steps]
    ly = [-math.log(e) for e in errs]
    mx, my = sum(lx) / n, sum(ly) / n
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


@pytest.mark.parametrize("name,opts", ORDER_CASES)
def test_deterministic_samplers_converge_at_their_declared_order(name, opts):
    spec, sde = SPECS[name], VPSDE()
    order = spec.traits(opts).order
    mean, var = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.25, 1.0, 2.25])
    x_T = torch.randn(16, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * sde.prior_std()
    exact = Gaussian(mean, var).pf_ode_map(x_T, sde.T, sde.t_min, sde)
    errs = []
    for steps in ORDER_STEPS:
        res = _sample(ExactGaussianScore(sde, mean, var), sde, (16, 3), name, steps, x_T=x_T, denoise=False, dtype=F64,
                      **opts)
        errs.append(float((res.x - exact).abs().max()))
    pts = [(s, e) for s, e in zip(ORDER_STEPS, errs, strict=True) if e > ORDER_FLOOR][-3:]  # the asymptotic end
    assert len(pts) >= 2, f"error already at the float64 floor: {errs}"
    slope = _slope(*zip(*pts, strict=True))
    assert abs(slope - order) <= ORDER_TOL, (
        f"{name} {opts} declares order {order}; measured {slope:.2f} on {spec.default_schedule!r} grids, "
        f"errors {['%.2e' % e for e in errs]} at steps {ORDER_STEPS}"
    )


POINT_MASS_CASES = _configs("point_mass", lambda t: t.exact_for_point_mass)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("name,opts", POINT_MASS_CASES)
def test_exponential_integrators_are_exact_for_a_point_mass(name, opts, sde):
    spec = SPECS[name]
    if not _supports(spec, sde):
        pytest.skip(f"{name} does not support {sde!r}")
    c = torch.tensor([1.0, -2.0, 0.5])
    x_T = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(1)) * sde.prior_std()
    exact = Gaussian(c, 0.0).pf_ode_map(x_T, sde.T, sde.t_min, sde)
    scale = float(x_T.abs().max()) + 2.0
    for steps in (1, 2, 3, 7, 30, 200):
        res = _sample(ExactGaussianScore(sde, c, 0.0), sde, (8, 3), name, steps, x_T=x_T, denoise=False, dtype=F64,
                      **opts)
        err = float((res.x - exact).abs().max())
        # Round-off only. A step sigma~_i -> sigma~_{i+1} can amplify the state's round-off
        # (eps |x~|) by up to sigma~_i / sigma~_{i+1}: Heun's correction divides x~' - x0 by
        # sigma~_{i+1} (measured up to 25 eps x that ratio at 1 step on sub-VP, 5.6e-9); 100x covers it.
        # Truncation errors of inexact methods are >= 1e-3 here.
        st = sde.sigma_tilde(res.ts)
        amplification = float((st[:-1] / st[1:]).max())
        assert err <= 100 * EPS * scale * (amplification + steps), (steps, err, amplification)


# ------------------------------------------------------------------------------------ distributions
N_DIST = 2000
# "Moderate budget": the sampler's default steps, raised to at least MIN_NFE_HIGH_ORDER NFE for
# deterministic samplers of order >= 2 and MIN_NFE_FIRST_ORDER for the others (first-order and
# stochastic ones): at 100 NFE ddim's spread is 6% low in 16-D and euler_ancestral's 13% (2-5% at 500).
MIN_NFE_HIGH_ORDER = 100
MIN_NFE_FIRST_ORDER = 500
SW_FACTOR = 1.6  # SW2 of an exact set vs the reference ranges over 0.7-1.25 x the mean floor (4 pairs, N=2000)
CHEAP_NFE = 600  # the 16-D test runs the samplers whose moderate budget stays below this


def _budget(spec, sde, dim) -> tuple[int | None, int]:
    """(steps, NFE) of the moderate budget: the default, raised to the minimum NFE for fixed grids."""
    probe = _sample(ExactGaussianScore(sde, torch.zeros(dim), 1.0), sde, (4, dim), spec.name,
                    3 if spec.fixed_grid else None, noise=torch.Generator().manual_seed(0), denoise=False)
    if not spec.fixed_grid:
        return None, probe.nfe
    per_step = probe.nfe / 3
    high_order = not spec.stochastic and spec.order is not None and spec.order >= 2
    least = MIN_NFE_HIGH_ORDER if high_order else MIN_NFE_FIRST_ORDER
    steps = max(spec.default_steps, math.ceil(least / per_step))
    return steps, int(steps * per_step)


def _check_distribution(name, gm: GaussianMixture, sde):
    spec = SPECS[name]
    steps, _ = _budget(spec, sde, gm.dim)
    model = ExactIsoMixtureScore(sde, gm)
    x = _sample(model, sde, (N_DIST, gm.dim), name, steps, noise=torch.Generator().manual_seed(7), dtype=F64).x
    refs = [gm.sample(N_DIST, generator=torch.Generator().manual_seed(s), dtype=F64) for s in range(1, 6)]
    floor = sum(sliced_wasserstein(refs[0], r) for r in refs[1:]) / 4
    sw = sliced_wasserstein(x, refs[0])
    report = f"{name} at {steps} steps: SW2 {sw:.3f}, floor {floor:.3f}"
    assert sw <= SW_FACTOR * floor, report
    # Mode weights: the fraction nearest each mode is binomial; 4 standard deviations.
    label = gm.responsibilities(x).argmax(1)
    frac = torch.bincount(label, minlength=gm.n_components).to(F64) / N_DIST
    w = gm.weights
    z = (frac - w) / torch.sqrt(w * (1 - w) / N_DIST)
    assert bool((z.abs() <= 4).all()), f"{report}; mode weights {frac.tolist()} vs {w.tolist()} (z {z.tolist()})"
    # Within-mode spread: mean ||x - mu_k||^2 / (D v_k) is 1 with sd sqrt(2 / (D n_k)); 4 standard deviations.
    v = gm.covariances.diagonal(dim1=1, dim2=2)[:, 0]
    for k in range(gm.n_components):
        ratio = float(((x[label == k] - gm.means[k]) ** 2).sum(1).mean() / (gm.dim * v[k]))
        sd = math.sqrt(2.0 / (gm.dim * float(w[k]) * N_DIST))
        assert abs(ratio - 1.0) <= 4 * sd, f"{report}; mode {k}: spread ratio {ratio:.3f} (tolerance {4 * sd:.3f})"


@pytest.mark.parametrize("name", _cases("distribution_2d"))
def test_default_options_sample_a_2d_mixture(name):
    _check_distribution(name, mixture_2d(), VPSDE())


@pytest.mark.parametrize("name", _cases("distribution_16d"))
def test_default_options_sample_a_16d_mixture(name):
    gm, sde = mixture_16d(), VPSDE()
    steps, nfe = _budget(SPECS[name], sde, gm.dim)
    if nfe > CHEAP_NFE:
        pytest.skip(f"not a cheap sampler: {nfe} NFE at its moderate budget (the 2-D test covers it)")
    _check_distribution(name, gm, sde)
