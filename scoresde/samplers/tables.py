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

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..sde import LinearSDE

__all__ = ["CoefficientTable", "make_table", "run_table"]

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
