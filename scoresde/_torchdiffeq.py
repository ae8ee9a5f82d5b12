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


def odeint(func, y0, t, *, what: str, **kwargs):
    """``torchdiffeq.odeint``, with the solver's own failures (it raises AssertionErrors: step size
    underflow, a non-finite state, too many steps) raised as a RuntimeError that says what failed and
    over which interval; the model is not blamed (a non-finite model output is the model's own error)."""
    try:
        return torchdiffeq.odeint(func, y0, t, **kwargs)
    except AssertionError as err:
        text = str(err).split(":")[0] if "non-finite" in str(err) else str(err)
        hint = ("the step size fell to zero: the ODE is too stiff, or its solution diverges, at these tolerances"
                if "underflow" in text else "the solution diverged" if "non-finite" in text else "see the solver's message")
        raise RuntimeError(f"{what}: torchdiffeq's {kwargs.get('method', 'dopri5')!r} solver failed between t={float(t[0]):.6g} "
                           f"and t={float(t[-1]):.6g} ({text}): {hint}") from None
