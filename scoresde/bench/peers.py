"""The peers' samplers in a sweep: k-diffusion's sampling functions and diffusers' schedulers.

A peer entry is named ``LIBRARY:NAME``:

* ``kdiff:heun``, ``kdiff:dpmpp_2m``, ... runs k-diffusion's ``sample_NAME`` on
  :func:`~scoresde.adapters.to_k_diffusion` of the problem's model, on k-diffusion's own sigma list
  (``get_sigmas_karras`` by default; ``schedule=exponential|polyexponential``, ``rho=``) over the
  SDE's range [sigma~(t_min), sigma~(T)] with ``steps + 1`` levels and the final 0.
  :func:`~scoresde.adapters.grid_from_sigmas` turns that list into the scoresde grid it is
  recorded as: ``steps`` intervals plus the jump to 0 (scoresde's final denoising step), so
  ``kdiff:heun`` at 10 steps is scoresde's ``heun`` at 10 steps on the same grid.
* ``diffusers:DDIM``, ``diffusers:DPMSolverMultistep``, ... (the class name, with or without
  ``Scheduler``) runs the scheduler's own loop (``scale_model_input``, the model, ``step``) on
  its ``set_timesteps(steps)`` timesteps, with :func:`~scoresde.adapters.to_diffusers` of the
  problem's model as its UNet. The scheduler's table is the problem's SDE at
  ``num_train_timesteps`` (default 1000) times t_k uniform in [t_min, T] (``table=logsnr``,
  ``karras`` or ``quadratic`` space them as that scoresde grid), given as ``trained_betas`` from
  ``abar_k = 1 / (1 + sigma~(t_k)^2)``, so every timestep is a noise level of the problem;
  ``clip_sample`` is off unless given (the data are not images in [-1, 1]). An SDE whose levels a
  float32 table cannot hold (sigma~ below 2.4e-4: sub-VP at t_min) is skipped with a note.

Both start from the sweep's x_T (the same per-sample seeds as scoresde's samplers, mapped into the
peer's variables at t = T) and count NFE with the model wrapper. Stochastic peers draw per-sample
noise: k-diffusion's ``noise_sampler`` draws from the same counter-based per-sample streams as
scoresde (``sample_dpmpp_sde``, whose draws overlap in time, gets k-diffusion's Brownian tree with one
seed per sample), diffusers' ``step`` gets one ``torch.Generator`` per sample. Options given to an
entry go to the k-diffusion function, or to the scheduler's constructor or its ``step``.

A peer that is not installed gives rows that say so (status ``unavailable``), not an error;
they run once it is installed. docs/benchmarking.md ("Peers") has the details.
"""

from __future__ import annotations

import inspect
import time
import warnings
from typing import Any, Sequence

import torch

from .._utils import append_dims, as_time

__all__ = ["LIBRARIES", "QUICK_PEERS", "DEFAULT_PEERS", "LOADERS", "is_peer", "unavailable", "check_options",
           "check_problem", "run_peer", "scheduler_for_sde", "table_times"]

#: peer libraries by prefix
LIBRARIES = {"kdiff": "k-diffusion", "diffusers": "diffusers"}
#: the peers of ``scoresde bench --peers --quick``
QUICK_PEERS = ("kdiff:heun", "kdiff:dpmpp_2m", "kdiff:euler_ancestral", "kdiff:lms",
               "diffusers:DDIM", "diffusers:DPMSolverMultistep", "diffusers:UniPCMultistep", "diffusers:EulerDiscrete")
#: the peers of ``scoresde bench --peers``
DEFAULT_PEERS = QUICK_PEERS + (
    "kdiff:euler", "kdiff:dpm_2", "kdiff:dpm_2_ancestral", "kdiff:dpmpp_2s_ancestral", "kdiff:dpmpp_2m_sde",
    "kdiff:dpmpp_3m_sde", "diffusers:HeunDiscrete", "diffusers:DPMSolverSinglestep",
    "diffusers:DEISMultistep", "diffusers:LMSDiscrete", "diffusers:EulerAncestralDiscrete", "diffusers:DDPM",
)

