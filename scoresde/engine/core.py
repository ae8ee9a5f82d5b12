"""The run driver shared by the engines: registers, network calls, noise, callbacks, NaN checks."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..model import ScoreModel, _all_finite, _non_finite
from ..random import PerSampleNoise
from .plan import Call, Launch, Plan, U, X

__all__ = ["Executor", "Run", "drive"]


class Executor:
    """How one engine carries out a plan's launches (subclasses override :meth:`launch`)."""

    #: whether the engine draws PerSampleNoise inside its launches (else the driver calls noise(x))
    in_kernel_noise = False
    #: whether the engine records the NaN/Inf flags of the network outputs itself
    own_flags = False

    def setup(self, R: Tensor, plan: Plan, noise: Any, dtype: torch.dtype) -> None:
        self.R, self.plan = R, plan

    def reset(self) -> None:
        """Called at the start of each loop (device work only: it may run inside a graph capture)."""

    def launch(self, op: Launch, out: Tensor | None, z: Tensor | None) -> None:
        raise NotImplementedError  # abstract

    def flags(self) -> Tensor | None:
        """(E,) bool, True where call e's output was finite (own_flags engines)."""
        return None


class TorchExecutor(Executor):
    """Plain torch, in place: coefficients stay Python floats (host side, no device reads), a
    launch is a few ``mul_`` / ``add_(alpha=w)`` calls, the history is a ring of register slots."""

    def reset(self):
        self.hist = list(range(2, 2 + self.plan.K))  # physical slots, newest first

    def launch(self, op, out, z):
        R, hist = self.R, self.hist
        if op.push is not None:
            src, ws, wo = op.push
            slot = hist.pop()
            r = R[slot]
            torch.mul(out, wo, out=r)
            if ws != 0.0:
                r.add_(R[src], alpha=ws)
            hist.insert(0, slot)
        for a in op.assigns:
            tgt = R[a.target]
            terms = [(a.wx, X), (a.wu, U)] + [(w, hist[k]) for k, w in enumerate(a.wh)]
            own = a.wx if a.target == X else a.wu
            rest = [(w, R[s]) for w, s in terms if w != 0.0 and s != a.target]
            if a.wz != 0.0:
                rest.append((a.wz, z))
            if own == 0.0:
                if not rest:
                    tgt.zero_()
                    continue
                w, v = rest.pop(0)
                torch.mul(v, w, out=tgt)
            elif own != 1.0:
                tgt.mul_(own)
            for w, v in rest:
                tgt.add_(v, alpha=w)


class Run:
    """One run of a plan: :meth:`prepare` (allocations and host-to-device copies), :meth:`loop`
    (device work only: capturable in a CUDA graph), :meth:`finish` (the one host check)."""

    def __init__(self, executor: Executor, model: ScoreModel, plan: Plan, x: Tensor, noise: Any, *,
                 deferred: bool | None = None):
        self.executor, self.model, self.plan, self.noise = executor, model, plan, noise
        self.shape, self.dtype, self.device = tuple(x.shape), x.dtype, x.device
        self.R = torch.zeros((2 + plan.K, *x.shape), dtype=x.dtype, device=x.device)
        self.net_dtype = model.net_dtype(x.dtype)
        self.cn = plan.c_noise.to(device=x.device, dtype=self.net_dtype)
        # NaN/Inf: checked at each call on CPU, once at the end elsewhere (or as ``deferred`` says).
        self.immediate = model.check_finite and (x.device.type == "cpu" if deferred is None else not deferred)
        executor.setup(self.R, plan, noise, x.dtype)

    def loop(self, x: Tensor, callback: Callable[[int, Tensor], None] | None, cond: dict[str, Any]) -> list[Tensor]:
        """Run the plan from x; returns the deferred NaN/Inf flags (device tensors). ``model.nfe``
        grows by the calls made."""
        model, plan, R, ex = self.model, self.plan, self.R, self.executor
        B = self.shape[0]
        ex.reset()
        R[X].copy_(x)
        R[X + 1 :].zero_()
        deferred: list[Tensor] = []
        nfe0, done, out = model.nfe, 0, None
        try:
            for op in plan.ops:
                if isinstance(op, Call):
                    inp = R[op.src] if self.net_dtype == self.dtype else R[op.src].to(self.net_dtype)
                    out = model.net(inp, self.cn[op.index : op.index + 1].expand(B).clone(), **cond)
                    done += 1
                    model._check_shape(out, R[X])
                    if self.immediate and not _all_finite(out):
                        raise _non_finite(nfe0 + op.index + 1, torch.tensor(op.t), torch.tensor(op.t))
                    if model.check_finite and not self.immediate and not ex.own_flags:
                        deferred.append(torch.isfinite(out).all())
                else:
                    z = noise_draw(self.noise, R[X]) if op.draw and not ex.in_kernel_noise else None
                    ex.launch(op, out, z)
                    if callback is not None:
                        for s in op.steps:
                            callback(s, R[X])
        finally:
            model.count(done)
        return deferred

    def finish(self, deferred: list[Tensor], nfe0: int) -> None:
        """Raise NonFiniteError naming the first bad call (one host sync); advance in-kernel noise."""
        ex, plan = self.executor, self.plan
        if self.model.check_finite and not self.immediate:
            flags = ex.flags() if ex.own_flags else (torch.stack(deferred) if deferred else None)
            if flags is not None:
                flags = flags.cpu()
                if not bool(flags.all()):
                    e = int(torch.nonzero(~flags)[0])
                    t = torch.tensor(plan.times[e].item())
                    raise _non_finite(nfe0 + e + 1, t, t)
        if ex.in_kernel_noise and isinstance(self.noise, PerSampleNoise):
            self.noise.draws += plan.n_draws


def noise_draw(noise: Any, like: Tensor) -> Tensor:
    return noise(like)


def drive(
    executor: Executor,
    model: ScoreModel,
    plan: Plan,
    x: Tensor,
    noise: Any,
    callback: Callable[[int, Tensor], None] | None,
    cond: dict[str, Any],
) -> Tensor:
    """Run ``plan`` from state ``x`` with ``executor``; returns the live state register.

    NaN/Inf: on CPU each network output is checked at once (one sum); elsewhere a device flag per
    call is kept and checked once at the end (no host sync inside the loop). Either way the error
    names the call number and its t. ``model.nfe`` grows by the plan's calls.
    """
    run = Run(executor, model, plan, x, noise)
    nfe0 = model.nfe
    deferred = run.loop(x, callback, cond)
    run.finish(deferred, nfe0)
    return run.R[X]


def check_noise(plan: Plan, noise: Any) -> None:
    if plan.n_draws and not callable(noise):
        raise TypeError(f"table {plan.name!r} draws noise: pass a noise source noise(like) -> Tensor "
                        f"(e.g. scoresde.random.PerSampleNoise); got {type(noise).__name__}")


__all__ += ["TorchExecutor", "check_noise"]
