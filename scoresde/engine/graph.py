"""The ``graph`` engine: the whole fixed-step loop, network calls included, as one CUDA graph.

The first run for a (model, plan, shape, dtype, device, cond layout) runs the loop normally (on a
side stream: the warm-up CUDA graphs need) and returns its result, then captures the loop. Later
runs copy their inputs into the captured graph's static buffers (x_T, the per-sample seeds and the
draw index of the noise, the ``cond`` tensors), replay the graph, and check the NaN/Inf flags once.
The launches are the fused Triton kernels when Triton is available, else plain torch ops with the
Philox draw computed from the static seed keys. Needs: CUDA, a network that can be captured
(static shapes, no host synchronisation, no data-dependent Python control flow), a PerSampleNoise
for stochastic tables, and no per-step callback. The captured graph holds the network's parameter
memory: in-place weight updates are seen, replaced parameter tensors are not (call
``clear_graphs(model)``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..model import ScoreModel
from ..random import PerSampleNoise, _normals
from .core import Run, TorchExecutor
from .fused import FusedExecutor, fused_reason
from .plan import Plan, X

__all__ = ["run_graph", "graph_reason", "clear_graphs"]

ALTERNATIVES = "use engine='fused' (CUDA), 'compiled' or 'torch'"


def graph_reason(device: torch.device) -> str | None:
    """Why the graph engine cannot run on ``device`` (None when it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; got {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


class _GraphTorchExecutor(TorchExecutor):
    """Torch launches whose Philox draw reads its seeds and draw index from static device tensors."""

    in_kernel_noise = True

    def setup(self, R, plan, noise, dtype):
        super().setup(R, plan, noise, dtype)
        if isinstance(noise, PerSampleNoise):
            self._keys = noise.round_keys(R.device).clone()
            self._draw = torch.tensor([noise.draws], dtype=torch.int64, device=R.device)
            self._n = R[X][0].numel()
            # One draw outside any capture, so that its per-device constants exist before capturing.
            _normals(self._keys, self._draw.view(1, 1, 1), self._n, dtype)

    def launch(self, op, out, z):
        if op.draw:
            draws = (self._draw + op.draw_index).view(1, 1, 1)
            z = _normals(self._keys, draws, self._n, self.R.dtype)[0].reshape(self.R[X].shape)
        super().launch(op, out, z)

    def load_noise(self, noise: PerSampleNoise) -> None:
        self._keys.copy_(noise.round_keys(self.R.device))
        self._draw.fill_(noise.draws)


class _FusedGraphExecutor(FusedExecutor):
    def load_noise(self, noise: PerSampleNoise) -> None:
        self._seeds.copy_(noise.seeds.to(self._seeds.device))
        self._draw.fill_(noise.draws)


class _Captured:
    def __init__(self, run: Run, graph, x_static: Tensor, cond_static: dict, deferred: list):
        self.run, self.graph, self.x, self.cond, self.deferred = run, graph, x_static, cond_static, deferred


def clear_graphs(model: ScoreModel) -> None:
    """Drop the graphs captured for ``model``."""
    model.__dict__.pop("_engine_graphs", None)


def _cond_key(cond: dict) -> tuple:
    return tuple(sorted((k, (tuple(v.shape), v.dtype, v.device) if isinstance(v, Tensor) else repr(v)) for k, v in cond.items()))


def run_graph(model: ScoreModel, plan: Plan, x: Tensor, noise: Any, callback: Callable | None, cond: dict) -> Tensor:
    """Run ``plan`` as a captured CUDA graph (see the module docstring); without autograd."""
    with torch.no_grad():
        return _run_graph(model, plan, x, noise, callback, cond)


def _run_graph(model: ScoreModel, plan: Plan, x: Tensor, noise: Any, callback: Callable | None, cond: dict) -> Tensor:
    reason = graph_reason(x.device)
    if reason:
        raise ValueError(f"engine='graph' cannot run here: {reason}; {ALTERNATIVES}")
    if callback is not None:
        raise ValueError("engine='graph' replays the whole loop on the device and cannot call back after each step: "
                         f"pass callback=None (no trajectory, no progress bar), or {ALTERNATIVES}")
    if plan.n_draws and not isinstance(noise, PerSampleNoise):
        raise ValueError("engine='graph' draws the per-sample Philox stream inside the captured graph and needs a "
                         f"scoresde.random.PerSampleNoise; got {type(noise).__name__} ({ALTERNATIVES})")
    fused = fused_reason(x.device) is None
    key = (plan.fingerprint(), tuple(x.shape), x.dtype, x.device, _cond_key(cond), model.check_finite, fused)
    cache = model.__dict__.setdefault("_engine_graphs", {})
    nfe0 = model.nfe
    entry = cache.get(key)
    if entry is not None:
        entry.x.copy_(x)
        for k, v in cond.items():
            if isinstance(v, Tensor):
                entry.cond[k].copy_(v)
        if plan.n_draws:
            entry.run.executor.load_noise(noise)
        entry.graph.replay()
        model.count(len(plan.calls))
        entry.run.noise = noise
        entry.run.finish(entry.deferred, nfe0)
        return entry.run.R[X].clone()

    # First run: warm up (this is the result), then capture for the next runs.
    executor = _FusedGraphExecutor() if fused else _GraphTorchExecutor()
    run = Run(executor, model, plan, x, noise)
    x_static = x.detach().clone()
    cond_static = {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in cond.items()}
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        deferred = run.loop(x_static, None, cond_static)
    torch.cuda.current_stream(x.device).wait_stream(side)
    run.finish(deferred, nfe0)
    result = run.R[X].clone()
    graph = torch.cuda.CUDAGraph()
    nfe1 = model.nfe
    try:
        with torch.cuda.graph(graph):
            deferred = run.loop(x_static, None, cond_static)
    except Exception as err:  # capture-unsafe network or op
        raise RuntimeError(f"engine='graph': capturing the sampling loop failed ({type(err).__name__}: {err}); the "
                           "network must be capturable (static shapes, no host synchronisation, no data-dependent "
                           f"control flow); {ALTERNATIVES}") from err
    finally:
        model.__dict__["nfe"] = nfe1  # capture makes no network evaluation
    cache[key] = _Captured(run, graph, x_static, cond_static, deferred)
    return result
