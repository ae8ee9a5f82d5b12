"""Property-based fuzzing of the public API and the CLI (hypothesis).

The property, for every entry point: each generated call either returns a result that passes the
invariants (finite, the asked shape and dtype, the NFE the sampler declares plus the final denoising
step), or raises a ValueError / TypeError whose message names the argument that was bad (the CLI:
exit 2 with one line on stderr). Never another exception type, never a silent coercion: a hostile
value (a string for a number, 4.7 for a count, a 2-D grid, NaN, ...) must be refused, not rounded,
flattened or ignored.

Each example changes AT MOST ONE argument to a hostile value (so the error can be attributed to it)
and draws all others from valid pools. Sampler options are drawn from each sampler's defaults and
declared variants (valid), or made hostile with a value its declared param refuses. Runs are
derandomised (a fixed seed, no example database) with bounded example counts: the same examples run
on every machine and the suite takes about a minute on one CPU core.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoresde
from scoresde.samplers import registry
from scoresde.sde import EDMSDE, VESDE, VPSDE, SubVPSDE

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


def fuzz(n: int):
    """A derandomised hypothesis run of ``n`` examples."""
    return settings(FUZZ, max_examples=n)


class Case:
    """One generated call: keyword arguments, and the one argument made hostile (None: all valid)."""

    def __init__(self, kwargs: dict, bad: str | None, names: tuple[str, ...] = ()):
        self.kwargs, self.bad = kwargs, bad
        self.names = names or ((bad,) if bad else ())

    def __repr__(self) -> str:
        return f"Case(bad={self.bad!r}, kwargs={self.kwargs!r})"


def run_case(call, case: Case):
    """Call; a hostile case must raise ValueError/TypeError naming its argument, a valid one must not raise."""
    if case.bad is None:
        return call(**case.kwargs)
    try:
        call(**case.kwargs)
    except (ValueError, TypeError) as err:
        msg = str(err)
        assert any(n in msg for n in case.names), f"{type(err).__name__} does not name {case.names}: {msg}"
        return None
    raise AssertionError(f"hostile {case.bad}={case.kwargs.get(case.bad)!r} was accepted: {case!r}")


# ------------------------------------------------------------------------------------------ models
S2 = 0.25  # the data are N(0, S2 I) in any shape: score(x, t) = -x / (alpha^2 S2 + sigma^2) exactly


def gaussian_score(sde):
    def score(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        a, s = sde.alpha(t), sde.sigma(t)
        v = (a**2 * S2 + s**2).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return -x / v

    return score


SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(), "edm": EDMSDE()}
NAMES = registry.available()
FAST_DEFAULT = [n for n in NAMES if registry.get(n).default_steps <= 50]  # steps=None stays cheap

# values no declared param of these types accepts (NaN, a string, a list, an object)
HOSTILE_VALUES = [float("nan"), "junk", [1], object(), -1e300, 1e300, True, 2.5, -3]


def hostile_option(spec, name):
    param = spec.params[name]
    return [v for v in HOSTILE_VALUES if not param.accepts(v)]


SAMPLE_BAD = ["shape", "steps", "seeds", "generator", "schedule", "rho", "t_min", "T", "denoise", "x_T",
              "return_trajectory", "progress", "dtype", "cond", "max_batch", "noise", "noise_and_seeds", "device", "sampler",
              "sde", "option", "unknown_option", "engine"]


@st.composite
def sample_cases(draw, bad=None, sampler=None):
    name = sampler or draw(st.sampled_from(NAMES))
    spec = registry.get(name)
    sde_name = draw(st.sampled_from(list(SDES)))
    sde = SDES[sde_name]
    B = draw(st.integers(1, 3))
    D = draw(st.sampled_from([(2,), (1, 2, 2)]))
    shape = (B, *D)
    options = dict(draw(st.sampled_from([{}, *spec.variants])))
    kw = dict(model=gaussian_score(sde), sde=sde, shape=shape, sampler=name,
              steps=draw(st.integers(1, 4) if name not in FAST_DEFAULT else st.one_of(st.none(), st.integers(1, 4))))
    if draw(st.booleans()):
        kw["seeds"] = draw(st.lists(st.integers(0, 2**62), min_size=B, max_size=B))
    elif draw(st.booleans()):
        kw["generator"] = torch.Generator().manual_seed(draw(st.integers(0, 10)))
    sched = draw(st.sampled_from([None, "uniform", "karras", "logsnr", "quadratic", "explicit"]))
    if sched == "explicit":
        n = kw["steps"] or draw(st.integers(1, 4))
        kw["schedule"] = torch.linspace(sde.T, sde.t_min, n + 1, dtype=torch.float64).tolist()
    elif sched is not None:
        kw["schedule"] = sched
        if sched == "karras" and draw(st.booleans()):
            kw["rho"] = draw(st.floats(1.0, 10.0))
        if draw(st.booleans()):
            lo = sde.t_min + (sde.T - sde.t_min) * draw(st.floats(0.0, 0.4))
            kw["t_min"] = lo
            if draw(st.booleans()):
                kw["T"] = lo + (sde.T - lo) * draw(st.floats(0.5, 1.0))
    kw["denoise"] = draw(st.sampled_from([True, False, "tweedie", "ode"]))
    if draw(st.integers(0, 4)) == 0:
        kw["x_T"] = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * sde.prior_std()
    kw["return_trajectory"] = draw(st.booleans())
    kw["dtype"] = draw(st.sampled_from([torch.float32, torch.float64]))
    if draw(st.integers(0, 4)) == 0:
        kw["max_batch"] = draw(st.integers(1, B))
    if draw(st.integers(0, 6)) == 0 and "max_batch" not in kw:
        kw["noise"] = torch.Generator().manual_seed(3)
        kw.pop("seeds", None), kw.pop("generator", None)
    if draw(st.booleans()):
        kw["progress"] = False
    kw.update(options)

    names: tuple[str, ...] = ()
    if bad == "shape":
        kw["shape"] = draw(st.sampled_from(["42", (4.7, 2), (0, 2), (2,), [], (True, 2), 3, (2, -1), None, (2.0, 2),
                                            (np.float64(2), 2), ("2", 2)]))
    elif bad == "steps":
        kw["steps"] = draw(st.sampled_from([0, -1, 2.5, True, "3", 3.0, [3], float("nan")]))
    elif bad == "seeds":
        kw.pop("generator", None), kw.pop("noise", None)
        kw["seeds"] = draw(st.sampled_from([[1.7] * B, ["1"] * B, [0] * (B + 1), [[0]] * B, [-1] * B, [2**64] * B,
                                            [True] * B, torch.zeros(B), "0" * B, 3]))
    elif bad == "generator":
        kw.pop("seeds", None), kw.pop("noise", None)
        kw["generator"] = draw(st.sampled_from(["gen", 1, np.random.default_rng(0)]))
    elif bad == "schedule":
        kw.pop("t_min", None), kw.pop("T", None), kw.pop("rho", None)
        kw["schedule"] = draw(st.sampled_from(["nope", "Uniform", [0.5, 0.7], [[1.0, 0.5]], [1.0], [1.0, float("nan")],
                                               [sde.T * 2, sde.t_min], [sde.T, sde.t_min / 2], 5, [sde.T, sde.T]]))
        names = ("schedule", "grid", "steps")  # a grid of the wrong length may be named by the step count
    elif bad == "rho":
        kw["schedule"], kw["rho"] = "karras", draw(st.sampled_from([0, -1.0, float("nan"), "7", True, float("inf")]))
    elif bad == "t_min":
        kw["schedule"] = kw.get("schedule") if isinstance(kw.get("schedule"), str) else "uniform"
        kw.pop("T", None)
        kw["t_min"] = draw(st.sampled_from([-1.0, float("nan"), "0.1", True, sde.T * 2, sde.T, 0.0 if sde.t_min > 0 else -1.0]))
    elif bad == "T":
        kw["schedule"] = kw.get("schedule") if isinstance(kw.get("schedule"), str) else "uniform"
        kw.pop("t_min", None)
        kw["T"] = draw(st.sampled_from([0.0, float("nan"), "1", True, sde.T * 2, sde.t_min]))
    elif bad == "denoise":
        kw["denoise"] = draw(st.sampled_from(["yes", 1, 0, None, "none"]))
    elif bad == "x_T":
        kw["x_T"] = draw(st.sampled_from([torch.zeros(B, 3), torch.zeros(shape, dtype=torch.int64),
                                          torch.full(shape, float("nan")), np.zeros(shape), torch.zeros(shape).tolist(),
                                          torch.zeros(shape, dtype=torch.complex64)]))
        kw.pop("max_batch", None)
    elif bad in ("return_trajectory", "progress"):
        kw[bad] = draw(st.sampled_from([1, "yes", None, 0]))
    elif bad == "dtype":
        kw["dtype"] = draw(st.sampled_from([torch.int32, "float32", np.float32, torch.complex64, torch.bool]))
    elif bad == "cond":
        kw["cond"] = draw(st.sampled_from([[1], "y", 3]))
    elif bad == "max_batch":
        kw["max_batch"] = draw(st.sampled_from([0, -1, 1.5, True, "2"]))
    elif bad == "noise":
        kw.pop("seeds", None), kw.pop("generator", None), kw.pop("max_batch", None)
        kw["noise"] = draw(st.sampled_from(["x", 3, np.random.default_rng(0)]))
    elif bad == "noise_and_seeds":  # noise= replaces the per-sample seeds: giving both must not ignore one
        kw.pop("max_batch", None)
        kw["noise"] = torch.Generator().manual_seed(0)
        kw.update(draw(st.sampled_from([{"seeds": list(range(B))}, {"generator": torch.Generator()}])))
        names = ("seeds", "generator")
    elif bad == "device":
        kw.pop("x_T", None)
        kw["device"] = draw(st.sampled_from(["tpu", 5, "nonsense", "cuda:9"]))
        names = ("device", "CUDA", "cuda")
    elif bad == "sampler":
        kw["sampler"] = draw(st.sampled_from(["nope", 3, None, "DDIM"]))
        for k in options:
            kw.pop(k)
    elif bad == "sde":
        kw["sde"] = draw(st.sampled_from(["vp", None, 3]))
    elif bad == "option":
        opts = [k for k in spec.params if hostile_option(spec, k)]
        if not opts:
            bad = None
        else:
            k = draw(st.sampled_from(opts))
            kw[k] = draw(st.sampled_from(hostile_option(spec, k)))
            names = (k,)
    elif bad == "engine":
        kw["engine"] = draw(st.sampled_from(["nope", 3, None, "Eager"]))
    elif bad == "unknown_option":
        kw["etaa_typo"] = 1.0
        names = ("etaa_typo",)
    return Case(kw, bad, names)


def _expected_refusal(case: Case) -> str | None:
    """A valid call the front door still refuses by design, and the word its error must contain."""
    kw = case.kwargs
    spec = registry.get(kw["sampler"])
    opts = {k: v for k, v in kw.items() if k in spec.defaults}
    try:
        spec.check_sde(kw["sde"], opts)
    except ValueError:
        return "sampler"
    traits = spec.traits(opts)
    mb = kw.get("max_batch")
    if mb is not None and mb < kw["shape"][0] and kw.get("return_trajectory") and not traits.fixed_grid:
        return "max_batch"
    return None


@pytest.mark.parametrize("sampler", NAMES)
@fuzz(8)
@given(data=st.data())
def test_sample_valid(sampler, data):
    _check_sample(data.draw(sample_cases(sampler=sampler)))


@pytest.mark.parametrize("bad", SAMPLE_BAD)
@fuzz(12)
@given(data=st.data())
def test_sample_hostile(bad, data):
    case = data.draw(sample_cases(bad))
    _check_sample(case)


def _check_sample(case):
    refusal = _expected_refusal(case) if case.bad is None else None
    if refusal is not None:
        case = Case(case.kwargs, "refused", (refusal,))
    res = run_case(scoresde.sample, case)
    if res is None:
        return
    kw = case.kwargs
    spec = registry.get(kw["sampler"])
    opts = {k: v for k, v in kw.items() if k in spec.defaults}
    traits = spec.traits(opts)
    shape, dtype = kw["shape"], kw.get("dtype", torch.float32)
    assert tuple(res.x.shape) == shape and res.x.dtype == dtype and bool(torch.isfinite(res.x).all())
    steps = len(res.ts) - 1
    declared = traits.nfe(steps)
    if declared is not None:
        mb = kw.get("max_batch") or shape[0]
        batches = math.ceil(shape[0] / mb)
        assert res.nfe == batches * (declared + (kw.get("denoise", True) is not False)), (res.nfe, declared, case)
    if kw.get("steps") is not None and traits.fixed_grid:
        assert steps == kw["steps"]
    if kw.get("return_trajectory") and traits.fixed_grid:
        assert tuple(res.trajectory.shape) == (steps + 1, *shape)
    if "seeds" in kw:
        assert res.seeds.tolist() == list(kw["seeds"])


# ------------------------------------------------------------------------------------------ ScoreModel
from scoresde.model import NOISE_INPUTS, PARAMETERIZATIONS, ScoreModel  # noqa: E402

SCOREMODEL_BAD = ["net", "sde", "parameterization", "noise_input", "sigma_data", "check_finite", "x", "t", "cond"]


@st.composite
def scoremodel_cases(draw, bad=None):
    sde = SDES[draw(st.sampled_from(list(SDES)))]
    param = draw(st.sampled_from(PARAMETERIZATIONS))
    ctor = dict(net=lambda x, c, **k: -0.5 * x, sde=sde, parameterization=param,
                noise_input=draw(st.sampled_from(NOISE_INPUTS)), sigma_data=draw(st.floats(0.05, 5.0)),
                check_finite=draw(st.booleans()))
    B = draw(st.integers(1, 3))
    shape = (B, *draw(st.sampled_from([(2,), (3,), (1, 2, 2)])))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 9))), dtype=dtype)
    u = draw(st.floats(0.0, 1.0))
    t0 = sde.t_min + u * (sde.T - sde.t_min)
    t = draw(st.sampled_from([t0, torch.tensor(t0), torch.full((B,), t0, dtype=torch.float64), torch.full((B,), t0)]))
    call = dict(x=x, t=t)
    names: tuple[str, ...] = ()
    if bad in ("net", "sde", "parameterization", "noise_input", "sigma_data", "check_finite"):
        ctor[bad] = draw(st.sampled_from({
            "net": [3, None, "net"], "sde": ["vp", None, 3], "parameterization": ["nope", 3, None, "EPS"],
            "noise_input": ["nope", 3, None], "sigma_data": [-1.0, 0.0, float("nan"), "0.5", True, float("inf")],
            "check_finite": ["yes", 1, None]}[bad]))
    elif bad == "x":
        call["x"] = draw(st.sampled_from([x.tolist(), x.reshape(-1), x.to(torch.int64), x.to(torch.complex64), "x", None,
                                          x.to(torch.bool)]))
    elif bad == "t":
        call["t"] = draw(st.sampled_from(["0.5", torch.zeros(B + 1), torch.zeros(B, 2), [[t0]], None, object()]))
    elif bad == "cond":
        call["cond"] = draw(st.sampled_from([3, "y"]))
    return ctor, call, bad, names or ((bad,) if bad else ())


def _check_scoremodel(ctor, call, bad, names):
    def go(**_):
        m = ScoreModel(**ctor)
        cond = call.get("cond")
        if cond is not None and not isinstance(cond, dict):  # the documented call convention: keywords
            raise TypeError(f"cond must be keyword arguments (a dict); got {cond!r}")
        return m, m(call["x"], call["t"], **(cond or {}))

    out = run_case(go, Case({}, bad, names))
    if out is None:
        return
    m, pred = out
    x = call["x"]
    assert m.nfe == 1
    for q in ("score", "eps", "x0", "v"):
        v = getattr(pred, q)
        assert v.shape == x.shape and v.dtype == x.dtype and bool(torch.isfinite(v).all()), q


@fuzz(60)
@given(scoremodel_cases())
def test_scoremodel_valid(case):
    _check_scoremodel(*case)


@pytest.mark.parametrize("bad", SCOREMODEL_BAD)
@fuzz(8)
@given(data=st.data())
def test_scoremodel_hostile(bad, data):
    _check_scoremodel(*data.draw(scoremodel_cases(bad)))


# ------------------------------------------------------------------------------------------ SDEs
from scoresde.sde import SDES as SDE_REGISTRY  # noqa: E402
from scoresde.sde import make_sde, sde_from_config  # noqa: E402

SDE_VALID = {
    "vp": lambda d: dict(beta_min=d(st.floats(0.01, 1.0)), beta_max=d(st.floats(1.0, 30.0)), T=d(st.floats(0.5, 1.0)),
                         t_min=d(st.floats(1e-5, 1e-2))),
    "subvp": lambda d: dict(beta_min=d(st.floats(0.01, 1.0)), beta_max=d(st.floats(1.0, 30.0))),
    "ve": lambda d: dict(sigma_min=d(st.floats(1e-3, 0.5)), sigma_max=d(st.floats(1.0, 100.0)), t_min=d(st.floats(0.0, 0.1))),
    "edm": lambda d: dict(sigma_min=d(st.floats(1e-3, 0.5)), sigma_max=d(st.floats(1.0, 100.0))),
    "discrete_vp": lambda d: dict(beta_schedule=d(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"])),
                                  num_train_timesteps=d(st.integers(10, 1000)), beta_start=d(st.floats(1e-5, 1e-3)),
                                  beta_end=d(st.floats(5e-3, 0.05))),
}
SDE_HOSTILE = [-1.0, 0.0, float("nan"), float("inf"), "0.1", True, None, [0.1], 1e300]


@st.composite
def sde_cases(draw, bad=False):
    name = draw(st.sampled_from(list(SDE_VALID)))
    kw = {k: v for k, v in SDE_VALID[name](draw).items() if k == "beta_schedule" or draw(st.booleans())}
    if not bad:
        return name, kw, None
    key = draw(st.sampled_from([*SDE_REGISTRY.get(name).defaults, "typo_option"]))
    pool = [v for v in SDE_HOSTILE if not (key == "t_min" and v == 0.0)]  # t_min = 0 is allowed
    kw[key] = 1.0 if key == "typo_option" else draw(st.sampled_from(pool))
    return name, kw, key


def _check_sde(name, kw, bad):
    case = Case(kw, bad)
    sde = run_case(lambda **k: make_sde(name, **k), case)
    if sde is None:
        if bad in ("alphas_cumprod", "betas", "beta_schedule") and kw[bad] is None:
            pytest.fail("unreachable")  # None is the default of these: never drawn as hostile
        return
    t = torch.linspace(sde.t_min, sde.T, 33, dtype=torch.float64)[1:]
    a, s = sde.alpha(t), sde.sigma(t)
    assert bool(torch.isfinite(a).all() and torch.isfinite(s).all() and (a > 0).all() and (s > 0).all()), (name, kw)
    lam = sde.lam(t)
    assert bool(torch.isfinite(lam).all() and (lam[1:] < lam[:-1]).all()), (name, kw)  # log-SNR decreases
    # inverse_lambda inverts lam to 1e-6 relative in t (float64 closed forms or bisection)
    assert torch.allclose(sde.inverse_lambda(lam), t, rtol=1e-6, atol=1e-9 * sde.T), (name, kw)
    assert math.isfinite(float(sde.prior_std())) and float(sde.prior_std()) > 0
    assert sde_from_config(json.loads(json.dumps(sde.config()))).config() == sde.config()


@fuzz(60)
@given(sde_cases())
def test_make_sde_valid(case):
    _check_sde(*case)


@fuzz(80)
@given(sde_cases(bad=True))
def test_make_sde_hostile(case):
    name, kw, bad = case
    if bad in ("alphas_cumprod", "betas", "beta_schedule") and kw[bad] is None:
        return  # their default: a valid value
    _check_sde(name, kw, bad)


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE, EDMSDE])
@fuzz(15)
@given(data=st.data())
def test_sde_classes_refuse_coercible_values(cls, data):
    # the classes themselves, not only make_sde: a string or a bool is never turned into a number
    name = {VPSDE: "vp", SubVPSDE: "subvp", VESDE: "ve", EDMSDE: "edm"}[cls]
    key = data.draw(st.sampled_from(list(SDE_REGISTRY.get(name).defaults)))
    value = data.draw(st.sampled_from(["0.1", True, None, [0.1], float("nan")]))
    run_case(lambda **k: cls(**k), Case({key: value}, key))


# ------------------------------------------------------------------------------------------ make_grid
from scoresde.schedules import SCHEDULES, make_grid  # noqa: E402

GRID_BAD = ["sde", "steps", "schedule", "rho", "t_min", "T", "device"]


@st.composite
def grid_cases(draw, bad=None):
    sde = SDES[draw(st.sampled_from(list(SDES)))]
    kw = dict(sde=sde, steps=draw(st.integers(1, 50)), schedule=draw(st.sampled_from(SCHEDULES)))
    if draw(st.booleans()):
        kw["rho"] = draw(st.floats(0.5, 10.0))
    if draw(st.booleans()):
        kw["t_min"] = sde.t_min + (sde.T - sde.t_min) * draw(st.floats(0.0, 0.5))
    if draw(st.booleans()):
        kw["T"] = sde.T - (sde.T - kw.get("t_min", sde.t_min)) * draw(st.floats(0.0, 0.4))
    if draw(st.integers(0, 3)) == 0:  # an explicit grid (its own ends)
        n = draw(st.integers(1, 6))
        kw["schedule"] = torch.linspace(sde.T, sde.t_min, n + 1, dtype=torch.float64).tolist()
        kw["steps"] = draw(st.sampled_from([None, n]))
        kw.pop("t_min", None), kw.pop("T", None)
    if bad == "sde":
        kw["sde"] = draw(st.sampled_from(["vp", None]))
    elif bad == "steps":
        kw["schedule"] = draw(st.sampled_from(SCHEDULES))
        kw["steps"] = draw(st.sampled_from([0, -2, 2.5, 3.0, True, "4", None]))
    elif bad == "schedule":
        kw.pop("t_min", None), kw.pop("T", None)
        kw["schedule"] = draw(st.sampled_from(["nope", [0.2, 0.5], [[1.0, 0.1]], 7, [sde.T], [sde.T, float("inf")]]))
    elif bad == "rho":
        kw["rho"] = draw(st.sampled_from([0.0, -1.0, float("nan"), "7", True]))
    elif bad in ("t_min", "T"):
        kw["schedule"], kw["steps"] = "uniform", 4
        kw.pop("t_min", None), kw.pop("T", None)
        kw[bad] = draw(st.sampled_from([float("nan"), "0.5", True, -1.0, sde.T * 3]))
    elif bad == "device":
        kw["device"] = draw(st.sampled_from(["tpu", "nonsense"]))
    return kw, bad


def _check_grid(kw, bad):
    ts = run_case(make_grid, Case(kw, bad, ("schedule", "grid", "steps") if bad == "schedule" else ()))
    if ts is None:
        return
    sde = kw["sde"]
    explicit = not isinstance(kw["schedule"], str)
    n = len(kw["schedule"]) - 1 if explicit else kw["steps"]
    assert ts.dtype == torch.float64 and ts.shape == (n + 1,) and bool((ts[1:] < ts[:-1]).all())
    hi, lo = (kw["schedule"][0], kw["schedule"][-1]) if explicit else (kw.get("T", sde.T), kw.get("t_min", sde.t_min))
    assert float(ts[0]) == hi and float(ts[-1]) == lo


@fuzz(80)
@given(grid_cases())
def test_make_grid_valid(case):
    _check_grid(*case)


@pytest.mark.parametrize("bad", GRID_BAD)
@fuzz(10)
@given(data=st.data())
def test_make_grid_hostile(bad, data):
    _check_grid(*data.draw(grid_cases(bad)))


# ------------------------------------------------------------------------------------------ log_likelihood
from scoresde.likelihood import log_likelihood  # noqa: E402

LL_BAD = ["x", "sde", "estimator", "n_probes", "probe", "method", "rtol", "atol", "t_min", "generator", "seeds",
          "dequantize", "cond", "data_range", "options"]


@st.composite
def ll_cases(draw, bad=None):
    sde = SDES[draw(st.sampled_from(["vp", "subvp", "ve"]))]  # T = 1: a short solve
    B = draw(st.integers(1, 3))
    D = draw(st.sampled_from([(2,), (3,)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    x = torch.randn((B, *D), generator=torch.Generator().manual_seed(draw(st.integers(0, 9))), dtype=dtype) * S2**0.5
    kw = dict(model=gaussian_score(sde), sde=sde, x=x, estimator=draw(st.sampled_from(["exact", "hutchinson"])),
              method=draw(st.sampled_from(["dopri5", "bosh3"])), rtol=draw(st.sampled_from([1e-3, 1e-4])),
              atol=draw(st.sampled_from([1e-3, 1e-4])))
    if kw["estimator"] == "hutchinson":
        kw["n_probes"] = draw(st.integers(1, 3))
        kw["probe"] = draw(st.sampled_from(["rademacher", "gaussian"]))
    if draw(st.booleans()):
        kw["t_min"] = draw(st.sampled_from([sde.t_min, 0.01, 0.1]))
    if draw(st.booleans()):
        kw["seeds"] = list(range(B))
    elif draw(st.booleans()):
        kw["generator"] = torch.Generator().manual_seed(1)
    if draw(st.booleans()):
        kw["dequantize"] = False
    if bad == "x":
        kw["x"] = draw(st.sampled_from([x.tolist(), x[0], x.to(torch.complex64), torch.full((B, *D), float("nan")),
                                        torch.full((B, *D), float("inf")), torch.zeros(0, *D), x.to(torch.int64), "x"]))
    elif bad == "sde":
        kw["sde"] = "vp"
    elif bad is not None and bad != "x":
        kw[bad] = draw(st.sampled_from({
            "estimator": ["nope", 3, None], "n_probes": [0, -1, 1.5, True, "2"], "probe": ["normal", None, 1],
            "method": ["rk45", None, 3], "rtol": [0.0, -1.0, float("nan"), "1e-3", True],
            "atol": [0.0, -1e-3, float("inf"), None], "t_min": [-0.1, 1.0, 5.0, float("nan"), "0.1", True],
            "generator": ["g", 3], "seeds": [[1.5] * B, [0] * (B + 1), [-1] * B, 7], "dequantize": [0.5, 17, "8", -1],
            "cond": [[1], "y"], "data_range": [(1.0, -1.0), (0.0,), "ab", (float("nan"), 1.0)],
            "options": [[1], "x"]}[bad]))
        if bad in ("n_probes", "probe"):
            kw["estimator"] = "hutchinson"
        if bad == "data_range":
            kw["x"] = torch.randint(0, 256, (B, *D))
            kw["dequantize"] = 8
        if bad in ("generator", "seeds"):
            kw.pop("seeds" if bad == "generator" else "generator", None)
    return Case(kw, bad, {"x": ("x",), "sde": ("sde", "LinearSDE", "ScoreModel")}.get(bad, ()))


def _check_ll(case):
    if case.bad is None and case.kwargs.get("seeds") is not None and case.kwargs.get("generator") is not None:
        case.kwargs.pop("generator")
    res = run_case(log_likelihood, case)
    if res is None:
        return
    kw = case.kwargs
    B = kw["x"].shape[0]
    assert res.logp.shape == (B,) and res.logp.dtype == torch.float64 and bool(torch.isfinite(res.logp).all())
    assert res.nfe > 0 and res.z.shape == kw["x"].shape and bool(torch.isfinite(res.z).all())
    hutch = kw["estimator"] == "hutchinson"
    assert (res.stderr is not None) == (hutch and kw.get("n_probes", 1) >= 2)
    if not hutch:
        # Exact divergence, exact score: logp is the noised Gaussian's log-density at t_min, up to the ODE tolerance
        # (rtol/atol <= 1e-3 over 2-3 dims) and the prior's mismatch at T (VP/sub-VP: alpha(T)^2 S2 ~ 1e-5; VE:
        # sigma_min^2 + S2 against sigma_max^2 = 2500, 1e-4 relative): 0.05 nats is 10x the largest of these seen.
        sde, t0 = kw["sde"], float(kw.get("t_min") or kw["sde"].t_min)
        tt = torch.tensor(t0, dtype=torch.float64)
        var = float(sde.alpha(tt)) ** 2 * S2 + float(sde.sigma(tt)) ** 2
        x64 = kw["x"].double().reshape(B, -1)
        exact = -0.5 * (x64**2).sum(1) / var - 0.5 * x64.shape[1] * math.log(2 * math.pi * var)
        assert torch.allclose(res.logp, exact, atol=0.05), (res.logp, exact, case)


@fuzz(25)
@given(ll_cases())
def test_log_likelihood_valid(case):
    _check_ll(case)


@pytest.mark.parametrize("bad", LL_BAD)
@fuzz(6)
@given(data=st.data())
def test_log_likelihood_hostile(bad, data):
    _check_ll(data.draw(ll_cases(bad)))


# ------------------------------------------------------------------------------------------ checkpoints
import hashlib  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from scoresde.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

CKPT_FILES = ("config.json", "state.json", "model.safetensors", "optimizer.safetensors", "latest")


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory):
    from scoresde.data import load_dataset
    from scoresde.nets import build_net
    from scoresde.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("fuzz_ckpt") / "run"
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=8, depth=1, emb_dim=8)
    cfg = TrainConfig(steps=2, batch_size=32, warmup=1, log_every=1, ckpt_every=0, progress=False, verbose=False)
    Trainer(scoresde.ScoreModel(net, VPSDE(), "eps"), load_dataset("gmm", n=128), cfg, out=out).fit()
    return out


def _paths(obj, prefix=(), depth=0):
    """JSON paths into obj (lists: their first 3 items), the root excluded."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj[:3]) if isinstance(obj, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        if depth < 4:
            out += _paths(v, prefix + (k,), depth + 1)
    return out


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=4)

