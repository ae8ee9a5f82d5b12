"""The ``fused`` engine: one Triton kernel per launch, the per-sample Philox draw generated inside it.

A launch kernel reads the registers (x, u, h_0 .. h_{K-1}; K <= 4) and the network output of each
element once, converts the output to x0 and pushes it, applies the assignments, and writes the
registers back. When the noise source is a :class:`~scoresde.random.PerSampleNoise`, the normal
draw of element j of sample i at draw k is computed in the kernel: Philox4x32-10 on counters
(j // 4, k lo, k hi, 0x5C0E5DE) with key (seed_i lo, seed_i hi), then the same float64 Box-Muller
arithmetic as :func:`~scoresde.random.philox_normal_reference` (one word pair per element). The
integer words are equal bit for bit; the float64 log / sqrt / cos / sin come from the device's math
library (libdevice on CUDA, like torch's kernels; numpy under the interpreter), so the normals agree
to a few float64 ulps. NaN/Inf of each network output are counted in the kernel (one atomic per
block) and checked once at the end.

Needs Triton and a CUDA device, or Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors; what
the tests use). Triton is imported lazily; the kernels are built on first use.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
from torch import Tensor

from ..random import PerSampleNoise
from .core import Executor
from .plan import Launch, Plan, X

__all__ = ["FusedExecutor", "fused_reason", "philox_normal_triton", "philox_words_triton", "K_MAX"]

K_MAX = 4  # history registers a launch kernel handles
BLOCK = 1024


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_reason(device: torch.device) -> str | None:
    """Why the fused engine cannot run on ``device`` (None when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    if device.type == "cuda" or (device.type == "cpu" and _interpret()):
        return None
    if device.type == "cpu":
        return "Triton kernels need a CUDA device (on CPU only under TRITON_INTERPRET=1, the slow interpreter for tests)"
    return f"Triton kernels need a CUDA device; got {device.type}"


def _kernels():
    """The kernels module, (re)built when the interpreter setting changed since its import."""
    import importlib

    from . import _triton_kernels as k

    if k.INTERPRET != _interpret():
        k = importlib.reload(k)
    return k


def _grid(N: int) -> tuple[int]:
    return (math.ceil(N / BLOCK),)


def philox_words_triton(seeds: Tensor, draw: int, n: int) -> Tensor:
    """(B, n, 4) int64: the Philox words of every element's block (for tests of the kernel's integer path)."""
    k = _kernels()
    B = seeds.shape[0]
    out = torch.empty(B * n * 4, dtype=torch.int64, device=seeds.device)
    DRAW = torch.tensor([draw], dtype=torch.int64, device=seeds.device)
    k.words_kernel[_grid(B * n)](seeds.to(torch.int64).contiguous(), DRAW, out, B * n, n, 0, BLOCK=BLOCK)
    return out.reshape(B, n, 4)


def philox_normal_triton(seeds: Tensor, draw: int, like: Tensor) -> Tensor:
    """Normals of draw ``draw`` shaped like ``like`` from the Triton kernel (PerSampleNoise's stream)."""
    k = _kernels()
    B = like.shape[0]
    out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    DRAW = torch.tensor([draw], dtype=torch.int64, device=like.device)
    N = like.numel()
    k.normal_kernel[_grid(N)](seeds.to(device=like.device, dtype=torch.int64).contiguous(), DRAW, out, N, N // B, 0, BLOCK=BLOCK)
    return out


class FusedExecutor(Executor):
    """See the module docstring."""

    own_flags = True

    def setup(self, R: Tensor, plan: Plan, noise, dtype: torch.dtype) -> None:
        super().setup(R, plan, noise, dtype)
        if plan.K > K_MAX:
            raise ValueError(f"engine='fused' handles a history of at most {K_MAX} predictions; table {plan.name!r} "
                             f"needs {plan.K} (use engine='torch' or 'compiled')")
        self.k = _kernels()
        dev = R.device
        W, P = plan.weight_arrays()
        self._W = list(W.to(device=dev, dtype=dtype).unbind(0))
        self._P = list(P.to(device=dev, dtype=dtype).unbind(0))
        self._j = {id(op): j for j, op in enumerate(plan.launches)}
        if any(len(op.assigns) > 3 for op in plan.launches):
            raise ValueError(f"engine='fused': table {plan.name!r} has a launch with more than 3 assignments")
        self.in_kernel_noise = isinstance(noise, PerSampleNoise)
        if self.in_kernel_noise:
            self._seeds = noise.seeds.to(device=dev, dtype=torch.int64).contiguous()
            self._draw = torch.tensor([noise.draws], dtype=torch.int64, device=dev)
        else:
            self._seeds = self._draw = torch.zeros(1, dtype=torch.int64, device=dev)
        self._flags = torch.zeros(max(len(plan.calls), 1), dtype=torch.int32, device=dev)
        self._N = R[X].numel()
        self._n_per = self._N // R.shape[1]

    def reset(self) -> None:
        self._flags.zero_()

    def launch(self, op: Launch, out: Tensor | None, z: Tensor | None) -> None:
        j = self._j[id(op)]
        R = self.R
        targets = [s.target for s in op.assigns] + [0, 0, 0]
        zmode = (1 if self.in_kernel_noise else 2) if op.draw else 0
        out = R if out is None else out.contiguous()
        self.k.launch_kernel[_grid(self._N)](
            R, out, R if z is None else z.contiguous(), self._W[j], self._P[j], self._seeds, self._draw, self._flags,
            self._N, self._n_per, max(op.draw_index, 0), max(op.call, 0),
            K=self.plan.K, PUSH=op.push[0] if op.push is not None else -1, NA=len(op.assigns),
            T0=targets[0], T1=targets[1], T2=targets[2], ZMODE=zmode, CHECK=op.push is not None, BLOCK=BLOCK,
        )

    def flags(self) -> Tensor:
        return self._flags[: len(self.plan.calls)] == 0
