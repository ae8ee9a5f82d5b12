"""Engines that run a fixed-step sampler's table (scoresde.samplers.tables) faster than its eager loop.

One entry point::

    x = run(engine, model, sde, x_T, ts, table, noise, callback=None, cond=None)

runs ``table`` (a CoefficientTable or StageTable built for the grid ``ts``) from ``x_T`` and returns
the state at ``ts[-1]`` (no final denoising: that is ``sample()``'s). The table is first lowered
to a plan (:mod:`scoresde.engine.plan`): raw network calls, each followed by ONE fused linear launch
that converts the output to x0, updates the state and prepares the next call's input. Engines:

* ``"torch"``: plain torch ops in place, coefficients as host floats; every device, no compilation.
* ``"compiled"``: each launch is one ``torch.compile``-d function (inductor, CPU or CUDA), its
  coefficients in a device tensor; the network stays as given (compile it yourself if you wish).
* ``"fused"``: one Triton kernel per launch, the per-sample Philox normal draw generated inside it
  (the same stream as ``PerSampleNoise``); CUDA, or the Triton interpreter (``TRITON_INTERPRET=1``).
* ``"graph"``: the whole loop, network calls included, captured once as a CUDA graph and replayed
  for later runs of the same model, table, shape and dtype (CUDA only).

``model.nfe`` counts the network calls; NaN/Inf in a network output raises NonFiniteError naming the
call number and t, after the loop (each output's min and max recorded on the device, no host sync
in the loop; the fused kernels count them themselves). The network gets ``c_noise`` as a fresh (B,)
row per call (a broadcast view above 2^22 elements for all calls together). ``callback(i, x)`` gets the
live state register after grid step i (clone it to keep it; ``graph`` takes no callback).
``noise`` is advanced past the run's draws, as the eager sampler would.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..model import as_model
from ..samplers.tables import CoefficientTable, StageTable, as_stage_table
from ..sde import LinearSDE
from .core import TorchExecutor, check_noise, drive
from .plan import Plan, lower, lower_cached

__all__ = ["run", "ENGINES", "available", "lower", "Plan"]

ENGINES = ("torch", "compiled", "fused", "graph")


def available(device: torch.device | str) -> list[str]:
    """The engines that can run on ``device`` here (fused needs Triton and CUDA or its interpreter;
    graph needs CUDA)."""
    from .fused import fused_reason
    from .graph import graph_reason

    device = torch.device(device)
    out = ["torch", "compiled"]
    if fused_reason(device) is None:
        out.append("fused")
    if graph_reason(device) is None:
        out.append("graph")
    return out


def run(
    engine: str,
    model: Any,
    sde: LinearSDE,
    x: Tensor,
    ts: Tensor,
    table: CoefficientTable | StageTable,
    noise: Callable[[Tensor], Tensor] | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    *,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Run ``table`` with ``engine`` from ``x`` (B, *D); see the module docstring."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of the accepted values: {', '.join(map(repr, ENGINES))}")
    model = as_model(model, sde)
    if not isinstance(table, (CoefficientTable, StageTable)):
        as_stage_table(table)  # raises the TypeError naming the accepted types
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of shape (B, *D); got {getattr(x, 'shape', type(x).__name__)}")
    if table.ts.shape != ts.shape or not torch.equal(table.ts.to(ts.device, torch.float64), ts.to(torch.float64)):
        raise ValueError(f"table {table.name!r} was built for another grid than ts")
    plan = lower_cached(table, model)
    check_noise(plan, noise)
    cond = dict(cond or {})
    if engine == "torch":
        return drive(TorchExecutor(), model, plan, x, noise, callback, cond).clone()
    if engine == "compiled":
        from .compiled import CompiledExecutor

        return drive(CompiledExecutor(), model, plan, x, noise, callback, cond).clone()
    if engine == "fused":
        from .fused import FusedExecutor, fused_reason

        reason = fused_reason(x.device)
        if reason:
            raise ValueError(f"engine='fused' cannot run here: {reason}; use engine='torch' or 'compiled'")
        return drive(FusedExecutor(), model, plan, x, noise, callback, cond).clone()
    from .graph import run_graph

    return run_graph(model, plan, x, noise, callback, cond)
