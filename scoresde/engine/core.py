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


_OUT, _Z = "out", "z"  # placeholders for the launch's dynamic operands


class TorchExecutor(Executor):
    """Plain torch, in place, with coefficients as Python floats (host side, no device reads).

    The launch's operations are worked out once, at setup, as a list of ``add(alpha=)`` /
    ``mul_`` / ``add_(alpha=)`` calls on bound register views, with two savings: the new
    prediction ``x0 = w_src R[src] + w_out out`` is folded into the terms that use it in its own
    launch (``x <- (a + b w_src) x + b w_out out``: DDIM's step is 2 operations), and it is stored
    only when a later launch reads it, as ``y = R[src] + (w_out / w_src) out`` (1 operation) with
    the factor w_src moved into the weights that read it. The history is a ring of register slots.
    """

    def setup(self, R, plan, noise, dtype):
        super().setup(R, plan, noise, dtype)
        self.regs = regs = list(R.unbind(0))
        program = plan.__dict__.get("_torch_program")
        if program is None:  # worked out once per plan (plans are cached per table and call maps)
            program = plan.__dict__["_torch_program"] = self._program(plan)
        # Bind the register numbers to this run's register views.
        self._ops = [[(kind, regs[v] if isinstance(v, int) else v, w, regs[t]) for kind, v, w, t in ops]
                     for ops in program]

    @staticmethod
    def _program(plan) -> list:
        """Per launch, the (kind, operand, weight, target) operations, registers as numbers."""
        launches = plan.launches
        K = plan.K
        # Liveness: which pushes are read by a later launch (logical history, newest first).
        hist_ids: list[int] = []
        later_use: set[int] = set()
        for j, op in enumerate(launches):
            if op.push is not None:
                hist_ids = ([j] + hist_ids)[:K]
            for s in op.assigns:
                for k, w in enumerate(s.wh):
                    if w != 0.0 and k < len(hist_ids) and hist_ids[k] != j:
                        later_use.add(hist_ids[k])
        free = list(range(2, 2 + K))
        hist: list[dict] = []  # newest first: {"id", "slot", "scale", "src"}
        program = []
        for j, op in enumerate(launches):
            ops: list[tuple] = []
            entry = None
            if op.push is not None:
                src, ws, wo = op.push
                entry = {"id": j, "slot": None, "scale": 1.0, "src": src, "ws": ws, "wo": wo}
                # Also stored when its own launch reads it after changing its source register.
                changed, late_read = set(), False
                for s in op.assigns:
                    if s.wh[0] != 0.0 and src in changed:
                        late_read = True
                    changed.add(s.target)
                if len(hist) == K:  # the oldest entry falls off the history (never read after this push)
                    old = hist.pop()
                    if old["slot"] is not None:
                        free.append(old["slot"])
                if j in later_use or late_read:
                    slot = free.pop()
                    entry["slot"] = slot
                    if ws != 0.0:
                        ops.append(("addout", src, wo / ws, slot))  # y = src + (wo/ws) out
                        entry["scale"] = ws
                    else:
                        ops.append(("mulout", _OUT, wo, slot))
                hist.insert(0, entry)
            changed = set()
            for s in op.assigns:
                w_reg = {X: s.wx, U: s.wu}
                terms: list[tuple] = []  # (weight, tensor or placeholder)
                for k, w in enumerate(s.wh):
                    if w == 0.0:
                        continue
                    e = hist[k]
                    if e is entry and e["src"] not in changed:  # folded: w x0 = w ws src + w wo out
                        w_reg[e["src"]] += w * e["ws"]
                        terms.append((w * e["wo"], _OUT))
                    elif e["slot"] is not None:
                        terms.append((w * e["scale"], e["slot"]))
                    else:  # cannot happen: liveness stores every entry read after its launch
                        raise AssertionError(f"table {plan.name!r}: history entry {k} read but not stored")
                terms = [(w, r) for r, w in w_reg.items() if w != 0.0 and r != s.target] + terms
                if s.wz != 0.0:
                    terms.append((s.wz, _Z))
                own, tgt = w_reg[s.target], s.target
                if own == 0.0:
                    if not terms:
                        ops.append(("zero", None, 0.0, tgt))
                        changed.add(s.target)
                        continue
                    w, v = terms.pop(0)
                    ops.append(("mulout", v, w, tgt))
                elif own != 1.0:
                    ops.append(("mul", None, own, tgt))
                ops.extend(("add", v, w, tgt) for w, v in terms)
                changed.add(s.target)
            program.append(ops)
        return program

    def reset(self):
        self._next = 0

    def launch(self, op, out, z):
        ops = self._ops[self._next]
        self._next += 1
        for kind, v, w, tgt in ops:
            if kind == "addout":
                torch.add(v, out, alpha=w, out=tgt)
                continue
            if v is _OUT:
                v = out
            elif v is _Z:
                v = z
            if kind == "add":
                tgt.add_(v, alpha=w)
            elif kind == "mulout":
                torch.mul(v, w, out=tgt)
            elif kind == "mul":
                tgt.mul_(w)
            else:
                tgt.zero_()


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
        # NaN/Inf: a record per call (the output's min and max: both are finite iff every element
        # is), checked once at the end; ``deferred=False`` checks each call at once.
        self.immediate = model.check_finite and deferred is False
        B, E = x.shape[0], len(self.cn)
        if E * B <= 1 << 22:  # one contiguous row per call: no operation in the loop
            self._cn = list(self.cn[:, None].expand(E, B).contiguous().unbind(0))
        else:  # broadcast views (an in-place change of one would raise)
            self._cn = [self.cn[e : e + 1].expand(B) for e in range(E)]
        self._regs = list(self.R.unbind(0))
        self._ptr = self.R.untyped_storage().data_ptr()
        executor.setup(self.R, plan, noise, x.dtype)

    def loop(self, x: Tensor, callback: Callable[[int, Tensor], None] | None, cond: dict[str, Any]) -> list:
        """Run the plan from x; returns the deferred NaN/Inf flags (device tensors). ``model.nfe``
        grows by the calls made."""
        model, plan, R, ex = self.model, self.plan, self.R, self.executor
        regs, cn, x_reg = self._regs, self._cn, self._regs[X]
        same = self.net_dtype == self.dtype
        ex.reset()
        R[X].copy_(x)
        R[X + 1 :].zero_()
        deferred: list[Tensor] = []
        nfe0, done, out = model.nfe, 0, None
        check = model.check_finite and not self.immediate and not ex.own_flags
        try:
            for op in plan.ops:
                if isinstance(op, Call):
                    inp = regs[op.src] if same else regs[op.src].to(self.net_dtype)
                    out = model.net(inp, cn[op.index], **cond)
                    done += 1
                    model._check_shape(out, x_reg)
                    if out.untyped_storage().data_ptr() == self._ptr:
                        out = out.clone()  # the network returned (a view of) its input register
                    if self.immediate and not _all_finite(out):
                        raise _non_finite(nfe0 + op.index + 1, torch.tensor(op.t), torch.tensor(op.t))
                    if check:
                        deferred.append(torch.aminmax(out))  # both finite iff every element is (NaN propagates)
                else:
                    z = self.noise(x_reg) if op.draw and not ex.in_kernel_noise else None
                    ex.launch(op, out, z)
                    if callback is not None:
                        for s in op.steps:
                            callback(s, x_reg)
        finally:
            model.count(done)
        return deferred

    def finish(self, deferred: list, nfe0: int) -> None:
        """Raise NonFiniteError naming the first bad call (one host sync); advance in-kernel noise."""
        ex, plan = self.executor, self.plan
        if self.model.check_finite and not self.immediate:
            flags = ex.flags() if ex.own_flags else None
            if deferred:
                flags = torch.isfinite(torch.stack([m for pair in deferred for m in pair]).reshape(-1, 2)).all(1)
            if flags is not None:
                flags = flags.cpu()
                if not bool(flags.all()):
                    e = int(torch.nonzero(~flags)[0])
                    t = torch.tensor(plan.times[e].item())
                    raise _non_finite(nfe0 + e + 1, t, t)
        if ex.in_kernel_noise and isinstance(self.noise, PerSampleNoise):
            self.noise.draws += plan.n_draws


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

    NaN/Inf: one record per network call kept on the device and checked once at the end (no host
    sync inside the loop); the error names the first bad call number and its t. ``model.nfe``
    grows by the plan's calls.
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