ST_DTYPES = ["F32", "F64", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "C64", "XX", ""]


def _manifest(folder: Path, fname: str) -> None:
    state = json.loads((folder / "state.json").read_text())
    data = (folder / fname).read_bytes()
    if isinstance(state.get("files"), dict):
        state["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "state.json").write_text(json.dumps(state))


@st.composite
def ckpt_mutations(draw):
    kind = draw(st.sampled_from(["json", "json", "json", "json", "header", "header", "bytes", "latest"]))
    if kind == "json":
        return kind, draw(st.sampled_from(["config.json", "state.json"])), draw(st.integers(0, 10**6)), \
            draw(st.sampled_from(["set", "set", "delete"])), draw(JSON_VALUES)
    if kind == "header":
        return kind, draw(st.sampled_from(["model.safetensors", "optimizer.safetensors"])), draw(st.integers(0, 10**6)), \
            draw(st.sampled_from(["dtype", "shape", "offsets", "add", "drop"])), \
            (draw(st.sampled_from(ST_DTYPES)), draw(st.lists(st.integers(-1, 40), max_size=3)),
             draw(st.lists(st.integers(-5, 10**7), min_size=0, max_size=3)))
    if kind == "bytes":
        return kind, draw(st.sampled_from(["model.safetensors", "optimizer.safetensors"])), draw(st.integers(0, 10**6)), \
            draw(st.integers(1, 255)), None
    return kind, "latest", 0, draw(st.sampled_from(["step-9999999", "../../etc", "", "step-0000002\nx", "\x00"])), None


def _mutate(folder: Path, mutation) -> None:
    kind, fname, pick, op, value = mutation
    f = folder / fname
    if kind == "latest":
        (folder.parent / "latest").write_text(op)
        return
    if kind == "json":
        obj = json.loads(f.read_text())
        paths = _paths(obj)
        path = paths[pick % len(paths)]
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        f.write_text(json.dumps(obj))
        if fname != "state.json":
            _manifest(folder, fname)
        return
    data = f.read_bytes()
    if kind == "bytes":  # flip one byte of the tensor data (after the header)
        n = struct.unpack("<Q", data[:8])[0]
        body = bytearray(data)
        if len(body) > 8 + n:
            i = 8 + n + pick % (len(body) - 8 - n)
            body[i] ^= op
        f.write_bytes(bytes(body))
        _manifest(folder, fname)
        return
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    dtype, shape, offsets = value
    if names:
        name = names[pick % len(names)]
        if op == "dtype":
            header[name]["dtype"] = dtype
        elif op == "shape":
            header[name]["shape"] = shape
        elif op == "offsets":
            header[name]["data_offsets"] = offsets
        elif op == "drop":
            del header[name]
        else:
            header[f"net.fuzz{pick}"] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n:])
    _manifest(folder, fname)


