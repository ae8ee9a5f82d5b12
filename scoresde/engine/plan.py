"""Lowering a stage table to a plan: network calls and fused linear launches over a few registers.

Registers (each of x's shape): ``x`` the state, ``u`` the network input when it is not the state
itself, and the history ``h_0 .. h_{K-1}`` of data predictions (newest first). The model call of
the table becomes a raw network call ``out = net(R[src], c_noise)`` (``src`` is x when the table
calls the model at the state and the parameterisation needs no input scaling, else u); the
conversion of ``out`` to x0 (``ScoreModel.linear_io``), the row updates, and the next call's
input are folded into ONE launch after each call:

    launch:  [push]   h <- [w_src R[src] + w_out out] + h[:K-1]
             [assign] x <- wx x + wu u + sum_k wh_k h_k + wz z        (in order; z at most one draw)
             [assign] u <- ...                                         (the next call's scaled input)

so that a step with one call costs one network call and one launch. Engines execute the same plan:
plain torch ops (host-side coefficients), one ``torch.compile``-d function, or one Triton kernel
per launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..samplers.tables import CoefficientTable, StageTable, as_stage_table

__all__ = ["Assign", "Launch", "Call", "Plan", "lower", "lower_cached"]

X, U = 0, 1  # register numbers of the state and of the network input


@dataclass(frozen=True)
class Assign:
    """``R[target] <- wx x + wu u + sum_k wh[k] h_k + wz z`` (values as they are at this point of the launch)."""

    target: int  # X or U
    wx: float
    wu: float
    wh: tuple[float, ...]
    wz: float


@dataclass
class Launch:
    """One fused linear launch (see the module docstring)."""

    push: tuple[int, float, float] | None = None  # (src register, w_src, w_out)
    assigns: list[Assign] = field(default_factory=list)
    draw: bool = False
    steps: list[int] = field(default_factory=list)  # grid steps ended by this launch (callbacks after it)
    call: int = -1  # the network call whose output this launch pushes (-1: none)
    draw_index: int = -1  # which draw of the run (0, 1, ...) when ``draw``

    def empty(self) -> bool:
        return self.push is None and not self.assigns


@dataclass(frozen=True)
class Call:
    """Network call number ``index`` (0-based) at time ``t`` on register ``src``."""

    index: int
    src: int
    t: float


@dataclass
class Plan:
    """The lowered program: ``ops`` is a list of Launch and Call in execution order."""

    name: str
    K: int
    ops: list
    times: Tensor  # (E,) float64 call times
    c_noise: Tensor  # (E,) float64 network noise inputs
    n_draws: int

    @property
    def launches(self) -> list[Launch]:
        return [op for op in self.ops if isinstance(op, Launch)]

    @property
    def calls(self) -> list[Call]:
        return [op for op in self.ops if isinstance(op, Call)]

    def weight_arrays(self) -> tuple[Tensor, Tensor]:
        """float64 (L, A, 3 + K) assignment weights ``[wx, wu, wh_0 .. wh_{K-1}, wz]`` and (L, 2)
        push weights ``[w_src, w_out]`` of the launches, in order (zeros where absent)."""
        launches, K = self.launches, self.K
        A = max((len(op.assigns) for op in launches), default=1) or 1
        W = torch.zeros(len(launches), A, 3 + K, dtype=torch.float64)
        P = torch.zeros(len(launches), 2, dtype=torch.float64)
        for j, op in enumerate(launches):
            for a, s in enumerate(op.assigns):
                W[j, a] = torch.tensor([s.wx, s.wu, *s.wh, s.wz], dtype=torch.float64)
            if op.push is not None:
                P[j] = torch.tensor(op.push[1:], dtype=torch.float64)
        return W, P

    def fingerprint(self) -> tuple:
        """Hashable contents (for caching captured graphs)."""
        out = []
        for op in self.ops:
            if isinstance(op, Call):
                out.append(("c", op.src, op.t))
            else:
                out.append(("l", op.push, tuple(op.assigns), op.draw, tuple(op.steps)))
        return (self.name, self.K, tuple(out), tuple(self.c_noise.tolist()))


_PLANS_PER_TABLE = 8


def lower_cached(table: CoefficientTable | StageTable, model) -> Plan:
    """:func:`lower`, once per table and per set of call maps: the plans are kept on the (immutable)
    table object, keyed by the values of ``model.linear_io`` at the table's call times, so a model
    with the same maps (same SDE, parameterisation, time input) reuses the plan and another never
    does. Plans are read-only to the engines."""
    cache = table.__dict__.get("_plan_cache")
    if cache is None:
        st = as_stage_table(table)
        cache = {"stages": st, "times": st.eval_times(), "plans": {}}
        object.__setattr__(table, "_plan_cache", cache)  # frozen dataclass: a private side cache
    io = model.linear_io(cache["times"])
    key = b"".join(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes() for v in io)
    plans = cache["plans"]
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= _PLANS_PER_TABLE:
            plans.pop(next(iter(plans)))
        plan = plans[key] = _lower(cache["stages"], cache["times"], io)
    return plan


def lower(table: CoefficientTable | StageTable, model) -> Plan:
    """Lower ``table`` for ``model`` (a ScoreModel: its ``linear_io`` gives the per-call maps)."""
    table = as_stage_table(table)
    times = table.eval_times()
    return _lower(table, times, model.linear_io(times))


def _lower(table: StageTable, times: Tensor, io) -> Plan:
    K = table.history
    k_in, c_noise, a_u, a_out = (v.tolist() for v in io)
    ops: list = []
    cur = Launch()
    e = 0
    n_draws = 0

    def flush() -> Launch:
        if not cur.empty():
            ops.append(cur)
        return Launch()

    for row in table.rows:
        for ev in row.evals:
            plain = ev.p == 1.0 and not any(ev.q) and k_in[e] == 1.0
            if not plain:
                # The call's input, scaled for the network, computed in the launch before the call.
                k = k_in[e]
                cur.assigns.append(Assign(U, k * ev.p, 0.0, tuple(k * q for q in ev.q), 0.0))
            src = X if plain else U
            cur = flush()
            ops.append(Call(e, src, ev.t))
            # x0 = a_u u + a_out out, where the register holds k_in u.
            cur.push = (src, a_u[e] / (1.0 if plain else k_in[e]), a_out[e])
            cur.call = e
            e += 1
        # The row's update; a second draw, or a change of x after a step's end, starts a new launch.
        if cur.steps or (row.draw and cur.draw):
            cur = flush()
        cur.assigns.append(Assign(X, row.a, 0.0, tuple(row.b), row.c if row.draw else 0.0))
        if row.draw:
            cur.draw, cur.draw_index = True, n_draws
            n_draws += 1
        if row.step is not None:
            cur.steps.append(row.step)
    flush()
    return Plan(table.name, K, ops, times, torch.tensor(c_noise, dtype=torch.float64), n_draws)
