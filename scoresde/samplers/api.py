"""The front door: ``sample(model, sde, shape, sampler=NAME, steps=N, ...)``.

Does all the shared work once (validation, the grid, x_T, per-sample noise, the model wrapper,
capability checks, progress, trajectory, the final denoising step, NFE and timing) so that each
sampler function holds only its paper's loop.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..distributed import pick_device
from ..model import NonFiniteError, ScoreModel, as_model
from ..random import GeneratorNoise, IndexedNoise, PerSampleNoise, make_seeds
from ..registry import Bool, Choice, Int, OneOf
from ..schedules import make_grid
from ..sde import LinearSDE
from . import registry
from .final import final_step

__all__ = ["sample", "SampleResult"]


@dataclass
class SampleResult:
    """What :func:`sample` returns."""

    x: Tensor  # (B, *D) the samples
    nfe: int  # network evaluations actually made (batch calls), final denoising included
    ts: Tensor  # the float64 grid that was used
    sampler: str
    options: dict[str, Any]
    wall_time: float  # seconds (device-synchronised)
    seeds: Tensor | None = None  # per-sample seeds (None when a batch generator/noise was used)
    trajectory: Tensor | None = None  # (steps + 1, B, *D) when asked for
    extra: dict[str, Any] = field(default_factory=dict)  # sampler-specific statistics


_FRONT_DOOR = (
    "steps", "generator", "seeds", "noise", "schedule", "rho", "t_min", "T", "denoise", "x_T",
    "return_trajectory", "progress", "device", "dtype", "cond", "guidance", "grad", "max_batch", "engine",
)
#: how a fixed-step sampler is executed: its eager loop (the readable reference), or its coefficient
#: table through scoresde.engine (same noise stream; see docs/performance.md).
ENGINE_NAMES = ("eager", "torch", "compiled", "fused", "graph")


def _model_device(model: Any, cond: dict | None = None) -> torch.device:
    """The model's device; for a parameter-free model (a lambda) that of the ``cond`` tensors, else the CPU."""
    if isinstance(model, nn.Module):
        for p in (*model.parameters(), *model.buffers()):
            return p.device
    for v in (cond or {}).values():
        if isinstance(v, Tensor):
            return v.device
    if torch.cuda.is_available():
        warnings.warn("sample(): the model has no parameters or buffers to take the device from (a lambda or a plain "
                      "function?), so it samples on the CPU although CUDA is available; pass device=", stacklevel=3)
    return torch.device("cpu")