def _names_a_file(msg: str) -> bool:
    return any(name in msg for name in CKPT_FILES) or "checkpoint" in msg


@fuzz(200)
@given(mutation=ckpt_mutations())
def test_checkpoint_loading_survives_mutations(ckpt_run, mutation):
    tmp = Path(tempfile.mkdtemp(prefix="fuzzck-"))
    try:
        run = tmp / "run"
        shutil.copytree(ckpt_run, run)
        folder = run / (ckpt_run / "latest").read_text().strip()
        _mutate(folder, mutation)
        try:
            ck = load_checkpoint(run, ema=False)
        except (ValueError, TypeError) as err:
            assert isinstance(err, CheckpointError), f"{type(err).__name__} is not a CheckpointError: {err}"
            assert _names_a_file(str(err)), str(err)
            return
        x = torch.randn(4, *(ck.data_shape or (2,)))  # a checkpoint without data_shape is allowed (not sampleable)
        with torch.no_grad():
            pred = ck.model(x, torch.full((4,), 0.5))
        assert bool(torch.isfinite(pred.eps).all()), mutation  # what loads, works
        from scoresde.train import Trainer

        try:
            tr = Trainer.resume(run, out=tmp / "resumed", steps=ck.step + 1)
        except (ValueError, TypeError) as err:
            assert _names_a_file(str(err)) or "data" in str(err), f"{type(err).__name__}: {err}"
            return
        assert math.isfinite(float(tr.train_step())), mutation  # what resumes, trains
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the CLI
import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402