#: k-diffusion functions without a sigma list (their own adaptive or sigma-range loops)
_KD_NOT_FIXED = ("dpm_fast", "dpm_adaptive")
#: k-diffusion functions whose noise draws overlap in time: they need its Brownian tree
_KD_TREE = ("dpmpp_sde",)
_KD_MANAGED = ("model", "x", "sigmas", "extra_args", "callback", "disable", "noise_sampler")
_KD_CHURN = ("s_churn",)  # drawn from torch's global generator inside k-diffusion: not per sample
KD_SCHEDULES = ("karras", "exponential", "polyexponential")
#: diffusers config fields that define the table: the bench sets them from the problem's SDE
_DF_TABLE = ("trained_betas", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr")
_DF_STEP_MANAGED = ("model_output", "timestep", "sample", "generator", "return_dict", "variance_noise")
_NUMPY_COPY = "__array__ implementation doesn't accept a copy keyword"  # diffusers' code under numpy 2


def is_peer(name: str) -> bool:
    """Whether a sweep entry names a peer's sampler (``kdiff:...`` or ``diffusers:...``)."""
    return isinstance(name, str) and name.partition(":")[0] in LIBRARIES and bool(name.partition(":")[2])


def _split(name: str) -> tuple[str, str]:
    lib, _, target = name.partition(":")
    if lib not in LIBRARIES or not target:
        raise ValueError(f"peer sampler {name!r} must be LIBRARY:NAME with LIBRARY one of: {', '.join(LIBRARIES)}")
    return lib, target


def _kdiff():
    from ..adapters import k_diffusion_sampling

    return k_diffusion_sampling()


def _diffusers():
    import diffusers

    return diffusers


#: how each library is imported (tests replace an entry to simulate a missing peer)
LOADERS = {"kdiff": _kdiff, "diffusers": _diffusers}


def unavailable(name: str) -> str | None:
    """Why the peer of ``name`` cannot run here (``"not installed: ..."``), or None when it can."""
    lib, _ = _split(name)
    try:
        LOADERS[lib]()
    except ImportError as err:
        return f"{LIBRARIES[lib]} not installed ({err})"
    return None


# ------------------------------------------------------------------------------------ k-diffusion
def _kd_function(K, target: str):
    fn = getattr(K, f"sample_{target}", None)
    if fn is None or target in _KD_NOT_FIXED:
        names = sorted(n[len("sample_"):] for n in dir(K) if n.startswith("sample_") and n[len("sample_"):] not in _KD_NOT_FIXED)
        why = " (it has no sigma list: not a fixed-step sampler)" if target in _KD_NOT_FIXED else ""
        raise ValueError(f"peer sampler 'kdiff:{target}' is not one of the accepted values{why}: "
                         f"{', '.join('kdiff:' + n for n in names)}")
    return fn


def _kd_options(fn, target: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(grid options, function options), checked against k-diffusion's signature."""
    params = inspect.signature(fn).parameters
    accepted = [p for p in params if p not in _KD_MANAGED]
    grid = {k: options[k] for k in ("schedule", "rho") if k in options}
    rest = {k: v for k, v in options.items() if k not in grid}
    bad = [k for k in rest if k not in accepted]
    if bad:
        raise ValueError(f"unknown option {bad[0]!r} for peer sampler 'kdiff:{target}'; accepted: "
                         f"{', '.join(['schedule', 'rho'] + accepted)}")
    if grid.get("schedule", "karras") not in KD_SCHEDULES:
        raise ValueError(f"schedule={grid['schedule']!r} for 'kdiff:{target}' is not one of the accepted values: "
                         f"{', '.join(KD_SCHEDULES)} (k-diffusion's get_sigmas_*)")
    for k in _KD_CHURN:
        if rest.get(k, 0) not in (0, 0.0):
            raise ValueError(f"{k}={rest[k]!r} for 'kdiff:{target}': k-diffusion draws churn noise from torch's global "
                             "generator (not per sample), so the benchmark runs it with 0 only")
    return grid, rest


def _kd_sigmas(K, grid: dict[str, Any], steps: int, s_min: float, s_max: float, device) -> torch.Tensor:
    """k-diffusion's own sigma list: steps + 1 levels from s_max to s_min, then 0."""
    schedule = grid.get("schedule", "karras")
    if schedule == "karras":
        return K.get_sigmas_karras(steps + 1, s_min, s_max, rho=float(grid.get("rho", 7.0)), device=device)
    if schedule == "polyexponential":
        return K.get_sigmas_polyexponential(steps + 1, s_min, s_max, rho=float(grid.get("rho", 1.0)), device=device)
    return K.get_sigmas_exponential(steps + 1, s_min, s_max, device=device)


def _run_kdiff(target, model, sde, x_T, noise, seeds, options, steps):
    from ..adapters import grid_from_sigmas, to_k_diffusion

    K = LOADERS["kdiff"]()
    fn = _kd_function(K, target)
    grid, opts = _kd_options(fn, target, options)
    D = to_k_diffusion(model)
    sigmas = _kd_sigmas(K, grid, steps, D.sigma_min, D.sigma_max, x_T.device).to(x_T.dtype)
    sigmas[0], sigmas[-2] = D.sigma_max, D.sigma_min  # k-diffusion computes in float32: exact ends in float64 runs
    ts, _ = grid_from_sigmas(sde, sigmas)  # the scoresde grid it is recorded as; the final 0 is the denoising step
    ts = ts.clamp(sde.t_min, sde.T)  # float32 runs: the ends to round-off
    x = x_T / append_dims(sde.alpha(as_time(sde.T)), x_T.ndim).to(x_T.dtype)  # k-diffusion's x~ = x / alpha
    params = inspect.signature(fn).parameters
    if "noise_sampler" in params:
        if target in _KD_TREE:  # overlapping draws: one Brownian tree per sample, seeded per sample
            opts["noise_sampler"] = K.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                               seed=[int(s) for s in seeds])
        else:  # one draw per step over disjoint intervals: the per-sample streams, continuing after x_T
            opts["noise_sampler"] = lambda sigma, sigma_next: noise(x)
    x = fn(D, x, sigmas, disable=True, **opts)
    return x, ts


# ------------------------------------------------------------------------------------ diffusers
def _scheduler_class(target: str):
    df = LOADERS["diffusers"]()
    for name in (target, f"{target}Scheduler"):
        cls = getattr(df, name, None)
        if isinstance(cls, type) and hasattr(cls, "set_timesteps") and hasattr(cls, "step") and \
                "trained_betas" in inspect.signature(cls.__init__).parameters:
            return cls
    names = sorted(n[: -len("Scheduler")] for n in dir(df) if n.endswith("Scheduler") and isinstance(getattr(df, n), type)
                   and "trained_betas" in inspect.signature(getattr(df, n).__init__).parameters)
    raise ValueError(f"peer sampler 'diffusers:{target}' is not one of the accepted values (diffusers schedulers with a "
                     f"DDPM table): {', '.join('diffusers:' + n for n in names)}")


def table_times(sde, num_train_timesteps: int = 1000, table: str = "uniform") -> torch.Tensor:
    """The SDE times (increasing, float64) of a scheduler table's timesteps 0 .. N-1: the scoresde grid
    ``table`` (``uniform`` in t by default, or ``logsnr``, ``karras``, ``quadratic``) from t_min to T."""
    from ..schedules import GRIDS, make_grid

    N = int(num_train_timesteps) if not isinstance(num_train_timesteps, bool) else 0
    if N != num_train_timesteps or N < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2; got {num_train_timesteps!r}")
    if table not in GRIDS:
        raise ValueError(f"table={table!r} is not one of the accepted values: {', '.join(GRIDS.names())}")
    return make_grid(sde, N - 1, table).flip(0)


def scheduler_for_sde(cls, sde, num_train_timesteps: int = 1000, *, table: str = "uniform", **config: Any):
    """A diffusers scheduler whose DDPM table is ``sde`` at the times :func:`table_times` gives.

    ``abar_k = 1 / (1 + sigma~(t_k)^2)`` (the variance-preserving table with the SDE's noise levels),
    given as ``trained_betas``. diffusers keeps them, and their cumulative product, in float32, so a
    level with ``sigma~ < 2.4e-4`` (abar rounds to 1) cannot be held: that is refused."""
    t = table_times(sde, num_train_timesteps, table)
    abar = torch.sigmoid(2.0 * sde.lam(t))
    betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    abar32 = torch.cumprod(1.0 - betas.to(torch.float32), 0)
    if not (float(abar32[0]) < 1.0 and float(abar32[-1]) > 0.0):
        raise ValueError(
            f"{type(sde).__name__} spans sigma~ = {float(sde.sigma_tilde(t[0])):.3g} .. {float(sde.sigma_tilde(t[-1])):.3g}; "
            "a diffusers table (float32 alphas_cumprod) cannot hold it (abar rounds to 1 below sigma~ = 2.4e-4)"
        )
    return cls(num_train_timesteps=len(t), trained_betas=betas.tolist(), **config)


def _df_options(cls, target: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constructor config, step keyword arguments), checked against diffusers' signatures."""
    init = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    step = [p for p in inspect.signature(cls.step).parameters if p not in ("self", *_DF_STEP_MANAGED)]
    config, step_kw = {}, {}
    for k, v in options.items():
        if k == "table":
            config[k] = v
        elif k in _DF_TABLE:
            raise ValueError(f"option {k!r} for 'diffusers:{target}': the benchmark builds the scheduler's table from "
                             "the problem's SDE (num_train_timesteps sets its size, table its spacing)")
        elif k in init:
            config[k] = v
        elif k in step:
            step_kw[k] = v
        else:
            ok = ["table"] + [p for p in init if p not in _DF_TABLE] + step
            raise ValueError(f"unknown option {k!r} for peer sampler 'diffusers:{target}'; accepted: {', '.join(ok)}")
    if "clip_sample" in init:
        config.setdefault("clip_sample", False)
    return config, step_kw


def _run_diffusers(target, model, sde, x_T, seeds, options, steps):
    from ..adapters import to_diffusers

    cls = _scheduler_class(target)
    config, step_kw = _df_options(cls, target, options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NUMPY_COPY, category=DeprecationWarning)
        sched = scheduler_for_sde(cls, sde, **config)
        sched.set_timesteps(steps, device=x_T.device)
        unet = to_diffusers(model, sched)
        table = unet.table
        # The sweep's x_T at t = T as the VP state at timestep N-1, then in the scheduler's own variables at
        # its first timestep (scale_model_input maps them to the VP state: 1 for DDIM, 1/sqrt(1 + s^2) for Euler).
        x_vp = x_T * append_dims(table.alpha(as_time(1.0)) / sde.alpha(as_time(sde.T)), x_T.ndim).to(x_T.dtype)
        c0 = sched.scale_model_input(torch.ones_like(x_T), sched.timesteps[0]).reshape(-1)[0]
        x = x_vp / c0
        if "generator" in inspect.signature(sched.step).parameters:  # stochastic steps: one generator per sample
            step_kw["generator"] = [torch.Generator(device=x_T.device).manual_seed(int(s)) for s in seeds]
        for k in sched.timesteps:
            out = unet(sched.scale_model_input(x, k), k).sample
            x = sched.step(out, k, x, **step_kw).prev_sample
    ks = sched.timesteps.detach().to("cpu", torch.float64)
    ts = sde.inverse_lambda(table.lam(table.t_from_timestep(ks)))  # the problem's times of the scheduler's timesteps
    ts = ts.clamp(sde.t_min, sde.T)  # diffusers' float32 table: the ends to round-off
    return x, ts


# ------------------------------------------------------------------------------------ front
def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError for an unknown peer sampler or option (the peer must be installed)."""
    lib, target = _split(name)
    if lib == "kdiff":
        _kd_options(_kd_function(LOADERS["kdiff"](), target), target, options)
    else:
        _df_options(_scheduler_class(target), target, options)


def check_problem(name: str, options: dict[str, Any], sde) -> None:
    """Raise ValueError when the peer cannot run on this SDE (a diffusers table it cannot hold)."""
    lib, target = _split(name)
    if lib == "diffusers":
        config, _ = _df_options(_scheduler_class(target), target, options)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NUMPY_COPY, category=DeprecationWarning)
            scheduler_for_sde(_scheduler_class(target), sde, **config)


def run_peer(name: str, model: Any, sde, shape: Sequence[int], steps: int | None, *, seeds, device, dtype,
             options: dict[str, Any] | None = None):
    """Sample ``shape`` with the peer sampler ``name``: a :class:`~scoresde.samplers.SampleResult`.

    x_T is the front door's (``PerSampleNoise(seeds)`` times the prior std), NFE is the model
    wrapper's count, ``ts`` the scoresde grid of the peer's noise levels, ``wall_time`` the loop."""
    from ..model import as_model
    from ..random import PerSampleNoise, make_seeds
    from ..samplers.api import SampleResult

    lib, target = _split(name)
    if steps is None or isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"peer sampler {name!r} needs steps, a positive integer; got {steps!r}")
    device = torch.device(device)
    model = as_model(model, sde)
    used = make_seeds(shape[0], seeds=seeds, device=device)
    noise = PerSampleNoise(used)
    x_T = noise(torch.empty(tuple(shape), device=device, dtype=dtype)) * sde.prior_std()
    nfe0 = model.nfe
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        if lib == "kdiff":
            x, ts = _run_kdiff(target, model, sde, x_T, noise, used.tolist(), dict(options or {}), int(steps))
        else:
            x, ts = _run_diffusers(target, model, sde, x_T, used.tolist(), dict(options or {}), int(steps))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        from ..model import NonFiniteError

        raise NonFiniteError(f"peer sampler {name!r} produced NaN or Inf samples")
    return SampleResult(x=x.to(dtype), nfe=model.nfe - nfe0, ts=ts, sampler=name, options=dict(options or {}),
                        wall_time=wall, seeds=used)