def sample(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    shape: Sequence[int],
    sampler: str = "euler_maruyama",
    steps: int | None = None,
    *,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    noise: Any = None,
    schedule: str | Sequence[float] | Tensor | None = None,
    rho: float = 7.0,
    t_min: float | None = None,
    T: float | None = None,
    denoise: bool | str = True,
    x_T: Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    cond: dict[str, Any] | None = None,
    guidance: Any = None,
    grad: bool = False,
    max_batch: int | None = None,
    engine: str = "eager",
    **options: Any,
) -> SampleResult:
    """Draw samples by integrating the reverse process of ``sde`` with a registered sampler.

    Args:
        model: a :class:`ScoreModel` or a plain ``score_fn(x, t)`` (lifted to one).
        sde: the linear SDE.
        shape: (B, *D), the batch of samples to draw.
        sampler: a registered name (``scoresde.samplers.available()``).
        steps: number of time intervals of the grid (NFE per step is the sampler's; see docs).
            Default: the sampler's paper default.
        generator: draws the per-sample seeds (sample i is the same for any batch size).
        seeds: explicit per-sample integer seeds (overrides ``generator``).
        noise: a custom noise source ``noise(like) -> standard normal``; with it, x_T and all
            noise come from it and the per-sample guarantee is the source's own. A
            ``torch.Generator`` here means one batch-wide stream (fastest, batch-dependent).
        schedule: ``uniform``, ``karras``, ``logsnr``, ``quadratic`` or explicit decreasing
            times; default: the sampler's.
        rho: Karras schedule exponent.
        t_min, T: the end points of the grid (default: the SDE's).
        denoise: the final step from t_min (one more NFE): ``True`` or ``"tweedie"`` (x <- x0(x, t_min),
            the posterior mean; NCSNv2's and EDM's last step), ``"ode"`` (one Euler step of the PF-ODE in
            sigma~^2 to 0, which keeps the spread the data has: see :mod:`scoresde.samplers.final`),
            or ``False`` (return the state at t_min).
        x_T: the starting state instead of a draw from the prior.
        return_trajectory: keep x after every step.
        progress: show a progress bar.
        device, dtype: of the samples (default: the model's device, else that of the ``cond`` tensors; a
            parameter-free model on a machine with CUDA warns that it runs on the CPU), float32.
        cond: keyword arguments passed to every network call (e.g. ``{"y": labels}``).
        guidance: an object that steers sampling (see :mod:`scoresde.guidance`): ``wrap(model, sde)``
            gives the model to sample with; with ``needs_projection``, ``project(x, t, i)`` maps x_T
            (i = -1) and the state after every step i (at t = ts[i + 1]) to the state to continue from,
            and ``finish(x)`` maps the final samples; ``needs_grad`` turns autograd on.
        grad: run with autograd enabled (default: off, under ``torch.no_grad()``, so no graph is kept).
        max_batch: split a larger request into batches of at most this many samples, run one after
            the other (a memory budget). With per-sample seeds (the default noise) the result equals
            one big batch (sample i depends only on its seed); ``nfe`` then counts every batch's calls.
        engine: ``"eager"`` (the sampler's own loop, the reference) or an engine of
            :mod:`scoresde.engine` that runs the sampler's coefficient table: ``"torch"``,
            ``"compiled"`` (torch.compile), ``"fused"`` (Triton kernels, CUDA), ``"graph"`` (a CUDA
            graph of the whole loop). Only samplers whose ``table`` trait holds for these options;
            the same per-sample noise stream as eager, the same samples to float round-off.
            ``"compiled"`` also draws the default per-sample noise through the compiled Philox
            kernel (``PerSampleNoise(kernel="compiled")``: the same values bit for bit); any engine,
            eager included, can have it by passing such a source as ``noise=``.
        **options: the sampler's own options (see ``registry.get(name).options``), checked against
            their declared accepted values before anything runs.
    """
    spec = registry.get(sampler)
    opts = spec.validate(options, extra_valid=_FRONT_DOOR)
    traits = spec.traits(opts)
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a scoresde LinearSDE (VPSDE, SubVPSDE, VESDE, EDMSDE, ...); got {type(sde).__name__}")
    spec.check_sde(sde, options)
    shape = _check_shape(shape)
    for name, flag in (("return_trajectory", return_trajectory), ("progress", progress), ("grad", grad)):
        Bool().check(name, flag, "sample")
    denoise = OneOf(Bool(), Choice("tweedie", "ode")).check("denoise", denoise, "sample")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.float32); got {dtype!r}")
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of network keyword arguments (e.g. {{'y': labels}}); got {type(cond).__name__}")
    if steps is not None:
        steps = Int(ge=1).check("steps", steps, "sample")
    if noise is not None and (seeds is not None or generator is not None):
        raise ValueError("sample: noise= is the source of all noise, so seeds= and generator= would be ignored; give "
                         "either noise, or seeds / generator (per-sample noise)")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"sample: device must be a torch.device or a name such as 'cpu' or 'cuda:0'; got {device!r}")
    if x_T is not None:
        x_T = _check_state("x_T", x_T, shape)
    Choice(ENGINE_NAMES).check("engine", engine, "sample")
    if engine != "eager":
        if not traits.table:
            tabled = [s.name for s in registry.specs() if s.traits().table]
            raise ValueError(f"engine={engine!r} runs a sampler's coefficient table, and sampler {sampler!r}"
                             f"{' with these options' if options else ''} has none; use engine='eager', or one of: "
                             f"{', '.join(tabled)}")
        if guidance is not None:
            raise ValueError(f"engine={engine!r} with guidance is not supported (the engines call the network "
                             "directly, and cannot apply projections); use engine='eager'")
    project = guidance is not None and bool(getattr(guidance, "needs_projection", False))
    if project and not traits.state_hook:
        hooked = [s.name for s in registry.specs() if s.traits().state_hook]
        raise ValueError(
            f"guidance {type(guidance).__name__} projects the state after every step, but sampler {sampler!r}"
            f"{' with these options' if options else ''} does not pass its steps through the front door (its solver "
            f"owns the state); use one of: {', '.join(hooked)}"
        )
    if max_batch is not None and Int(ge=1).check("max_batch", max_batch, "sample") < shape[0]:
        if return_trajectory and not traits.fixed_grid:
            raise ValueError(f"return_trajectory with max_batch needs a fixed-grid sampler: {sampler!r}'s trajectory "
                             "has one entry per attempt, which differs between batches")
        if noise is not None or project:
            what = "a custom noise source or generator stream" if noise is not None else "a projecting guidance"
            raise ValueError(f"max_batch={max_batch} splits the request by per-sample seeds, which {what} cannot "
                             "follow; pass seeds= or generator= (per-sample noise), or max_batch=None")
        common = dict(schedule=schedule, rho=rho, t_min=t_min, T=T, denoise=denoise, return_trajectory=return_trajectory,
                      progress=progress, device=device, dtype=dtype, guidance=guidance, grad=grad, engine=engine, **options)
        return _chunked(model, sde, shape, sampler, steps, max_batch, make_seeds(shape[0], generator=generator, seeds=seeds),
                        x_T, cond, common)
    score_model = as_model(model, sde)
    if guidance is not None and hasattr(guidance, "wrap"):
        score_model = guidance.wrap(score_model, sde)
    grad = bool(grad) or bool(getattr(guidance, "needs_grad", False))
    if device is None:
        device = x_T.device if x_T is not None else _model_device(score_model, cond)
    device = pick_device(device)  # a name torch does not know, or a device this machine lacks: ValueError
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype; got {dtype}")

    schedule = spec.default_schedule if schedule is None else schedule
    if steps is None and isinstance(schedule, str):
        steps = spec.default_steps  # an explicit grid fixes its own step count
    ts = make_grid(sde, steps, schedule, rho=rho, t_min=t_min, T=T, device=device)

    # Noise: one seed per sample by default.
    used_seeds = None
    if noise is None:
        used_seeds = make_seeds(shape[0], generator=generator, seeds=seeds, device=device)
        # engine="compiled" also draws through the compiled Philox kernel (the same values bit for bit).
        noise_src = PerSampleNoise(used_seeds, kernel="compiled" if engine == "compiled" else "torch")
    elif isinstance(noise, torch.Generator):
        noise_src = GeneratorNoise(noise)
    elif isinstance(noise, IndexedNoise):  # counter-based (e.g. a PerSampleNoise): used as it is
        noise_src = noise
    elif callable(noise):
        noise_src = _CheckedNoise(noise)
    else:
        raise TypeError("noise must be None, a torch.Generator or a callable noise(like) -> Tensor")

    like = torch.empty(shape, device=device, dtype=dtype)
    if x_T is None:
        x = noise_src(like) * sde.prior_std()
    else:
        x = x_T.to(device=device, dtype=dtype)  # checked at the door
    if project:
        x = guidance.project(x, ts[0], -1)

    cond = dict(cond or {})

    def bound(xx: Tensor, t: Tensor | float):
        return score_model(xx, t, **cond)

    traj: list[Tensor] = [x.clone()] if return_trajectory else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ts) - 1, desc=sampler, leave=False)

    def callback(i: int, xi: Tensor) -> Tensor:
        if project:
            xi = guidance.project(xi, ts[i + 1], i)
        if return_trajectory:
            traj.append(xi.clone())
        if bar is not None:
            bar.update(1)
        return xi

    nfe0 = score_model.nfe
    _sync(device)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    # On GPU the NaN/Inf check is deferred to the end (the engines keep their own device-side records).
    deferred = device.type != "cpu" and engine == "eager"
    check = score_model.deferred_finite_check() if deferred else contextlib.nullcontext()
    try:
        with check, torch.set_grad_enabled(grad):
            if engine == "eager":
                out = spec.fn(bound, sde, x, ts, noise=noise_src, callback=callback, **opts)
            else:
                from .. import engine as engines

                out = engines.run(engine, score_model, sde, x, ts, spec.table(sde, ts, **opts), noise_src, callback,
                                  cond=cond)
            if isinstance(out, tuple):
                x, extra = out
            else:
                x = out
            if denoise:
                x = final_step(bound, x, ts[-1], "tweedie" if denoise is True else denoise)
            if project:
                x = guidance.finish(x)
    except NonFiniteError as err:
        raise _locate(err, ts, sampler) from None
    finally:
        if bar is not None:
            bar.close()
    _sync(device)
    wall = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        checked = "the model outputs were checked and finite" if score_model.check_finite else (
            "the model outputs were not checked: check_finite=False")
        raise NonFiniteError(f"sampler {sampler!r} produced NaN or Inf samples ({checked})")
    return SampleResult(
        x=x,
        nfe=score_model.nfe - nfe0,
        ts=ts,
        sampler=sampler,
        options=opts,
        wall_time=wall,
        seeds=used_seeds,
        trajectory=torch.stack(traj) if return_trajectory else None,
        extra=extra,
    )