from scoresde.cli import build_parser, main  # noqa: E402


def _flags(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[-1] if a.option_strings[0] == "-n" else a.option_strings[0]: a
            for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"}


def _base(command: str, tmp: Path, ckpt: Path) -> dict[str, str | None]:
    """A cheap valid argv of each command (flag -> value; None: a switch)."""
    data = tmp / "data.npy"
    if not data.exists():
        np.save(data, np.random.default_rng(0).standard_normal((4, 2)))
    return {
        "demo": {"--out": str(tmp / "demo"), "--exact": None, "--samplers": "ddim:2", "-n": "16", "--threads": "1"},
        "train": {"--data": "moons", "--n-data": "64", "--net-kwargs": '{"hidden": 8, "depth": 1}', "--steps": "1",
                  "--batch-size": "32", "--warmup": "1", "--out": str(tmp / "run"), "--quiet": None, "--no-progress": None,
                  "--threads": "1"},
        "sample": {"--checkpoint": str(ckpt), "--sampler": "ddim", "--steps": "2", "-n": "4", "--out": str(tmp / "s.npz"),
                   "--no-png": None, "--threads": "1"},
        "likelihood": {"--checkpoint": str(ckpt), "--data": str(data), "--rtol": "1e-3", "--atol": "1e-3",
                       "--out": str(tmp / "l.json")},
        "bench": {"--samplers": "ddim", "--steps": "2", "--n": "64", "--floor-repeats": "2", "--no-warmup": None,
                  "--min-time": "0", "--max-timed-runs": "1", "--metrics": "sw2", "--out": str(tmp / "bench"),
                  "--no-progress": None, "--threads": "1"},
        "schedule": {"--problem": "gmm2d-vp", "--schedule": "uniform", "--steps": "3", "--out": str(tmp / "g.json"),
                     "--threads": "1"},
    }[command]


# values a flag of each kind must refuse
INT_BAD = ["abc", "2.5", "", "1e3", "-1"]
FLOAT_BAD = ["abc", "", "nan", "-inf"]
NONNEG_FLOATS = {"--lr", "--weight-decay", "--grad-clip", "--ema-decay", "--rtol", "--atol", "--t-min", "--min-time"}
ZERO_BAD = {"train": {"--steps", "--batch-size", "--log-every", "--snapshot-steps", "--n-data"},
            "sample": {"-n", "--steps"}, "likelihood": {"--n-probes", "--batch-size"},
            "bench": {"--n", "--floor-repeats", "--max-timed-runs"}, "demo": {"-n"},
            "schedule": {"--nfe", "--steps", "--n-samples", "--candidates"}}
STR_BAD = {
    "--data": ["nope", "/dev/null", "x.txt"], "--net-kwargs": ["{bad", "[1]", '{"hidden": -1}', '{"nope": 1}'],
    "--sde-kwargs": ["{bad", '{"beta_max": -1}', '{"nope": 1}'], "--loss-kwargs": ["{bad", '{"nope": 1}'],
    "--sigma-data": ["abc", "-1", "nan"], "--device": ["tpu", "cuda:9", ""], "--option": ["x", "=1", "eta=abc", "nope=1"],
    "--samplers": ["nope", "ddim(", "ddim(eta=x)", "", "nope:10", "ddim:x", "ddim:-1"],
    "--steps": ["x", "0", "-1", "2.5", ""], "--problems": ["nope", "gmm2d-xx", "ckpt:/nonexistent"],
    "--problem": ["nope", "ckpt:/nonexistent"], "--seeds": ["x", "-1", "1.5"], "--metrics": ["nope"],
    "--method": ["nope"], "--key": ["nope"], "--checkpoint": ["/nonexistent"], "--sampler": ["nope", "ddim("],
}
NAMED_BY = {"--samplers": ("--samplers", "sampler"), "--problems": ("problem",), "--problem": ("problem",),
            "--data": ("data", "dataset"), "--checkpoint": ("checkpoint",), "--option": ("option", "KEY=VALUE", "eta", "nope"),
            "--net-kwargs": ("net", "JSON", "hidden", "nope"), "--sde-kwargs": ("SDE", "JSON", "beta_max", "nope"),
            "--loss-kwargs": ("loss", "JSON", "nope"), "--device": ("device", "CUDA"), "--key": ("key",),
            "--method": ("method",), "--metrics": ("metric",), "--sampler": ("sampler",)}


def _hostile_values(command: str, flag: str, action: argparse.Action) -> list[str]:
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return []
    if action.choices is not None:
        return ["nope", ""]
    name = getattr(action.type, "__name__", "")
    if name.startswith("integer >= "):  # scoresde.commands.int_arg(lo): lo - 1 is refused too
        return INT_BAD + [str(int(name.split()[-1]) - 1)]
    if action.type is int:
        return INT_BAD + (["0"] if flag in ZERO_BAD.get(command, ()) else [])
    if action.type is float:
        return FLOAT_BAD + (["-1"] if flag in NONNEG_FLOATS else [])
    if command == "bench" and flag == "--steps":
        return STR_BAD["--steps"]
    if command == "likelihood" and flag == "--data":
        return ["/nonexistent.npy", "x.txt"]
    return STR_BAD.get(flag, []) if flag not in ("--out", "--png") else []


def _argv(command: str, values: dict) -> list[str]:
    argv = [command]
    for k, v in values.items():
        argv += [k] if v is None else [k, v]
    return argv


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    finally:
        torch.set_num_threads(1)
    return code, err.getvalue()


OPTIMISER_FLAGS = {"--sampler", "--nfe", "--n-samples", "--n-validate", "--candidates", "--cost", "--objective", "--seed"}
CLI_CASES = [(c, f, v) for c in ("demo", "train", "sample", "likelihood", "bench", "schedule")
             for f, a in _flags(c).items() for v in _hostile_values(c, f, a)]


@pytest.mark.parametrize("command", ["demo", "train", "sample", "likelihood", "bench", "schedule"])
def test_cli_hostile_flags_are_one_line_exit_2(command, ckpt_run, tmp_path):
    """Every flag of every command, given each value of its kind that it must refuse: exit 2, one line on
    stderr naming the flag, no traceback, no other exception. (Enumerated rather than drawn: the cases are
    finite, and all of them run.)"""
    failures = []
    for c, flag, value in CLI_CASES:
        if c != command:
            continue
        values = dict(_base(command, tmp_path, ckpt_run))
        if command == "schedule" and flag in OPTIMISER_FLAGS:  # these act in the optimising mode
            values.pop("--schedule"), values.pop("--steps")
            values.update({"--sampler": "ddim", "--nfe": "3", "--n-samples": "4", "--n-validate": "0", "--candidates": "8",
                           "--no-refine": None})
        values[flag] = value
        try:
            code, err = _run_cli(_argv(command, values))
        except Exception as exc:  # noqa: BLE001 - any escape is a failure of the property
            failures.append(f"{flag} {value!r}: raised {type(exc).__name__}: {exc}")
            continue
        lines = err.strip().splitlines()
        names = NAMED_BY.get(flag, ()) + (flag, flag.lstrip("-").replace("-", "_"))
        if code != 2 or len(lines) != 1 or "Traceback" in err or not any(n in err for n in names):
            failures.append(f"{flag} {value!r}: exit {code}, stderr {err.strip()[:300]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", ["demo", "train", "sample", "likelihood", "bench", "schedule"])
def test_cli_valid_base_runs(command, ckpt_run, tmp_path):
    code, err = _run_cli(_argv(command, _base(command, tmp_path, ckpt_run)))
    assert code == 0, err


@pytest.mark.parametrize("command", ["demo", "train", "sample", "likelihood", "bench", "schedule"])
@fuzz(15)
@given(data=st.data())
def test_cli_hostile_combinations(command, ckpt_run, tmp_path_factory, data):
    """Up to three flags of one command made hostile at once (any order): still exit 2 with one line."""
    tmp = tmp_path_factory.mktemp("cli")
    cases = [(f, v) for c, f, v in CLI_CASES if c == command]
    picks = data.draw(st.lists(st.sampled_from(cases), min_size=1, max_size=3, unique_by=lambda fv: fv[0]))
    values = dict(_base(command, tmp, ckpt_run))
    values.update(dict(picks))
    code, err = _run_cli(_argv(command, values))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (picks, code, err)
