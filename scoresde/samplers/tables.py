"""Coefficients as data: the linear-update tables of fixed-step samplers (DESIGN.md, "Coefficients as data").

Many fixed-step samplers update the state by a linear combination whose weights depend only on
the grid, never on the data:

    x_{i+1} = a_i x_i + sum_{k=0}^{K-1} b_{i,k} x0_{i-k} + c_i z_i,        i = 0 .. N-1,

where ``x0_j = model(x_j, t_j).x0`` is the data prediction of step j (the one network call of that
step, so the model is always evaluated at the state itself) and ``z_i ~ N(0, I)`` is drawn after
the call of step i when the table is stochastic. A :class:`CoefficientTable` holds ``(a, b, c)``
in float64 for one grid; it is built before sampling (no host syncs in the loop) and checked when
built, like a Butcher tableau's row sums:

* causality: ``b_{i,k} = 0`` for ``k > i`` (no prediction before step 0);
* point mass, mean: ``a_i alpha_i + sum_k b_{i,k} = alpha_{i+1}``. If the data is a point mass c,
  every prediction is c and ``x_i = alpha_i c + r_i``; the update then gives
  ``x_{i+1} = alpha_{i+1} c + a_i r_i + c_i z_i``: the mean path is exact;
* point mass, spread: ``a_i^2 sigma_i^2 + (c_i / s)^2 = sigma_{i+1}^2`` with ``s`` the table's
  ``noise_scale`` (EDM's S_noise, 1 by default): ``r_i ~ N(0, sigma_i^2)`` maps to
  ``r_{i+1} ~ N(0, sigma_{i+1}^2)``. For a deterministic table (c = 0) this says
  ``a_i = sigma_{i+1} / sigma_i``, which with the mean identity is the exact probability-flow map
  of a point mass.

Tables of samplers that are not exact for a point mass are built with ``point_mass=False`` (only
the structural checks apply). :func:`run_table` is the plain-torch reference runner that a fused
engine must match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..sde import LinearSDE

__all__ = [
    "CoefficientTable", "make_table", "run_table", "Eval", "Stage", "StageTable", "TableBuilder", "as_stage_table", "run_stages",
]

#: relative tolerance of the point-mass identities. The coefficients are a few float64 operations
#: away from alpha and sigma (expm1, sqrt, products), so the identities hold to ~1e-15 relative to
#: the largest term; 1e-11 leaves room for large multistep weights (b ~ 1/r) that cancel in the sum.
IDENTITY_RTOL = 1e-11


@dataclass(frozen=True)
class CoefficientTable:
    """``x_{i+1} = a[i] x_i + sum_k b[i, k] x0_{i-k} + c[i] z_i`` for one grid (all float64).

    Attributes:
        name: the sampler the table belongs to.
        ts: (N + 1,) the grid, T -> t_min; step i goes from ts[i] to ts[i + 1].
        a: (N,) weight of the state.
        b: (N, K) weights of the data predictions, newest first (column k is x0 of step i - k).
        c: (N,) noise scale (zeros for a deterministic sampler).
        stochastic: whether a noise draw follows each network call (c is used).
        noise_scale: extra factor applied to the noise (EDM's S_noise); 1 for a plain sampler.
    """

    name: str
    ts: Tensor
    a: Tensor
    b: Tensor
    c: Tensor
    stochastic: bool
    noise_scale: float = 1.0

    @property
    def steps(self) -> int:
        return int(self.a.shape[0])

    @property
    def history(self) -> int:
        """K: how many past data predictions a step combines."""
        return int(self.b.shape[1])

    @property
    def nfe(self) -> int:
        """Model calls (one per step)."""
        return self.steps

    @property
    def draws(self) -> int:
        """Noise draws (one per step when stochastic)."""
        return self.steps if self.stochastic else 0

    def as_dict(self) -> dict[str, Any]:
        """Plain data (lists of floats), e.g. for JSON."""
        return {
            "name": self.name,
            "ts": self.ts.tolist(),
            "a": self.a.tolist(),
            "b": self.b.tolist(),
            "c": self.c.tolist(),
            "stochastic": self.stochastic,
            "noise_scale": self.noise_scale,
        }

    def check(self, sde: LinearSDE, *, point_mass: bool = True) -> None:
        """Raise ValueError unless the table is well formed (and, with ``point_mass``, satisfies
        the point-mass identities of the module docstring at every step)."""
        N = len(self.ts) - 1
        shapes = {"a": (N,), "c": (N,)}
        for key, shape in shapes.items():
            if tuple(getattr(self, key).shape) != shape:
                raise ValueError(f"table {self.name!r}: {key} must have shape {shape}; got {tuple(getattr(self, key).shape)}")
        if self.b.ndim != 2 or self.b.shape[0] != N or self.b.shape[1] < 1:
            raise ValueError(f"table {self.name!r}: b must have shape ({N}, K) with K >= 1; got {tuple(self.b.shape)}")
        for key in ("ts", "a", "b", "c"):
            v = getattr(self, key)
            if v.dtype != torch.float64:
                raise ValueError(f"table {self.name!r}: {key} must be float64; got {v.dtype}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"table {self.name!r}: {key} contains NaN or Inf")
        K = self.history
        i = torch.arange(N, device=self.b.device)[:, None]
        k = torch.arange(K, device=self.b.device)[None, :]
        if bool((self.b[k > i] != 0).any()):
            raise ValueError(f"table {self.name!r}: b[i, k] must be 0 for k > i (no prediction before step 0)")
        if bool((self.c < 0).any()) or (not self.stochastic and bool((self.c != 0).any())):
            raise ValueError(f"table {self.name!r}: c must be >= 0, and 0 for a deterministic table")
        if point_mass:
            self._check_point_mass(sde)

    def _check_point_mass(self, sde: LinearSDE) -> None:
        alpha, sigma = sde.alpha(self.ts), sde.sigma(self.ts)
        # Mean: a_i alpha_i + sum_k b_ik = alpha_{i+1}, relative to the largest term.
        lhs = self.a * alpha[:-1] + self.b.sum(1)
        scale = (self.a * alpha[:-1]).abs() + self.b.abs().sum(1) + alpha[1:]
        _assert_identity(self.name, "a_i*alpha_i + sum_k b_ik = alpha_(i+1)", lhs, alpha[1:], scale)
        # Spread: a_i^2 sigma_i^2 + (c_i / noise_scale)^2 = sigma_{i+1}^2 (not checkable when the
        # noise was switched off by noise_scale = 0).
        if self.stochastic is False and self.noise_scale == 0:
            return
        s = self.noise_scale if self.stochastic else 1.0
        lhs = (self.a * sigma[:-1]) ** 2 + (self.c / s) ** 2
        what = "a_i^2*sigma_i^2 + (c_i/noise_scale)^2 = sigma_(i+1)^2"
        _assert_identity(self.name, what, lhs, sigma[1:] ** 2, lhs + sigma[1:] ** 2)


def _assert_identity(name: str, what: str, lhs: Tensor, rhs: Tensor, scale: Tensor) -> None:
    err = (lhs - rhs).abs() / scale.clamp_min(torch.finfo(torch.float64).tiny)
    bad = err > IDENTITY_RTOL
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"table {name!r} fails the point-mass identity {what} at step {i}: "
            f"{float(lhs[i]):.17g} vs {float(rhs[i]):.17g} (relative error {float(err[i]):.3g} > {IDENTITY_RTOL:g})"
        )


def make_table(
    name: str,
    sde: LinearSDE,
    ts: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor | None = None,
    *,
    noise_scale: float = 1.0,
    point_mass: bool = True,
) -> CoefficientTable:
    """Build a :class:`CoefficientTable` from float64 coefficient tensors and check it.

    ``b`` may be (N,) for a one-step method. ``c = None`` means a deterministic table.
    """
    b = b[:, None] if b.ndim == 1 else b
    stochastic = c is not None and noise_scale != 0
    c = torch.zeros_like(a) if c is None else c * noise_scale
    table = CoefficientTable(name, ts, a, b, c, bool(stochastic), float(noise_scale))
    table.check(sde, point_mass=point_mass)
    return table


def run_table(
    model: Callable[..., Any],
    sde: LinearSDE,
    x: Tensor,
    ts: Tensor,
    table: CoefficientTable,
    noise: Callable[[Tensor], Tensor],
    callback: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Reference runner of a coefficient table: one network call, one fused linear update per step.

    ``model(x, t)`` returns a Prediction; ``noise(like)`` draws N(0, I) (called once per step,
    after the network call, when the table is stochastic, as the eager samplers do).
    """
    if table.ts.shape != ts.shape or not torch.equal(table.ts.to(ts.device), ts.to(torch.float64)):
        raise ValueError(f"table {table.name!r} was built for another grid than ts")
    a, b, c = (v.to(device=x.device, dtype=x.dtype) for v in (table.a, table.b, table.c))
    history: list[Tensor] = []
    for i in range(table.steps):
        history = [model(x, ts[i]).x0] + history[: table.history - 1]
        x_next = a[i] * x
        for k, x0 in enumerate(history):
            x_next = x_next + b[i, k] * x0
        if table.stochastic:
            x_next = x_next + c[i] * noise(x)
        x = x_next
        if callback is not None:
            x = callback(i, x)
    return x


# ====================================================================================== stage tables
# The general form: a table of rows, each row zero or more model calls at linear combinations of the
# state and the past predictions, then one linear update with an optional noise draw. It covers the
# samplers whose extra model call is made at an intermediate point (Heun's Euler point, UniPC's
# predicted point, DPM-Solver++(2S)'s midpoint), noise injected before a call (EDM's churn), the
# score-based predictors (score = (alpha x0 - x) / sigma^2 is linear in x and x0) and the
# fixed-step Langevin correctors. A CoefficientTable is the special case of one call at the state.


@dataclass(frozen=True)
class Eval:
    """One model call: ``x0 <- model(u, t).x0`` at ``u = p x + sum_k q[k] h_k``, then pushed to the history."""

    t: float  # model time (float64)
    p: float  # weight of the state
    q: tuple[float, ...]  # weights of the history h_0 (newest) .. h_{K-1}, before this call's push


@dataclass(frozen=True)
class Stage:
    """One row: the calls ``evals`` in order, then ``x <- a x + sum_k b[k] h_k + c z`` (z drawn iff ``draw``).

    ``t_start`` -> ``t_end`` is the time of the state before and after the row (the point-mass
    identities use it); ``step`` is the grid step whose callback follows the row (None: the step
    goes on in the next row).
    """

    evals: tuple[Eval, ...]
    a: float
    b: tuple[float, ...]
    c: float
    draw: bool
    t_start: float
    t_end: float
    step: int | None


@dataclass(frozen=True)
class StageTable:
    """A fixed-step sampler as data: rows of model calls and linear updates (all float64 numbers).

    History ``h_0 .. h_{K-1}`` holds the latest K data predictions, newest first (zeros before
    the first calls; causality is checked: no weight on an entry that does not exist yet).
    """

    name: str
    ts: Tensor  # (N + 1,) the grid
    history: int  # K
    rows: tuple[Stage, ...]
    noise_scale: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.ts) - 1

    @property
    def stochastic(self) -> bool:
        return any(r.draw for r in self.rows)

    @property
    def nfe(self) -> int:
        return sum(len(r.evals) for r in self.rows)

    @property
    def draws(self) -> int:
        return sum(r.draw for r in self.rows)

    def eval_times(self) -> Tensor:
        """(E,) float64 times of every model call, in order."""
        return torch.tensor([e.t for r in self.rows for e in r.evals], dtype=torch.float64)

    def as_stages(self) -> StageTable:
        return self

    def as_dict(self) -> dict[str, Any]:
        """Plain data (lists of floats), e.g. for JSON."""
        return {
            "name": self.name, "ts": self.ts.tolist(), "history": self.history, "noise_scale": self.noise_scale,
            "rows": [{"evals": [{"t": e.t, "p": e.p, "q": list(e.q)} for e in r.evals], "a": r.a, "b": list(r.b),
                      "c": r.c, "draw": r.draw, "t_start": r.t_start, "t_end": r.t_end, "step": r.step} for r in self.rows],
        }

    def check(self, sde: LinearSDE, *, point_mass: bool = True) -> None:
        """Raise ValueError unless the table is well formed: K weights everywhere, finite numbers,
        no weight on a history entry that does not exist yet, c >= 0 (0 without a draw), every grid
        step's callback once and in order; and, with ``point_mass``, the point-mass identities of
        the module docstring for every update and for every model input (mean: ``p alpha(t_start)
        + sum q = alpha(t)``; spread: ``p^2 sigma(t_start)^2 = sigma(t)^2``)."""
        K, name = self.history, self.name
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"table {name!r}: history must be a positive integer; got {K!r}")
        filled, steps = 0, []
        for i, r in enumerate(self.rows):
            for e in r.evals:
                _check_row(name, i, "q", e.q, K, filled, (e.t, e.p))
                filled = min(K, filled + 1)
            _check_row(name, i, "b", r.b, K, filled, (r.a, r.c, r.t_start, r.t_end))
            if r.c < 0 or (not r.draw and r.c != 0):
                raise ValueError(f"table {name!r}: row {i} has c = {r.c!r}; c must be >= 0, and 0 in a row without a draw")
            if r.step is not None:
                steps.append(r.step)
        if steps != list(range(self.steps)):
            raise ValueError(f"table {name!r}: the rows must end the grid steps 0 .. {self.steps - 1} once each, "
                             f"in order; they end {steps}")
        if point_mass:
            self._check_point_mass(sde)

    def _check_point_mass(self, sde: LinearSDE) -> None:
        s, f64 = self.noise_scale, torch.float64
        rows = self.rows
        # Every row's start and end, every call's time and its row's start: alpha and sigma in one batch.
        evals = [(i, j, e) for i, r in enumerate(rows) for j, e in enumerate(r.evals)]
        t = torch.tensor([r.t_start for r in rows] + [r.t_end for r in rows] + [e.t for _, _, e in evals], dtype=f64)
        alpha, sigma = sde.alpha(t).tolist(), sde.sigma(t).tolist()
        N = len(rows)
        for n, (i, j, e) in enumerate(evals):
            a0, s0, ae, se = alpha[i], sigma[i], alpha[2 * N + n], sigma[2 * N + n]
            _identity(self.name, f"row {i} call {j}: p*alpha + sum q = alpha(t)", e.p * a0 + sum(e.q), ae,
                      abs(e.p * a0) + sum(abs(v) for v in e.q) + ae)
            spread = (e.p * s0) ** 2
            _identity(self.name, f"row {i} call {j}: p^2*sigma^2 = sigma(t)^2", spread, se**2, spread + se**2)
        for i, r in enumerate(rows):
            a0, s0, a1, s1 = alpha[i], sigma[i], alpha[N + i], sigma[N + i]
            _identity(self.name, f"row {i}: a*alpha + sum b = alpha(t_end)", r.a * a0 + sum(r.b), a1,
                      abs(r.a * a0) + sum(abs(v) for v in r.b) + a1)
            if s == 0 and r.draw:
                continue  # noise switched off by noise_scale = 0: the spread is not preserved
            lhs = (r.a * s0) ** 2 + ((r.c / s) if r.draw else 0.0) ** 2
            _identity(self.name, f"row {i}: a^2*sigma^2 + (c/noise_scale)^2 = sigma(t_end)^2", lhs, s1**2, lhs + s1**2)