def _chunked(model, sde, shape, sampler, steps, max_batch, seeds, x_T, cond, common) -> SampleResult:
    """sample() in batches of at most max_batch, by per-sample seeds; results joined along the batch."""
    B = shape[0]
    parts = []
    for lo in range(0, B, max_batch):
        sl = slice(lo, min(lo + max_batch, B))
        sub_cond = None if cond is None else {
            k: (v[sl] if isinstance(v, Tensor) and v.ndim and v.shape[0] == B else v) for k, v in cond.items()}
        parts.append(sample(model, sde, (sl.stop - sl.start, *shape[1:]), sampler, steps, seeds=seeds[sl],
                            x_T=None if x_T is None else x_T[sl], cond=sub_cond, **common))
    first = parts[0]
    extra: dict[str, Any] = {}
    for k in first.extra:
        vals = [p.extra[k] for p in parts]
        joinable = all(isinstance(v, Tensor) and v.ndim and v.shape[0] == p.x.shape[0] for v, p in zip(vals, parts, strict=True))
        extra[k] = torch.cat(vals) if joinable else vals  # per-sample tensors joined; per-batch values listed
    return SampleResult(
        x=torch.cat([p.x for p in parts]), nfe=sum(p.nfe for p in parts), ts=first.ts, sampler=first.sampler,
        options=first.options, wall_time=sum(p.wall_time for p in parts), seeds=torch.cat([p.seeds for p in parts]),
        trajectory=torch.cat([p.trajectory for p in parts], dim=1) if first.trajectory is not None else None,
        extra=extra)


