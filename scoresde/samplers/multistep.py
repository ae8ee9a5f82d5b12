"""Linear multistep (Adams-Bashforth) samplers in the scaled variables: iPNDM, LMS and DEIS.

In ``x~ = x / alpha`` and ``sigma~ = sigma / alpha`` the probability-flow ODE of every linear SDE is

    dx~ / dsigma~ = eps(x, t),         eps = (x~ - x0) / sigma~   (the noise prediction),

(Karras et al. 2022, Eq. 4; Zhang & Chen 2023, Eq. 9). An explicit Adams method keeps the
predictions of the last few steps and advances ``x~_{i+1} = x~_i + sum_j C[i, j] eps_{i-j}``,
one network call per step. The three samplers differ only in the weights ``C``:

* ``ipndm``: the fixed Adams-Bashforth weights of a uniform step, times the step in sigma~
  (Zhang & Chen 2023, iPNDM; Liu et al. 2022, PNDM without its Runge-Kutta start);
* ``lms``: the exact variable-step Adams-Bashforth weights in sigma~, the integrals of the
  Lagrange basis through the past sigma~ (k-diffusion ``sample_lms``; DEIS's rhoAB);
* ``deis``: the Lagrange basis in the SDE time t, integrated against dsigma~ (Zhang & Chen 2023,
  tAB-DEIS).

Each warms up with lower orders (1, 2, ... as history accumulates). Because the weights of each
row sum to the step ``sigma~_{i+1} - sigma~_i``, a constant eps is integrated exactly: for a point
mass eps is constant along the solution, so all three reproduce its probability-flow map to
round-off. The weights are float64, computed from the grid before the loop and checked there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._utils import check_choice
from ..registry import Choice
from ..sde import LinearSDE
from .registry import register

__all__ = ["ipndm", "lms", "deis", "adams_weights", "IPNDM_WEIGHTS", "ORDERS"]

ORDERS = (1, 2, 3, 4)

#: Adams-Bashforth weights of a uniform step, newest first (Hairer, Norsett & Wanner, Table III.1.1).
IPNDM_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}

#: 8-point Gauss-Legendre rule on [-1, 1] (exact for polynomials of degree <= 15).
_GL_X, _GL_W = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(8))
#: 24 points for the DEIS integrands, which are polynomials in t(sigma~) times a smooth weight.
_GL24_X, _GL24_W = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(24))

#: rows of C must sum to the sigma~ step to this relative accuracy (a few float64 operations per
#: weight; the weights of order 4 on strongly graded grids reach ~1e3 x the step and cancel).
_ROW_RTOL = 1e-9


def _lagrange(nodes: Tensor, j: int, u: Tensor) -> Tensor:
    """The j-th Lagrange basis polynomial through ``nodes`` (R, p) at ``u`` (R, Q), float64 (R, Q)."""
    out = torch.ones_like(u)
    for k in range(nodes.shape[1]):
        if k != j:
            out = out * (u - nodes[:, k:k + 1]) / (nodes[:, j:j + 1] - nodes[:, k:k + 1])
    return out


def adams_weights(s: Tensor, order: int, *, kind: str = "lms", t: Tensor | None = None,
                  sde: LinearSDE | None = None) -> Tensor:
    """(N, order) float64 weights C[i, j] of eps_{i-j} in ``x~_{i+1} = x~_i + sum_j C[i, j] eps_{i-j}``.

    ``s`` is the grid's sigma~ (N + 1 values). Step i uses order ``min(order, i + 1)``.

    * ``ipndm``: C[i, j] = (s_{i+1} - s_i) w_j with the uniform-step Adams-Bashforth weights w;
    * ``lms``: C[i, j] = int_{s_i}^{s_{i+1}} l_j(u) du, l_j the Lagrange basis through
      s_i, s_{i-1}, ... (Gauss-Legendre, exact for these polynomials of degree <= 3);
    * ``deis``: C[i, j] = int_{t_i}^{t_{i+1}} l_j(tau) dsigma~(tau), l_j the Lagrange basis
      through t_i, t_{i-1}, ..., computed in v = log sigma~ as int l_j(t(v)) e^v dv (24-point
      Gauss-Legendre; needs ``t`` and ``sde``).
    """
    check_choice("kind", kind, ("ipndm", "lms", "deis"))
    s = s.to(torch.float64)
    n = len(s) - 1
    C = torch.zeros(n, order, dtype=torch.float64, device=s.device)
    for p in range(1, order + 1):
        # Rows of order p: the warm-up row p - 1, and for p = order every later row.
        if p - 1 >= n:
            break
        rows = torch.arange(p - 1, n if p == order else p, device=s.device)
        a, b = s[rows], s[rows + 1]
        if kind == "ipndm":
            C[rows, :p] = (b - a)[:, None] * torch.tensor(IPNDM_WEIGHTS[p], dtype=torch.float64, device=s.device)
            continue
        if kind == "lms":
            x, w, nodes = _GL_X.to(s.device), _GL_W.to(s.device), torch.stack([s[rows - k] for k in range(p)], 1)
            u = 0.5 * (a + b)[:, None] + 0.5 * (b - a)[:, None] * x
            half, dens = 0.5 * (b - a), torch.ones_like(u)
        else:
            x, w = _GL24_X.to(s.device), _GL24_W.to(s.device)
            nodes = torch.stack([t[rows - k] for k in range(p)], 1).to(torch.float64)
            v0, v1 = torch.log(a), torch.log(b)
            v = 0.5 * (v0 + v1)[:, None] + 0.5 * (v1 - v0)[:, None] * x
            u, half, dens = sde.t_from_sigma_tilde(torch.exp(v)), 0.5 * (v1 - v0), torch.exp(v)
        for j in range(p):
            C[rows, j] = half * (w * _lagrange(nodes, j, u) * dens).sum(1)
    # Checked when built: every row integrates a constant exactly (sum = the sigma~ step).
    step = s[1:] - s[:-1]
    err = (C.sum(1) - step).abs() / step.abs()
    if not bool(torch.isfinite(C).all()) or bool((err > _ROW_RTOL).any()):
        i = int(torch.nan_to_num(err, nan=1.0).argmax())
        raise ValueError(f"{kind} weights of step {i} do not sum to the sigma~ step (relative error {float(err[i]):.3g}); "
                         "the grid has (nearly) repeated noise levels")
    return C


def _adams_loop(model, sde: LinearSDE, x: Tensor, ts: Tensor, C: Tensor, callback) -> Tensor:
    """x~_{i+1} = x~_i + sum_j C[i, j] eps_{i-j}, one network call per step, in x's dtype."""
    alpha = sde.alpha(ts).to(device=x.device, dtype=x.dtype)
    C = C.to(device=x.device, dtype=x.dtype)
    eps: list[Tensor] = []  # newest first
    for i in range(len(ts) - 1):
        eps = [model(x, ts[i]).eps] + eps[: C.shape[1] - 1]
        # Adams-Bashforth step in (sigma~, x~) over the available history.
        xt = x / alpha[i]
        for j, e in enumerate(eps):
            xt = xt + C[i, j] * e
        x = alpha[i + 1] * xt
        x = callback(i, x)
    return x