def _check_row(name: str, i: int, key: str, w: tuple, K: int, filled: int, scalars: tuple) -> None:
    if len(w) != K:
        raise ValueError(f"table {name!r}: row {i} has {len(w)} {key} weights; the history has K = {K}")
    if not all(math.isfinite(float(v)) for v in (*w, *scalars)):
        raise ValueError(f"table {name!r}: row {i} contains NaN or Inf")
    if any(v != 0 for v in w[filled:]):
        raise ValueError(f"table {name!r}: row {i} weighs history entry {filled} or later, which does not exist yet "
                         f"(only {filled} predictions so far)")


def _identity(name: str, what: str, lhs: float, rhs: float, scale: float) -> None:
    err = abs(lhs - rhs) / max(scale, torch.finfo(torch.float64).tiny)
    if err > IDENTITY_RTOL:
        raise ValueError(f"table {name!r} fails the point-mass identity {what}: {lhs:.17g} vs {rhs:.17g} "
                         f"(relative error {err:.3g} > {IDENTITY_RTOL:g})")


class TableBuilder:
    """Write a :class:`StageTable` in the sampler's own terms: predictions are named by labels.

    ``call(label, t, x=p, **terms)`` records a model call at ``p x + sum w * prediction[label]``;
    ``update(a, {label: b}, c=..., draw=..., t_start=..., t_end=..., step=...)`` records a row's
    update. Labels map to history positions automatically; a label that fell off the history
    (K too small) is an error.
    """

    def __init__(self, name: str, ts: Tensor, history: int):
        self.name, self.ts, self.K = name, ts, history
        self.labels: list[Any] = []  # newest first
        self.rows: list[Stage] = []
        self._evals: list[Eval] = []

    def _weights(self, terms: dict) -> tuple[float, ...]:
        w = [0.0] * self.K
        for label, v in terms.items():
            if label not in self.labels:
                raise ValueError(f"table {self.name!r}: prediction {label!r} is not in the history {self.labels} (K = {self.K})")
            w[self.labels.index(label)] += float(v)
        return tuple(w)

    def call(self, label: Any, t: Any, x: Any = 1.0, terms: dict | None = None) -> None:
        self._evals.append(Eval(float(t), float(x), self._weights(terms or {})))
        self.labels = ([label] + self.labels)[: self.K]

    def update(self, a: Any, terms: dict | None = None, *, c: Any = 0.0, draw: bool = False, t_start: Any, t_end: Any,
               step: int | None) -> None:
        self.rows.append(Stage(tuple(self._evals), float(a), self._weights(terms or {}), float(c), bool(draw),
                               float(t_start), float(t_end), step))
        self._evals = []

    def build(self, sde: LinearSDE, *, noise_scale: float = 1.0, point_mass: bool = True) -> StageTable:
        if self._evals:
            raise ValueError(f"table {self.name!r}: calls after the last update")
        table = StageTable(self.name, self.ts, self.K, tuple(self.rows), float(noise_scale))
        table.check(sde, point_mass=point_mass)
        return table


