"""Presets: the :func:`scoresde.sample` arguments that reproduce a peer's sampler configuration.

:func:`diffusers_compatible` reads a diffusers scheduler (after ``set_timesteps``) and returns the
keyword arguments under which scoresde's sampler of the same algorithm gives the scheduler's
samples on a model wrapped with :func:`~scoresde.adapters.from_diffusers`:

* the grid is the scheduler's own timesteps (``sde.grid(scheduler.timesteps)``); diffusers' final
  step to sigma = 0 (``set_alpha_to_one``, ``final_sigmas_type="zero"``) is scoresde's final
  denoising step (``denoise=True``); a final step to timestep 0's level (``set_alpha_to_one=False``,
  ``final_sigmas_type="sigma_min"``) is one more grid point and ``denoise=False``;
* ``lower_order_final`` as diffusers applies it: with the jump to 0 the jump is the lowered step,
  so scoresde's own lowering (the step before it) is off;
* the solver variant (``solver_type``, UniPC's ``bh1``/``bh2`` and order).

What scoresde cannot reproduce is a warning (``clip_sample`` / ``thresholding``: scoresde never
clips; DDIM's stride, which moves the state to ``k - N // steps`` rather than to the next listed
timestep (diffusers issue #12633), at the spacings where the two differ; Karras / exponential /
beta sigmas, where diffusers evaluates the network at rounded timesteps) or an error (a scheduler
configuration with no scoresde equivalent). docs/byo-model.md ("A diffusers-compatible preset").
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .diffusers import sde_from_diffusers

__all__ = ["diffusers_compatible", "DIFFUSERS_SAMPLERS"]

#: scheduler class -> the scoresde samplers the preset can match it with
DIFFUSERS_SAMPLERS = {
    "DDIMScheduler": ("ddim",),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", "ddim"),
    "UniPCMultistepScheduler": ("unipc",),
}
_SOLVER_TYPES = {"midpoint": "dpmsolver", "heun": "taylor"}  # diffusers' DPM-Solver++ -> scoresde's solver_type
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas")


def _cfg(scheduler: Any, key: str, default: Any = None) -> Any:
    return getattr(scheduler.config, key, default) if hasattr(scheduler, "config") else default


def _warn(msg: str) -> None:
    warnings.warn(f"diffusers_compatible: {msg}", UserWarning, stacklevel=3)


def _ddim_stride_check(ks: list[int], n_train: int, set_alpha_to_one: bool) -> None:
    """Warn where DDIMScheduler's state does not land on the next listed timestep (diffusers issue #12633)."""
    stride = n_train // len(ks)
    bad = [i for i in range(len(ks) - 1) if ks[i] - stride != ks[i + 1]]
    if set_alpha_to_one and ks[-1] - stride >= 0:
        bad.append(len(ks) - 1)  # the last step lands on a table level, not on the data
    if bad:
        i = bad[0]
        nxt = ks[i + 1] if i + 1 < len(ks) else "the data (alpha = 1)"
        _warn(f"DDIMScheduler steps each state from timestep k to k - {stride} (num_train_timesteps // steps; diffusers "
              f"issue #12633), which is not the next listed timestep at {len(bad)} of {len(ks)} steps (first: "
              f"{ks[i]} -> {ks[i] - stride}, listed next {nxt}); scoresde's ddim on the listed timesteps is a different "
              "(consistent) sampler here. Spacings 'leading', or 'trailing' with steps dividing num_train_timesteps, "
              "have no such steps")


