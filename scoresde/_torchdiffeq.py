"""The one place that reads torchdiffeq's internals: its solver table and solver classes.

torchdiffeq exports only ``odeint``; the names of its methods, which of them step on a given grid
and each method's order live in ``torchdiffeq._impl``. ``ode.py`` and ``likelihood.py`` read them
from here, so a change of torchdiffeq's layout is mended once.
"""

from __future__ import annotations

import importlib

import torchdiffeq  # noqa: F401  (the package; its odeint module is read below)

_odeint = importlib.import_module("torchdiffeq._impl.odeint")
_FixedGrid = importlib.import_module("torchdiffeq._impl.solvers").FixedGridODESolver
_RKAdaptive = importlib.import_module("torchdiffeq._impl.rk_common").RKAdaptiveStepsizeODESolver

#: every method torchdiffeq accepts -> its solver class.
SOLVERS: dict[str, type] = dict(_odeint.SOLVERS)
#: the methods that step on a given grid (one method step per interval).
FIXED_METHODS: tuple[str, ...] = tuple(m for m, cls in SOLVERS.items() if issubclass(cls, _FixedGrid))
#: the adaptive Runge-Kutta methods (they accept ``step_t`` to land on given times).
RK_ADAPTIVE_METHODS: tuple[str, ...] = tuple(m for m, cls in SOLVERS.items() if issubclass(cls, _RKAdaptive))


def method_order(method: str) -> int | None:
    """The convergence order torchdiffeq's solver class declares (None if it declares none)."""
    order = getattr(SOLVERS[method], "order", None)
    return int(order) if isinstance(order, int) else None