def _coefficient_stages(self: CoefficientTable) -> StageTable:
    """The same table as a :class:`StageTable` (one call at the state per row)."""
    ts = self.ts.tolist()
    a, b, c = self.a.tolist(), self.b.tolist(), self.c.tolist()
    rows = tuple(
        Stage((Eval(ts[i], 1.0, (0.0,) * self.history),), a[i], tuple(b[i]), c[i] if self.stochastic else 0.0,
              self.stochastic, ts[i], ts[i + 1], i)
        for i in range(self.steps)
    )
    return StageTable(self.name, self.ts, self.history, rows, self.noise_scale)


CoefficientTable.as_stages = _coefficient_stages  # type: ignore[attr-defined]


def as_stage_table(table: CoefficientTable | StageTable) -> StageTable:
    if isinstance(table, (CoefficientTable, StageTable)):
        return table.as_stages()
    raise TypeError(f"table must be a CoefficientTable or a StageTable; got {type(table).__name__}")


def run_stages(
    model: Callable[..., Any],
    sde: LinearSDE,
    x: Tensor,
    ts: Tensor,
    table: CoefficientTable | StageTable,
    noise: Callable[[Tensor], Tensor],
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Reference runner of a stage table in plain torch: ``model(u, t).x0`` for every call, the
    updates in x's dtype, one ``noise(x)`` per drawing row (after its calls). What every engine
    must match."""
    table = as_stage_table(table)
    if table.ts.shape != ts.shape or not torch.equal(table.ts.to(ts.device), ts.to(torch.float64)):
        raise ValueError(f"table {table.name!r} was built for another grid than ts")
    hist: list[Tensor] = []

    def combo(w0: float, v0: Tensor, ws: tuple[float, ...]) -> Tensor:
        out = w0 * v0
        for w, h in zip(ws, hist, strict=False):
            if w != 0:
                out = out + w * h
        return out

    for r in table.rows:
        for e in r.evals:
            u = x if (e.p == 1.0 and not any(e.q)) else combo(e.p, x, e.q)
            t = torch.tensor(e.t, dtype=torch.float64, device=x.device)
            hist = [model(u, t).x0] + hist[: table.history - 1]
        x_next = combo(r.a, x, r.b)
        if r.draw:
            x_next = x_next + r.c * noise(x)
        x = x_next
        if callback is not None and r.step is not None:
            callback(r.step, x)
    return x
