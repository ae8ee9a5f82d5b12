"""Every declared trait of every registered sampler, checked for its defaults and declared variants.

Cases are (sampler, options) for each sampler's defaults and each of its registered ``variants``,
collected from the registry at import time, so a new sampler or variant is covered without editing
this file. Traits are functions of the options (``spec.traits(options)``); each is checked here:

* ``nfe(steps)``: equals the network calls counted by a wrapper, for several step counts;
* ``stochastic``: False means bit-identical samples under another noise seed (same x_T); True
  means the noise seed changes them;
* ``strong_order``: measured on a shared Brownian path against the exact solution of the linear
  reverse-time SDE of Gaussian data (closed form below), as the slope of the mean pathwise error;
* ``requires``: a sampler that needs an SDE capability is refused before any network call on an
  SDE that lacks it, with the capability named;
* option values: each declared option refuses a value of the wrong kind, naming the option.

The deterministic order (``order``) and point-mass exactness are in test_samplers_common.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde
from scoresde import VESDE, VPSDE, LinearSDE
from scoresde._utils import append_dims
from scoresde.registry import Anything
from scoresde.samplers import registry
from scoresde.schedules import make_grid

F64 = torch.float64
SPECS = {s.name: s for s in scoresde.samplers.specs()}


def _label(name: str, opts: dict) -> str:
    return name + ("[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]" if opts else "")


CONFIGS = [(n, dict(o)) for n in sorted(SPECS) for o in ({},) + SPECS[n].variants]
IDS = [_label(n, o) for n, o in CONFIGS]


class GaussianScore:
    """Exact score of N(mu, v I) under ``sde``, counting calls (elementwise: batch-independent)."""

    def __init__(self, sde: LinearSDE, mu, v: float):
        self.sde, self.mu, self.v, self.calls = sde, torch.as_tensor(mu, dtype=F64), float(v), 0

    def __call__(self, x, t):
        self.calls += 1
        a = append_dims(self.sde.alpha(t), x.ndim)
        s = append_dims(self.sde.sigma(t), x.ndim)
        return (-(x.to(F64) - a * self.mu) / (a * a * self.v + s * s)).to(x.dtype)


def _model(sde=None):
    sde = sde or VPSDE()
    return GaussianScore(sde, [0.5, -1.0], 0.25), sde


# ------------------------------------------------------------------------------------ nfe
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_declared_nfe_equals_counted_calls(name, opts):
    traits = SPECS[name].traits(opts)
    for steps in (1, 2, 3, 7):
        model, sde = _model()
        res = scoresde.sample(model, sde, (3, 2), name, steps, noise=torch.Generator().manual_seed(0), dtype=F64,
                              **opts)
        assert res.nfe == model.calls, (steps, res.nfe, model.calls)
        declared = traits.nfe(steps)
        if traits.fixed_grid:
            assert declared is not None, f"{_label(name, opts)} steps on the grid but declares no NFE"
        if declared is not None:
            assert res.nfe == declared + 1, (steps, res.nfe, declared)  # + the final denoising step


# ------------------------------------------------------------------------------------ stochastic
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_stochastic_trait_matches_the_effect_of_the_noise_seed(name, opts):
    traits = SPECS[name].traits(opts)
    x_T = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(5))

    def run(seed):
        model, sde = _model()
        return scoresde.sample(model, sde, (6, 2), name, 5, x_T=x_T, seeds=[seed + i for i in range(6)], dtype=F64,
                               **opts).x

    a, b = run(0), run(1000)
    if traits.stochastic:
        assert not torch.allclose(a, b), "declared stochastic, but the noise seed does not change the samples"
    else:
        assert torch.equal(a, b), "declared deterministic, but the noise seed changes the samples"


# ------------------------------------------------------------------------------------ strong order
class BrownianNoise:
    """Normalised increments of one fixed Brownian path, on any coarse grid that is a subset of the fine one.

    The path is fine increments dB_k ~ N(0, dtau_k) on the fine grid (reverse time tau = T - t). Draw j
    of a sampler on the coarse grid fine[::m] is the coarse increment over its step j divided by the
    square root of the step, i.e. the standard normal the sampler multiplies by its noise scale.
    """

    def __init__(self, dB: torch.Tensor, m: int):
        self.coarse = dB.reshape(-1, m, *dB.shape[1:]).sum(1)  # (N, B, D)
        self.dtau = None
        self.used = 0

    def scaled(self, dtau: torch.Tensor) -> "BrownianNoise":
        self.dtau = dtau
        return self

    def __call__(self, like):
        if self.used >= self.coarse.shape[0]:
            raise RuntimeError("the sampler drew more than one noise per step: no shared-path test for it")
        z = self.coarse[self.used] / self.dtau[self.used].sqrt()
        self.used += 1
        return z.to(like.dtype)


def _exact_path(sde, ts, x_T, dB, mu, v, eta):
    """The eta-SDE dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dB (reverse time) of N(mu, v I) data, on
    the fine grid ts, driven by the increments dB: x(t) = alpha_t mu + Phi(t, u)(x(u) - alpha_u mu) +
    int Phi(t, s) eta g(s) dB(s), with Phi(t, u) = (alpha_t/alpha_u)^(-eta^2) (v_t/v_u)^((1 + eta^2)/2) and
    v_t = alpha_t^2 v + sigma_t^2 (closed form; the stochastic integral by its left-point sum, error O(dtau))."""
    a, s, g = sde.alpha(ts), sde.sigma(ts), sde.g(ts)
    vt = a * a * v + s * s
    phi = (a[1:] / a[:-1]) ** (-(eta**2)) * (vt[1:] / vt[:-1]) ** (0.5 * (1 + eta**2))
    x = x_T
    for k in range(len(ts) - 1):
        x = a[k + 1] * mu + phi[k] * (x - a[k] * mu) + phi[k] * eta * g[k] * dB[k]
    return x


# Grids uniform in lambda: on uniform-t grids the lambda steps of VP and EDM near t_min shrink only like
# log(1 + T / (N t_min)), and the exponential-integrator family (ancestral, ddim, euler_ancestral) then shows
# slopes of 0.8 at 256 steps, still rising; uniform in lambda, every slope over 64-256 steps is within 0.15 of 1
# on VP, VE and EDM (measured with 2^14 fine steps; 2^13 here).
FINE = 2**13  # fine steps: the reference's own O(1/FINE) error is ~3% of the finest coarse level's
LEVELS = (32, 64, 128, 256)
STRONG_TOL = 0.25  # measured slopes over 64-256 steps: 0.94-1.25 (dpmpp_2m_sde's second-order drift term decays last)
STRONG_CASES = [(n, o) for n, o in CONFIGS if SPECS[n].traits(o).strong_order is not None]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VPSDE", "VESDE"])
@pytest.mark.parametrize("name,opts", STRONG_CASES, ids=[_label(n, o) for n, o in STRONG_CASES])
def test_strong_order_on_a_shared_brownian_path(name, opts, sde):
    traits = SPECS[name].traits(opts)
    eta = traits.sde_eta
    assert traits.stochastic and eta is not None and eta > 0, "a strong order needs a limiting SDE with noise"
    mu, v, B = torch.tensor([0.5, -1.0], dtype=F64), 0.25, 256
    g = torch.Generator().manual_seed(11)
    fine = make_grid(sde, FINE, "logsnr")
    dtau = fine[:-1] - fine[1:]
    dB = torch.randn(FINE, B, 2, dtype=F64, generator=g) * dtau.sqrt()[:, None, None]
    x_T = torch.randn(B, 2, dtype=F64, generator=g) * sde.prior_std()
    ref = _exact_path(sde, fine, x_T, dB, mu, v, eta)
    errs = []
    for n in LEVELS:
        m = FINE // n
        ts = fine[::m]
        noise = BrownianNoise(dB, m).scaled(ts[:-1] - ts[1:])
        res = scoresde.sample(GaussianScore(sde, mu, v), sde, (B, 2), name, schedule=ts, x_T=x_T, noise=noise,
                              denoise=False, dtype=F64, **opts)
        assert noise.used == n, f"{noise.used} noise draws for {n} steps"
        errs.append(float((res.x - ref).norm(dim=1).mean()))
    slope = -(math.log(errs[-1]) - math.log(errs[1])) / (math.log(LEVELS[-1]) - math.log(LEVELS[1]))
    assert abs(slope - traits.strong_order) <= STRONG_TOL, (
        f"{_label(name, opts)} declares strong order {traits.strong_order}; measured {slope:.2f} on {sde!r}, "
        f"errors {['%.2e' % e for e in errs]} at {LEVELS} steps")


def test_every_stochastic_sampler_either_has_a_strong_order_or_is_a_langevin_or_adaptive_method():
    # A stochastic configuration without a strong order must be one that discretises no fixed SDE path.
    for name, opts in CONFIGS:
        t = SPECS[name].traits(opts)
        if t.stochastic and t.strong_order is None:
            langevin = SPECS[name].kind in ("langevin", "adaptive", "pc") or name == "edm_sde"
            off_family = t.sde_eta is None or name == "euler_ancestral"
            assert langevin or off_family, _label(name, opts)


# ------------------------------------------------------------------------------------ capabilities
def test_a_missing_capability_is_refused_before_any_network_call():
    name = "_test_needs_beyond_T"

    @registry.register(name, kind="ode", stochastic=False, nfe=1, requires=("extends_beyond_T",))
    def beyond(model, sde, x, ts, *, noise, callback):
        """Test sampler that needs t(sigma~) beyond T."""
        for i in range(len(ts) - 1):
            x = callback(i, model(x, ts[i]).x0)
        return x

    user = LinearSDE.from_schedule(lambda t: -0.5 * t, lambda t: torch.sqrt(-torch.expm1(-t)), name="MySDE")
    try:
        model = GaussianScore(user, [0.0, 0.0], 1.0)
        with pytest.raises(ValueError, match="extends_beyond_T") as info:
            scoresde.sample(model, user, (2, 2), name, 3)
        assert model.calls == 0 and "MySDE" in str(info.value)
        # Declared, it runs.
        declared = LinearSDE.from_schedule(lambda t: -0.5 * t, lambda t: torch.sqrt(-torch.expm1(-t)),
                                           capabilities=("extends_beyond_T",))
        assert scoresde.sample(GaussianScore(declared, [0.0, 0.0], 1.0), declared, (2, 2), name, 3).nfe == 4
    finally:
        registry.unregister(name)


def test_edm_churn_needs_times_beyond_T_and_says_so_before_sampling():
    user = LinearSDE.from_schedule(lambda t: torch.zeros_like(t), lambda t: t, T=80.0, t_min=0.002, name="MyEDM")
    model = GaussianScore(user, [0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="extends_beyond_T"):
        scoresde.sample(model, user, (2, 2), "edm_sde", 4, S_churn=10.0)
    assert model.calls == 0
    # Without churn no capability is needed.
    assert scoresde.sample(model, user, (2, 2), "edm_sde", 4).nfe == 9


def test_declared_capability_extends_the_inverse_of_lambda_beyond_T():
    # With the capability the bisection bracket grows past T: sigma~ = t for this SDE, so t(sigma~) = sigma~.
    sde = LinearSDE.from_schedule(lambda t: torch.zeros_like(t), lambda t: t, T=80.0, t_min=0.002,
                                  capabilities=("extends_beyond_T",))
    s = torch.tensor([0.5, 79.0, 100.0, 300.0], dtype=F64)
    torch.testing.assert_close(sde.t_from_sigma_tilde(s), s, rtol=1e-12, atol=0)  # bisection to 2^-80 of the bracket


# ------------------------------------------------------------------------------------ option values
_BAD = "not-a-valid-value"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_option_refuses_a_wrong_value_by_name_before_sampling(name):
    spec = SPECS[name]
    for opt, param in spec.params.items():
        if isinstance(param, Anything) and not param.types:
            continue  # declared as accepting anything
        model, sde = _model()
        with pytest.raises(ValueError, match=rf"{opt}='{_BAD}' is not accepted; accepted: ") as info:
            scoresde.sample(model, sde, (2, 2), name, 2, **{opt: _BAD})
        assert repr(name) in str(info.value)
        assert model.calls == 0


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_variants_are_valid_and_reported_in_the_result(name, opts):
    model, sde = _model()
    res = scoresde.sample(model, sde, (2, 2), name, 3, noise=torch.Generator().manual_seed(0), dtype=F64, **opts)
    assert res.options == SPECS[name].validate(opts)
    assert bool(torch.isfinite(res.x).all())


# ------------------------------------------------------------------------------------ engines
TABLE_CASES = [(n, o) for n, o in CONFIGS if SPECS[n].traits(o).table]


@pytest.mark.parametrize("name,opts", TABLE_CASES, ids=[_label(n, o) for n, o in TABLE_CASES])
def test_the_torch_engine_gives_the_eager_samples_through_the_front_door(name, opts):
    # Same per-sample noise stream, same NFE; the table re-associates the arithmetic (weights expanded),
    # measured <= 5e-13 relative in float64 (tests/test_engine.py); 1e-10 of the path's scale leaves margin.
    kw = dict(seeds=range(5), dtype=F64, return_trajectory=True, **opts)
    model, sde = _model()
    eager = scoresde.sample(model, sde, (5, 2), name, 6, **kw)
    model, sde = _model()
    fast = scoresde.sample(model, sde, (5, 2), name, 6, engine="torch", **kw)
    assert fast.nfe == eager.nfe
    scale = float(eager.trajectory.abs().max())
    assert torch.allclose(fast.trajectory, eager.trajectory, rtol=0, atol=1e-10 * scale)
    assert torch.allclose(fast.x, eager.x, rtol=0, atol=1e-10 * scale)


def test_engines_are_refused_where_they_cannot_run():
    model, sde = _model()
    with pytest.raises(ValueError, match="engine='torch' runs a sampler's coefficient table, and sampler 'ode'"):
        scoresde.sample(model, sde, (2, 2), "ode", 3, engine="torch")
    with pytest.raises(ValueError, match="engine='warp' is not accepted"):
        scoresde.sample(model, sde, (2, 2), "ddim", 3, engine="warp")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="graph"):
            scoresde.sample(model, sde, (2, 2), "ddim", 3, engine="graph")
    assert model.calls == 0
