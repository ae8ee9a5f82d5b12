"""The ``compiled`` engine: every launch of a plan is one ``torch.compile``-d function.

The launch's coefficients live in a device tensor (one (A, 3 + K) block per launch, built once per
run), the registers in one preallocated (2 + K, *x.shape) tensor; a launch reads all registers,
computes the push and the assignments, and writes the registers back (one fused inductor kernel on
CPU or CUDA). The history is shifted physically (h_0 is always register 2), so a plan needs one
compiled function per launch *pattern* (push source, targets; typically 1-3), each with its own
code object and so its own dynamo cache. The noise is drawn by the noise source (``z`` = zeros
for a launch without a draw). No host synchronisation inside the loop.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor

from .core import Executor
from .plan import Launch, Plan, U, X

__all__ = ["CompiledExecutor", "launch_body"]

_COMPILED: dict = {}  # (K, push source, targets) -> compiled function


def launch_body(K: int, push_src: int, targets: tuple[int, ...]):
    """The plain-torch launch function of one pattern (what is compiled; also usable eagerly)."""

    def body(R: Tensor, out: Tensor, z: Tensor, W: Tensor, P: Tensor) -> None:
        regs = list(R.unbind(0))  # x, u, h_0 .. h_{K-1}
        if push_src >= 0:
            x0 = P[0] * regs[push_src] + P[1] * out.to(R.dtype)
            regs = regs[:2] + [x0] + regs[2 : 1 + K]
        for a, tgt in enumerate(targets):
            w = W[a]
            v = w[0] * regs[X] + w[1] * regs[U]
            for k in range(K):
                v = v + w[2 + k] * regs[2 + k]
            regs[tgt] = v + w[2 + K] * z
        R.copy_(torch.stack(regs))

    # A code object of its own per pattern: dynamo caches compiled code per code object.
    name = f"launch_K{K}_push{push_src}_{'_'.join(map(str, targets)) or 'none'}"
    code = body.__code__.replace(co_name=name, co_qualname=name) if hasattr(body.__code__, "co_qualname") else \
        body.__code__.replace(co_name=name)
    return types.FunctionType(code, body.__globals__, name, body.__defaults__, body.__closure__)


def _compiled(K: int, push_src: int, targets: tuple[int, ...]):
    key = (K, push_src, targets)
    fn = _COMPILED.get(key)
    if fn is None:
        fn = _COMPILED[key] = torch.compile(launch_body(K, push_src, targets), fullgraph=True, dynamic=False)
    return fn


class CompiledExecutor(Executor):
    """See the module docstring."""

    def __init__(self, compile: bool = True):
        self.compile = compile  # False: the same launch functions, eager (for tests of the lowering)

    def setup(self, R: Tensor, plan: Plan, noise, dtype: torch.dtype) -> None:
        super().setup(R, plan, noise, dtype)
        K = plan.K
        W, P = plan.weight_arrays()
        self._index: dict[int, tuple] = {}
        for j, op in enumerate(plan.launches):
            push_src = op.push[0] if op.push is not None else -1
            targets = tuple(s.target for s in op.assigns)
            fn = _compiled(K, push_src, targets) if self.compile else launch_body(K, push_src, targets)
            self._index[id(op)] = (fn, j)
        # Coefficients on the device in the state's dtype, one view per launch (no indexing in the loop).
        W, P = W.to(device=R.device, dtype=dtype), P.to(device=R.device, dtype=dtype)
        self._W, self._P = list(W.unbind(0)), list(P.unbind(0))
        self._zero = torch.zeros_like(R[X])

    def launch(self, op: Launch, out: Tensor | None, z: Tensor | None) -> None:
        fn, j = self._index[id(op)]
        R = self.R
        if out is None:
            out = self._zero
        elif out.untyped_storage().data_ptr() == R.untyped_storage().data_ptr():
            out = out.clone()  # a network that returns (a view of) its input: no aliasing into the compiled graph
        fn(R, out, self._zero if z is None else z, self._W[j], self._P[j])
