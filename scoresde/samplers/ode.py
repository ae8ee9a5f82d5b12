"""Probability-flow ODE samplers (Song et al. 2021, Sec. 4.3): torchdiffeq and scipy solvers.

``dx/dt = f(t) x - g(t)^2 score(x, t) / 2`` integrated from T down to t_min. ``ode`` uses any
torchdiffeq method: fixed-step methods take one method step per interval of the grid ``ts``;
adaptive methods integrate from ``ts[0]`` to ``ts[-1]`` with error control. ``ode_scipy`` is
the reference code's solver: ``scipy.integrate.solve_ivp`` on the flattened float64 state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _torchdiffeq as tdq
from .._utils import as_time
from ..registry import Anything, Choice, Real
from ..sde import LinearSDE
from .registry import register

__all__ = ["ode", "ode_scipy", "ODE_METHODS", "ODE_METHOD_ORDER", "FIXED_METHODS", "SCIPY_METHODS"]

#: every method torchdiffeq accepts (its own list).
ODE_METHODS: tuple[str, ...] = tuple(tdq.SOLVERS)
#: the methods that step on the grid ts (one method step per interval).
FIXED_METHODS: tuple[str, ...] = tdq.FIXED_METHODS
#: network calls per step of the one-step fixed-grid methods (torchdiffeq's Runge-Kutta tableaus);
#: the Adams methods step on the grid too, but their call count depends on their warm-up and iterations.
_STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
#: convergence order of the fixed-step one-step methods (torchdiffeq's ``order``); checked by the tests.
ODE_METHOD_ORDER: dict[str, int] = {m: tdq.method_order(m) for m in _STAGES}
#: scipy.integrate.solve_ivp's methods.
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
_TOL = Real(gt=0)
_SOLVER_OPTIONS = Anything(types=(dict,), optional=True)


class _Drift:
    """The PF-ODE right-hand side for torchdiffeq (f(t, x)), reporting each fixed step's start."""

    def __init__(self, model, sde: LinearSDE, callback):
        self.model, self.sde, self.callback, self.step = model, sde, callback, -1

    def __call__(self, t, x):
        return self.sde.ode_drift(x, t, self.model(x, t).score)

    def callback_step(self, t0, x0, dt):  # torchdiffeq calls this before each step with its start state
        if self.step >= 0:
            self.callback(self.step, x0)
        self.step += 1


def _fixed(o: dict) -> bool:
    return o["method"] in FIXED_METHODS


# Fixed-step methods run on the grid with torchdiffeq's order; adaptive ones use the grid's end points only.
# torchdiffeq owns the state between steps, so there is no per-step state hook.
@register("ode", kind="ode", stochastic=False, fixed_grid=_fixed, default_steps=100, state_hook=False,
          order=lambda o: tdq.method_order(o["method"]) if _fixed(o) else None,
          nfe=lambda steps, o: _STAGES[o["method"]] * steps if o["method"] in _STAGES else None,
          params={"method": Choice(ODE_METHODS), "rtol": _TOL, "atol": _TOL, "solver_options": _SOLVER_OPTIONS},
          variants=({"method": "rk4"}, {"method": "euler"}, {"method": "bosh3", "rtol": 1e-4, "atol": 1e-4}),
          nfe_per_step="fixed methods: stages per step (euler 1, midpoint 2, heun2 2, heun3 3, rk4 4); adaptive: counted",
          paper="Song et al. 2021, Sec. 4.3 (probability-flow ODE); Chen et al. 2018 (torchdiffeq)")
def ode(model, sde: LinearSDE, x, ts, *, noise, callback, method: str = "dopri5", rtol: float = 1e-5,
        atol: float = 1e-5, solver_options: dict | None = None):
    """Probability-flow ODE (Song et al. 2021, Eq. 13) through torchdiffeq.odeint; dopri5 by default, adaptive NFE."""
    opts: dict[str, Any] = dict(solver_options or {})
    drift = _Drift(model, sde, callback)
    if method in FIXED_METHODS:
        clash = sorted({"step_size", "grid_constructor"} & set(opts))
        if clash:
            raise ValueError(f"solver_options {clash} are not accepted for the fixed-step method {method!r}: it "
                             "takes one step per interval of the grid ts (choose steps= and schedule= instead)")
        # One method step per interval of ts; only the end state is stored.
        opts["grid_constructor"] = lambda f, y0, t: ts
        x = tdq.odeint(drift, x, ts[[0, -1]], what="sampler 'ode'", rtol=rtol, atol=atol, method=method, options=opts)[-1]
        callback(len(ts) - 2, x)
        return x
    if method in tdq.RK_ADAPTIVE_METHODS:
        # Land on ts[-1] exactly: torchdiffeq otherwise steps past the end (below t_min, even t < 0) and interpolates.
        user = as_time(opts.get("step_t", []), device=ts.device).flatten()
        opts["step_t"] = torch.unique(torch.cat([user, ts[-1:]]))
    # A plain function (no callback_step): adaptive steps are not grid steps; one callback at the end.
    x = tdq.odeint(lambda t, y: drift(t, y), x, ts[[0, -1]], what="sampler 'ode'", rtol=rtol, atol=atol, method=method,
                   options=opts)[-1]
    callback(0, x)
    return x


@register("ode_scipy", kind="ode", stochastic=False, fixed_grid=False, default_steps=1, nfe=None,
          params={"method": Choice(SCIPY_METHODS), "rtol": _TOL, "atol": _TOL, "solver_options": _SOLVER_OPTIONS},
          variants=({"method": "DOP853"},), nfe_per_step="adaptive (counted)",
          paper="Song et al. 2021, Sec. 4.3 (score_sde get_ode_sampler)")
def ode_scipy(model, sde: LinearSDE, x, ts, *, noise, callback, method: str = "RK45", rtol: float = 1e-5,
              atol: float = 1e-5, solver_options: dict | None = None):
    """Probability-flow ODE (Song et al. 2021, Eq. 13) through scipy's solve_ivp on the float64 host state; adaptive NFE."""
    from scipy.integrate import solve_ivp

    shape, dtype, device = x.shape, x.dtype, x.device
    last_t = [float(ts[0])]

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        # Host -> device and back on every evaluation: inherent to scipy.
        last_t[0] = t
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        tt = as_time(t, device=device)
        return sde.ode_drift(xt, tt, model(xt, tt).score).detach().to("cpu", torch.float64).numpy().ravel()

    t0, t1 = float(ts[0]), float(ts[-1])
    y0 = x.detach().to("cpu", torch.float64).numpy().ravel()
    sol = solve_ivp(fun, (t0, t1), y0, method=method, rtol=rtol, atol=atol, t_eval=[t1], **(solver_options or {}))
    if not sol.success or sol.y.shape[1] != 1:
        raise RuntimeError(f"ode_scipy: solve_ivp(method={method!r}) failed on [{t0:g}, {t1:g}] (last evaluation "
                           f"at t={last_t[0]:.6g}, {sol.nfev} evaluations): {sol.message}")
    x = torch.from_numpy(sol.y[:, 0].copy()).reshape(shape).to(device=device, dtype=dtype)
    callback(0, x)
    return x