def _check_state(name: str, x: Any, shape: tuple[int, ...]) -> Tensor:
    """A given state (x_T): a real floating tensor of the requested shape with finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shape}; got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor; got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf ({int((~torch.isfinite(x)).sum())} of {x.numel()} values)")
    return x


class _CheckedNoise:
    """A user's noise source, with each draw checked: a real floating tensor of the asked shape; finite
    (checked at once on the CPU, where it costs no host synchronisation), so that bad noise is not
    reported as a bad model."""

    def __init__(self, noise: Any):
        self.noise, self.draws_made = noise, 0

    def __call__(self, like: Tensor) -> Tensor:
        z = self.noise(like)
        where = f"the noise source {type(self.noise).__name__} at draw {self.draws_made}"
        self.draws_made += 1
        if not isinstance(z, Tensor) or tuple(z.shape) != tuple(like.shape):
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{where} must return a tensor of shape {tuple(like.shape)}; got {got}")
        if not z.is_floating_point():
            raise ValueError(f"{where} must return real floating-point values; got dtype {z.dtype}")
        if z.device.type == "cpu" and not bool(torch.isfinite(z).all()):
            raise ValueError(f"{where} returned NaN or Inf")
        return z


def _check_shape(shape: Any) -> tuple[int, ...]:
    """(B, *D) as a tuple of positive Python ints; strings, floats and bools are refused (no coercion)."""
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 2 and all(
        Int(ge=1).accepts(s) for s in shape)
    if not ok:
        raise ValueError(f"shape must be (B, *D): a tuple of at least 2 positive integers; got {shape!r}")
    return tuple(int(s) for s in shape)


def _locate(err: NonFiniteError, ts: Tensor, sampler: str) -> NonFiniteError:
    """Add the step of the grid at which a non-finite model output appeared."""
    msg = str(err)
    if err.t is not None:
        tc = ts.detach().cpu()
        n = len(tc) - 1
        i = int(torch.searchsorted(-tc, torch.tensor(-err.t, dtype=tc.dtype), right=True).clamp(1, n)) - 1
        msg = f"{msg}; sampler {sampler!r} at step {i} of {n} (t_cur={float(tc[i]):.6g} -> t_next={float(tc[i + 1]):.6g})"
    new = NonFiniteError(msg, t=err.t, call=err.call)
    return new


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