def diffusers_compatible(sampler: str | None, scheduler: Any) -> dict[str, Any]:
    """``sample()`` keyword arguments under which scoresde's ``sampler`` reproduces ``scheduler``'s loop.

    Args:
        sampler: ``ddim`` (DDIMScheduler; DPMSolverMultistepScheduler with ``solver_order=1``),
            ``dpmpp_2m`` (DPMSolverMultistepScheduler, ``dpmsolver++``, order 2) or ``unipc``
            (UniPCMultistepScheduler, ``predict_x0``); None: the one that matches the scheduler.
        scheduler: a diffusers scheduler on which ``set_timesteps(steps)`` was called.

    Returns:
        ``{"sampler", "schedule", "denoise", **sampler options}``: use it as
        ``sample(model, model.sde, shape, **preset)`` with ``model = from_diffusers(unet, scheduler)``.
        From the same x_T (diffusers' starting noise) the samples equal the scheduler's to float32
        round-off (diffusers' step arithmetic), with the same NFE.

    Warns (UserWarning) about what no scoresde option reproduces; raises ValueError for a
    configuration with no scoresde equivalent, naming the setting.
    """
    cls = type(scheduler).__name__
    if cls not in DIFFUSERS_SAMPLERS:
        raise ValueError(f"diffusers_compatible: scheduler {cls} is not one of the accepted values: "
                         f"{', '.join(DIFFUSERS_SAMPLERS)}")
    ts_k = getattr(scheduler, "timesteps", None)
    if getattr(scheduler, "num_inference_steps", None) is None or not isinstance(ts_k, torch.Tensor):
        raise ValueError(f"diffusers_compatible: call scheduler.set_timesteps(steps) first ({cls} has no timesteps yet)")
    order = int(_cfg(scheduler, "solver_order", 1))
    algorithm = _cfg(scheduler, "algorithm_type", None)
    if cls == "DPMSolverMultistepScheduler" and algorithm != "dpmsolver++":
        raise ValueError(f"diffusers_compatible: DPMSolverMultistepScheduler(algorithm_type={algorithm!r}) has no "
                         "scoresde preset; accepted: 'dpmsolver++' (scoresde's dpmpp_2m, or ddim at solver_order=1)")
    if cls == "DPMSolverMultistepScheduler" and order not in (1, 2):
        raise ValueError(f"diffusers_compatible: DPMSolverMultistepScheduler(solver_order={order}) has no scoresde "
                         "preset; accepted: 1 (ddim), 2 (dpmpp_2m)")
    match = "ddim" if cls == "DPMSolverMultistepScheduler" and order == 1 else DIFFUSERS_SAMPLERS[cls][0]
    if sampler is None:
        sampler = match
    if sampler != match:
        raise ValueError(f"diffusers_compatible: sampler={sampler!r} does not reproduce this {cls} (solver_order="
                         f"{order}); accepted: {match!r} (or None)")

    if _cfg(scheduler, "clip_sample", False):
        _warn(f"{cls}(clip_sample=True) clips x0 to [-{_cfg(scheduler, 'clip_sample_range', 1.0)}, "
              f"{_cfg(scheduler, 'clip_sample_range', 1.0)}] at every step; scoresde never clips, so the samples differ "
              "wherever x0 leaves that range (pass clip_sample=False to the scheduler to compare)")
    if _cfg(scheduler, "thresholding", False):
        _warn(f"{cls}(thresholding=True) applies dynamic thresholding to x0; scoresde does not")
    for key in _SIGMA_SPACINGS:
        if _cfg(scheduler, key, False):
            _warn(f"{cls}({key}=True) steps between its own sigmas but evaluates the network at rounded timesteps; the "
                  "grid here is those timesteps, so the step sizes differ from diffusers' (by up to half a table step)")

    sde = sde_from_diffusers(scheduler)
    ks = [int(k) for k in ts_k.tolist()]
    if any(float(k) != int(k) for k in ts_k.tolist()):
        raise ValueError(f"diffusers_compatible: {cls} has fractional timesteps; only integer timesteps are accepted")
    steps = len(ks)
    options: dict[str, Any] = {}
    if cls == "DDIMScheduler":
        set_one = bool(_cfg(scheduler, "set_alpha_to_one", True))
        _ddim_stride_check(ks, int(_cfg(scheduler, "num_train_timesteps", 1000)), set_one)
        to_zero = set_one
    else:
        final = _cfg(scheduler, "final_sigmas_type", "zero")
        if final not in ("zero", "sigma_min"):
            raise ValueError(f"diffusers_compatible: final_sigmas_type={final!r} is not one of the accepted values: "
                             "'zero', 'sigma_min'")
        to_zero = final == "zero"
        lof = bool(_cfg(scheduler, "lower_order_final", True))
        if cls == "DPMSolverMultistepScheduler":
            # diffusers lowers the final step (the jump to 0, or with lower_order_final below 15 steps or
            # euler_at_final the last step to sigma_min); scoresde's lower_order_final lowers its last grid step.
            lowered = (lof and steps < 15) or bool(_cfg(scheduler, "euler_at_final", False))
            if sampler == "dpmpp_2m":
                st = _cfg(scheduler, "solver_type", "midpoint")
                if st not in _SOLVER_TYPES:
                    raise ValueError(f"diffusers_compatible: solver_type={st!r} is not one of the accepted values: "
                                     f"{', '.join(map(repr, _SOLVER_TYPES))}")
                options.update(solver_type=_SOLVER_TYPES[st], lower_order_final=False if to_zero else lowered)
        else:  # UniPC: with lower_order_final the order of step i is min(order, steps - i)
            if not _cfg(scheduler, "predict_x0", True):
                raise ValueError("diffusers_compatible: UniPCMultistepScheduler(predict_x0=False) (noise prediction) has "
                                 "no scoresde preset; accepted: predict_x0=True")
            if list(_cfg(scheduler, "disable_corrector", []) or []):
                raise ValueError("diffusers_compatible: UniPCMultistepScheduler(disable_corrector=...) has no scoresde "
                                 "equivalent (scoresde's unipc corrects every step but the last)")
            if _cfg(scheduler, "solver_p", None) is not None:
                raise ValueError("diffusers_compatible: UniPCMultistepScheduler(solver_p=...) has no scoresde equivalent")
            if to_zero and lof and order >= 3:
                raise ValueError("diffusers_compatible: UniPC order 3 with lower_order_final=True and the final jump to "
                                 "0 lowers the step before the jump to order 2, which no scoresde option reproduces; "
                                 "use lower_order_final=False, solver_order <= 2, or final_sigmas_type='sigma_min'")
            st = _cfg(scheduler, "solver_type", "bh2")
            if st not in ("bh1", "bh2"):
                raise ValueError(f"diffusers_compatible: solver_type={st!r} is not one of the accepted values: 'bh1', 'bh2'")
            if to_zero and (st == "bh1" or (order >= 3 and not lof)):
                _warn(f"UniPCMultistepScheduler(solver_type={st!r}, solver_order={order}, lower_order_final={lof}) "
                      "fails on its final jump to sigma = 0 (B(h) = -h at h = inf gives NaN for bh1; order 3 there "
                      "solves a singular system): diffusers' own samples are not finite, scoresde's unipc is")
            options.update(order=order, variant=st, lower_order_final=False if to_zero else lof)
    if not to_zero:
        if ks[-1] == 0:
            if cls == "DDIMScheduler":
                _warn("the timesteps already end at 0, so diffusers' last call is a zero-length step to timestep 0's level "
                      "that still costs a network evaluation: scoresde makes one evaluation fewer")
            else:
                raise ValueError(f"diffusers_compatible: {cls} ends at timestep 0 and then steps to timestep 0's level "
                                 "(final_sigmas_type='sigma_min'): a zero-length step (diffusers' output is not finite)")
        else:
            ks = ks + [0]
    return {"sampler": sampler, "schedule": sde.grid(ks), "denoise": to_zero, **options}