_ORDER = {"order": Choice(ORDERS)}


# Order 2 on graded grids whatever `order` is (fixed weights; order `order` only on grids uniform in sigma~).
@register("ipndm", kind="ode", order=2, stochastic=False, nfe=1, default_steps=10, params=_ORDER,
          default_schedule="karras", exact_for_point_mass=True, variants=({"order": 3},),
          paper="Zhang & Chen 2023 (DEIS), iPNDM; Liu et al. 2022 (PNDM)")
def ipndm(model, sde: LinearSDE, x, ts, *, noise, callback, order: int = 4):
    """iPNDM (Zhang & Chen 2023, App.; fixed Adams-Bashforth weights in sigma~); 1 NFE per step, orders 1..order to start.

    The weights are those of a uniform step. On a grid uniform in sigma~ the method has order
    ``order``; on a graded grid (Karras, log-SNR) the mismatch of the weights makes the local
    error O(h^3) whatever ``order`` is, so it converges with order 2 (the declared order), with
    small constants. ``lms`` is the same method with the exact variable-step weights.
    """
    return _adams_loop(model, sde, x, ts, adams_weights(sde.sigma_tilde(ts), order, kind="ipndm"), callback)


@register("lms", kind="ode", order=lambda o: o["order"], stochastic=False, nfe=1, default_steps=10, params=_ORDER,
          default_schedule="karras", exact_for_point_mass=True, variants=({"order": 3},),
          paper="k-diffusion sample_lms (Crowson); variable-step Adams-Bashforth in sigma~ (DEIS rhoAB)")
def lms(model, sde: LinearSDE, x, ts, *, noise, callback, order: int = 4):
    """Linear multistep (k-diffusion sample_lms): variable-step Adams-Bashforth in sigma~; order ``order``, 1 NFE per step.

    Weights are the exact integrals of the Lagrange basis in sigma~ (Gauss-Legendre, exact for
    these polynomials), not k-diffusion's per-step ``scipy.integrate.quad``.
    """
    return _adams_loop(model, sde, x, ts, adams_weights(sde.sigma_tilde(ts), order, kind="lms"), callback)


@register("deis", kind="ode", order=lambda o: o["order"], stochastic=False, nfe=1, default_steps=10, params=_ORDER,
          default_schedule="karras", exact_for_point_mass=True, variants=({"order": 2},),
          paper="Zhang & Chen 2023 (DEIS), tAB-DEIS")
def deis(model, sde: LinearSDE, x, ts, *, noise, callback, order: int = 3):
    """tAB-DEIS (Zhang & Chen 2023, Eq. 15): eps extrapolated by a polynomial in t; order ``order``, 1 NFE per step.

    ``order`` counts the eps values used (DEIS's tAB-r uses r + 1 of them: order=3 is tAB2,
    order=4 is tAB3; order=1 is DDIM). On the EDM SDE (t = sigma~) it coincides with ``lms``.
    """
    C = adams_weights(sde.sigma_tilde(ts), order, kind="deis", t=ts, sde=sde)
    return _adams_loop(model, sde, x, ts, C, callback)
