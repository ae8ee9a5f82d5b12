"""Exponential integrators in lambda = log(alpha / sigma) with the data prediction x0.

DDIM (Song, Meng & Ermon 2021), DPM-Solver++(2M), (3M) and (2M) SDE (Lu et al. 2022b) and UniPC
(Zhao et al. 2023). All work for any linear SDE: they need only alpha, sigma and lambda on the
grid. The linear part of the probability-flow ODE is integrated exactly,

    x_t = (sigma_t / sigma_s) x_s + alpha_t int_{lam_s}^{lam_t} e^{-(lam_t - u)} x0(u) du,

and the integral is approximated from past data predictions. With ``h = lam_t - lam_s > 0`` the
weights are ``alpha_t h phi_k(-h)`` with ``phi_k(z) = sum_j z^j / (j + k)!`` (:func:`phi`). Because
the x0-integral of a constant is exact, every method here reproduces the probability-flow solution
of a point mass to round-off at any step count.

Per-step coefficients are computed in float64 from the grid before the loop; ``ddim``,
``dpmpp_2m``, ``dpmpp_3m`` and ``dpmpp_2m_sde`` also publish them as a checked
:class:`~scoresde.samplers.tables.CoefficientTable` (``coefficients=`` in the registry).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import Choice, Real
from ..sde import LinearSDE
from .registry import register
from .tables import CoefficientTable, StageTable, TableBuilder, make_table

__all__ = [
    "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "phi", "SOLVER_TYPES", "UNIPC_VARIANTS", "FIRST_STEPS",
    "unipc_coefficients",
]

SOLVER_TYPES = ("dpmsolver", "taylor")
UNIPC_VARIANTS = ("bh1", "bh2")
FIRST_STEPS = ("ddim", "midpoint")  # dpmpp_3m
UNIPC_ORDERS = (1, 2, 3)


# ---------------------------------------------------------------------------------- shared helpers
def phi(k: int, z: Tensor) -> Tensor:
    """phi_k(z) = sum_{j>=0} z^j / (j + k)!  (phi_1(z) = (e^z - 1)/z, phi_{k+1} = (phi_k - 1/k!)/z).

    float64; the recurrence loses ~eps/|z|^k for small |z|, so |z| < 0.5 uses the series (20
    terms: truncation below 0.5^20/20! ~ 4e-25).
    """
    z = z.to(torch.float64)
    closed = torch.expm1(z) / z
    for j in range(1, k):
        closed = (closed - 1.0 / math.factorial(j)) / z
    series = torch.zeros_like(z)
    for j in reversed(range(20)):
        series = series * z + 1.0 / math.factorial(j + k)
    return torch.where(z.abs() < 0.5, series, closed)


def _grid(sde: LinearSDE, ts: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """alpha and sigma on the grid and the lambda step sizes h (all > 0), float64."""
    alpha, sigma, lam = sde.alpha(ts), sde.sigma(ts), sde.lam(ts)
    h = lam[1:] - lam[:-1]
    bad = ~(torch.isfinite(h) & (h > 0))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"sampler {name!r} needs lambda = log(alpha/sigma) strictly increasing along the grid; step {i} "
            f"(t={float(ts[i]):.17g} -> {float(ts[i + 1]):.17g}) has h = {float(h[i]):.3g}"
        )
    return alpha, sigma, h


def _orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each multistep step: warm up from 1; with ``lower_order_final`` the last steps
    drop to 1, 2, ... (Lu et al. 2022b use this only below 10 steps; we use it at any count)."""
    return [min(order, i + 1, steps - i if lower_order_final else order) for i in range(steps)]


def _ratios(h: Tensor, lag: int) -> Tensor:
    """r[i] = h[i - lag] / h[i] (1 where undefined; never used there)."""
    r = torch.ones_like(h)
    r[lag:] = h[:-lag] / h[lag:]
    return r


def _cast(x: Tensor, *vs: Tensor) -> list[Tensor]:
    return [v.to(device=x.device, dtype=x.dtype) for v in vs]


# ---------------------------------------------------------------------------------- DDIM
def _ddim_scales(sigma: Tensor, h: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(k_eps, sigma_eta): x_next = alpha_next x0 + k_eps eps + sigma_eta z.

    sigma_eta = eta sigma_next sqrt(1 - e^{-2h}) is DDIM's eta * sqrt((1-a_s^2)/(1-a_t^2)) sqrt(1-a_t^2/a_s^2)
    (VP, s the next time) written in lambda, so it holds for any linear SDE.
    """
    frac = eta**2 * -torch.expm1(-2.0 * h)  # sigma_eta^2 / sigma_next^2
    return sigma[1:] * torch.sqrt(1.0 - frac), sigma[1:] * torch.sqrt(frac)


def ddim_coefficients(sde: LinearSDE, ts: Tensor, *, eta: float = 0.0) -> CoefficientTable:
    """DDIM as a table: a = k_eps/sigma, b = alpha_next - a alpha, c = sigma_eta (eps = (x - alpha x0)/sigma)."""
    alpha, sigma, h = _grid(sde, ts, "ddim")
    k_eps, sig_eta = _ddim_scales(sigma, h, eta)
    a = k_eps / sigma[:-1]
    # b = alpha_next (1 - e^{-h} sqrt(1 - frac)) with frac = (sigma_eta/sigma_next)^2, written
    # without cancellation: 1 - e^{-h} sqrt(1 - frac) = (1 - e^{-h}) + e^{-h} frac / (1 + sqrt(1 - frac)).
    frac = eta**2 * -torch.expm1(-2.0 * h)
    b = alpha[1:] * (-torch.expm1(-h) + torch.exp(-h) * frac / (1.0 + torch.sqrt(1.0 - frac)))
    return make_table("ddim", sde, ts, a, b, sig_eta if eta > 0 else None)


# eta scales the noise: the path solves dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw (eta = 1: DDPM).
@register("ddim", kind="ode", stochastic=lambda o: o["eta"] > 0, order=lambda o: 1 if o["eta"] == 0 else None,
          strong_order=lambda o: 1.0 if o["eta"] > 0 else None, sde_eta=lambda o: o["eta"], nfe=1, default_steps=50,
          default_schedule="uniform", exact_for_point_mass=lambda o: o["eta"] == 0, coefficients=ddim_coefficients,
          params={"eta": Real(ge=0, le=1)}, variants=({"eta": 1.0}, {"eta": 0.5}),
          paper="Song, Meng & Ermon 2021 (DDIM), Eq. 12")
def ddim(model, sde: LinearSDE, x, ts, *, noise, callback, eta: float = 0.0):
    """DDIM (Song, Meng & Ermon 2021, Eq. 12); order 1, 1 NFE per step; eta=0 is DPM-Solver-1, eta=1 is DDPM's posterior."""
    alpha, sigma, h = _grid(sde, ts, "ddim")
    alpha, k_eps, sig_eta = _cast(x, alpha, *_ddim_scales(sigma, h, eta))
    for i in range(len(ts) - 1):
        pred = model(x, ts[i])
        # Predicted x0, direction pointing to x_t, and (eta > 0) fresh noise.
        x = alpha[i + 1] * pred.x0 + k_eps[i] * pred.eps
        if eta > 0:
            x = x + sig_eta[i] * noise(x)
        x = callback(i, x)
    return x


# ---------------------------------------------------------------------------------- DPM-Solver++
def _dpmpp_weights(alpha_next: Tensor, h: Tensor, solver_type: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(w1, w2_2m, w2, w3): weights of x0, of the 2M difference, and of the 3M D1 and D2 terms.

    w1 = alpha h phi_1(-h) [= -alpha (e^{-h} - 1)], w2 = alpha h phi_2(-h), w3 = alpha h phi_3(-h);
    the 2M difference uses w1/2 ('dpmsolver') or w2 ('taylor'), Lu et al. 2022b, Alg. 2 / App.
    """
    w1, w2, w3 = (alpha_next * h * phi(k, -h) for k in (1, 2, 3))
    return w1, (0.5 * w1 if solver_type == "dpmsolver" else w2), w2, w3


def _two_step_table(name, sde, ts, a, w1, w2m, r, orders, c=None) -> CoefficientTable:
    """Expand x_next = a x + w1 x0_i + w2m (x0_i - x0_{i-1}) / r (on 2nd-order steps) into b."""
    second = torch.tensor([o == 2 for o in orders], dtype=torch.float64, device=a.device)
    d = second * w2m / r
    b = torch.stack([w1 + d, -d], dim=1)
    return make_table(name, sde, ts, a, b, c)


def _two_step_loop(model, x, ts, a, w1, w2m, r, orders, c, noise, callback):
    """The DPM-Solver++(2M) loop, ODE (c None) or SDE: x' = a x + w1 x0 + w2m (x0 - x0_prev) / r (+ c z)."""
    a, w1, w2m, r = _cast(x, a, w1, w2m, r)
    c = None if c is None else _cast(x, c)[0]
    x0_prev = None
    for i in range(len(orders)):
        x0 = model(x, ts[i]).x0
        # 1st-order step (DPM-Solver-1 = DDIM; exact for the linear part and, with c, the noise).
        x_next = a[i] * x + w1[i] * x0
        # 2nd-order multistep correction: backward difference of x0 in lambda.
        if orders[i] == 2:
            x_next = x_next + w2m[i] * (x0 - x0_prev) / r[i]
        if c is not None:
            x_next = x_next + c[i] * noise(x)
        x, x0_prev = x_next, x0
        x = callback(i, x)
    return x


def dpmpp_2m_coefficients(sde: LinearSDE, ts: Tensor, *, solver_type: str = "dpmsolver",
                          lower_order_final: bool = True) -> CoefficientTable:
    """DPM-Solver++(2M) as a table (see :func:`dpmpp_2m`)."""
    alpha, sigma, h = _grid(sde, ts, "dpmpp_2m")
    w1, w2m, _, _ = _dpmpp_weights(alpha[1:], h, solver_type)
    orders = _orders(len(h), 2, lower_order_final)
    return _two_step_table("dpmpp_2m", sde, ts, sigma[1:] / sigma[:-1], w1, w2m, _ratios(h, 1), orders)


_DPMPP_PARAMS = {"solver_type": Choice(SOLVER_TYPES)}


@register("dpmpp_2m", kind="ode", order=2, stochastic=False, nfe=1, default_steps=20, params=_DPMPP_PARAMS,
          default_schedule="logsnr", exact_for_point_mass=True, coefficients=dpmpp_2m_coefficients,
          variants=({"solver_type": "taylor"}, {"lower_order_final": False}),
          paper="Lu et al. 2022b (DPM-Solver++), Alg. 2")
def dpmpp_2m(model, sde: LinearSDE, x, ts, *, noise, callback, solver_type: str = "dpmsolver",
             lower_order_final: bool = True):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2); order 2, 1 NFE per step; 1st-order first (and, by default, last) step."""
    alpha, sigma, h = _grid(sde, ts, "dpmpp_2m")
    orders = _orders(len(h), 2, lower_order_final)
    w1, w2m, _, _ = _dpmpp_weights(alpha[1:], h, solver_type)
    return _two_step_loop(model, x, ts, sigma[1:] / sigma[:-1], w1, w2m, _ratios(h, 1), orders, None, noise, callback)


def dpmpp_3m_coefficients(sde: LinearSDE, ts: Tensor, *, solver_type: str = "dpmsolver",
                          lower_order_final: bool = True, reference_d2: bool = False,
                          first_step: str = "ddim") -> CoefficientTable | StageTable:
    """DPM-Solver++(3M) as a table (see :func:`dpmpp_3m`); with ``first_step="midpoint"`` a
    :class:`StageTable` whose first row also calls the model at the lambda midpoint."""
    k2 = 1.0 if reference_d2 else 2.0
    alpha, sigma, h = _grid(sde, ts, "dpmpp_3m")
    w1, w2m, w2, w3 = _dpmpp_weights(alpha[1:], h, solver_type)
    r0, r1 = _ratios(h, 1), _ratios(h, 2)
    p = torch.tensor(_orders(len(h), 3, lower_order_final), device=h.device)
    zero = torch.zeros_like(h)
    # Order 2: w2m (m0 - m1) / r0. Order 3: w2 D1 + w3 D2 = e0 D1_0 + e1 D1_1 with
    # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1.
    s = r0 + r1
    e0 = w2 * (1.0 + r0 / s) + k2 * w3 / s
    e1 = -w2 * r0 / s - k2 * w3 / s
    two, three = p == 2, p == 3
    b = torch.stack([
        w1 + torch.where(two, w2m / r0, zero) + torch.where(three, e0 / r0, zero),
        zero + torch.where(two, -w2m / r0, zero) + torch.where(three, -e0 / r0 + e1 / r1, zero),
        zero + torch.where(three, -e1 / r1, zero),
    ], dim=1)
    ratio = sigma[1:] / sigma[:-1]
    if first_step == "ddim":
        return make_table("dpmpp_3m", sde, ts, ratio, b)
    # DPM-Solver++(2S) first step: a call at the state, a call at the lambda midpoint, then the step
    # with the midpoint's prediction; the later steps use the grid predictions only (K = 4 keeps
    # m_{i-2} past the midpoint's entry).
    t_mid = sde.inverse_lambda(sde.lam(ts[:1]) + 0.5 * h[:1])
    ratio_mid = float(sde.sigma(t_mid)[0] / sigma[0])
    w1_mid = float(sde.alpha(t_mid)[0] * 0.5 * h[0] * phi(1, -0.5 * h[:1])[0])
    tb = TableBuilder("dpmpp_3m", ts, 4)
    tb.call(0, ts[0])
    tb.call("mid", t_mid[0], x=ratio_mid, terms={0: w1_mid})
    tb.update(ratio[0], {"mid": w1[0]}, t_start=ts[0], t_end=ts[1], step=0)
    bl, rl = b.tolist(), ratio.tolist()
    for i in range(1, len(h)):
        tb.call(i, ts[i])
        tb.update(rl[i], {i - k: bl[i][k] for k in range(min(3, i + 1))}, t_start=ts[i], t_end=ts[i + 1], step=i)
    return tb.build(sde)


# Order 3 needs both ends third order: the default's first-order first step (the reference's warm-up) and its
# lowered final step each cap the asymptotic global order at 2 (docs/samplers.md).
@register("dpmpp_3m", kind="ode", stochastic=False, default_steps=20, default_schedule="logsnr",
          order=lambda o: 3 if o["first_step"] == "midpoint" and not o["lower_order_final"] else 2,
          nfe=lambda steps, o: steps + int(o["first_step"] == "midpoint"), nfe_per_step="1 (+1 on the first step "
          "with first_step='midpoint')", exact_for_point_mass=True, coefficients=dpmpp_3m_coefficients,
          params={**_DPMPP_PARAMS, "first_step": Choice(FIRST_STEPS)},
          variants=({"first_step": "midpoint", "lower_order_final": False}, {"reference_d2": True},
                    {"solver_type": "taylor"}),
          paper="Lu et al. 2022b (DPM-Solver++), multistep order 3 (dpm_solver_pytorch.py)")
def dpmpp_3m(model, sde: LinearSDE, x, ts, *, noise, callback, solver_type: str = "dpmsolver",
             lower_order_final: bool = True, reference_d2: bool = False, first_step: str = "ddim"):
    """DPM-Solver++(3M) (Lu et al. 2022b, multistep order 3); order 3, 1 NFE per step; orders 1, 2 to start (and end).

    ``reference_d2=True`` reproduces dpm_solver_pytorch.py (and diffusers, k-diffusion), whose
    second difference D2 estimates h^2 x0''/2 where the phi_3 weight needs h^2 x0'': that step is
    2nd-order accurate only (measured global order 2; see docs).

    ``first_step="midpoint"`` makes the first step DPM-Solver++(2S) with r = 1/2 (Lu et al.
    2022b, Alg. 1; one more NFE, local error O(h^3)) instead of the reference's first-order DDIM
    step, whose O(h^2) local error caps the asymptotic global order at 2. With
    ``lower_order_final=False`` as well, the method is third order all the way (see docs).
    """
    k2 = 1.0 if reference_d2 else 2.0
    alpha, sigma, h = _grid(sde, ts, "dpmpp_3m")
    orders = _orders(len(h), 3, lower_order_final)
    r0, r1 = _ratios(h, 1), _ratios(h, 2)
    weights = _dpmpp_weights(alpha[1:], h, solver_type)
    ratio, w1, w2m, w2, w3, r0, r1 = _cast(x, sigma[1:] / sigma[:-1], *weights, r0, r1)
    if first_step == "midpoint":
        t_mid = sde.inverse_lambda(sde.lam(ts[:1]) + 0.5 * h[:1])
        alpha_mid, sigma_mid = sde.alpha(t_mid), sde.sigma(t_mid)
        ratio_mid, w1_mid = _cast(x, sigma_mid / sigma[:1], alpha_mid * 0.5 * h[:1] * phi(1, -0.5 * h[:1]))
        t_mid = t_mid[0].to(ts.dtype)
    m: list[Tensor] = []  # data predictions, newest first
    for i in range(len(h)):
        m = [model(x, ts[i]).x0] + m[:2]
        # DPM-Solver-1 step.
        x_next = ratio[i] * x + w1[i] * m[0]
        if i == 0 and first_step == "midpoint":
            # DPM-Solver++(2S), r = 1/2: a DPM-Solver-1 step to the lambda midpoint, then the full
            # step with the midpoint's data prediction.
            x_mid = ratio_mid[0] * x + w1_mid[0] * m[0]
            x_next = ratio[i] * x + w1[i] * model(x_mid, t_mid).x0
        elif orders[i] == 2:
            # 2nd-order correction (as dpmpp_2m).
            x_next = x_next + w2m[i] * (m[0] - m[1]) / r0[i]
        elif orders[i] == 3:
            # 3rd-order correction: D1 ~ h x0', D2 ~ h^2 x0'' from divided differences in lambda.
            d0, d1 = (m[0] - m[1]) / r0[i], (m[1] - m[2]) / r1[i]
            D1 = d0 + (d0 - d1) * r0[i] / (r0[i] + r1[i])
            D2 = k2 * (d0 - d1) / (r0[i] + r1[i])
            x_next = x_next + w2[i] * D1 + w3[i] * D2
        x = x_next
        x = callback(i, x)
    return x


def _sde_scales(sigma: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """(a, c) of the SDE step: a = (sigma_t/sigma_s) e^{-h}, c = sigma_t sqrt(1 - e^{-2h})."""
    return sigma[1:] / sigma[:-1] * torch.exp(-h), sigma[1:] * torch.sqrt(-torch.expm1(-2.0 * h))


def dpmpp_2m_sde_coefficients(sde: LinearSDE, ts: Tensor, *, solver_type: str = "dpmsolver",
                              lower_order_final: bool = False) -> CoefficientTable:
    """DPM-Solver++(2M) SDE as a table (see :func:`dpmpp_2m_sde`)."""
    alpha, sigma, h = _grid(sde, ts, "dpmpp_2m_sde")
    w1, w2m, _, _ = _dpmpp_weights(alpha[1:], 2.0 * h, solver_type)
    a, c = _sde_scales(sigma, h)
    orders = _orders(len(h), 2, lower_order_final)
    return _two_step_table("dpmpp_2m_sde", sde, ts, a, w1, w2m, _ratios(h, 1), orders, c)


@register("dpmpp_2m_sde", kind="sde", strong_order=1.0, stochastic=True, nfe=1, default_steps=50,
          default_schedule="logsnr", coefficients=dpmpp_2m_sde_coefficients, params=_DPMPP_PARAMS,
          variants=({"lower_order_final": True}, {"solver_type": "taylor"}),
          paper="Lu et al. 2022b (DPM-Solver++), SDE-DPM-Solver++(2M) ('sde-dpmsolver++')")
def dpmpp_2m_sde(model, sde: LinearSDE, x, ts, *, noise, callback, solver_type: str = "dpmsolver",
                 lower_order_final: bool = False):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, App.); strong order 1 (additive noise), 1 NFE per step."""
    alpha, sigma, h = _grid(sde, ts, "dpmpp_2m_sde")
    orders = _orders(len(h), 2, lower_order_final)
    # The reverse SDE in data prediction: the ODE weights at 2h, the state decays by e^{-h} more.
    w1, w2m, _, _ = _dpmpp_weights(alpha[1:], 2.0 * h, solver_type)
    a, c = _sde_scales(sigma, h)
    return _two_step_loop(model, x, ts, a, w1, w2m, _ratios(h, 1), orders, c, noise, callback)


# ---------------------------------------------------------------------------------- UniPC
def _solve(R: list[list[float]], g: list[float]) -> list[float]:
    """R rho = g for a small dense system (p <= 3) by Gaussian elimination with partial pivoting."""
    n = len(g)
    A = [list(row) + [gi] for row, gi in zip(R, g, strict=True)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(A[r][c]))
        A[c], A[piv] = A[piv], A[c]
        for r in range(c + 1, n):
            f = A[r][c] / A[c][c]
            A[r] = [a - f * b for a, b in zip(A[r], A[c], strict=True)]
    rho = [0.0] * n
    for r in reversed(range(n)):
        rho[r] = (A[r][n] - sum(A[r][k] * rho[k] for k in range(r + 1, n))) / A[r][r]
    return rho


def _unipc_rhos(g: list[float], rks: list[float], p: int) -> tuple[list[float], list[float]]:
    """(rho_p, rho_c) of one UniPC step of order p (Zhao et al. 2023, Alg. 2/3, B(h) variant).

    R rho = g with R_{jk} = r_k^{j-1} (r_p = 1) and g_j = hh phi_{j+1}(hh) j! / B(h), hh = -h
    (``g``: the step's g_1 .. g_p). Order-2 UniP uses rho_p = 1/2 and order-1 UniC rho_c = 1/2, as
    the reference code does.
    """
    r = list(rks) + [1.0]
    R = [[rk**j for rk in r] for j in range(p)]
    rho_p = [] if p == 1 else [0.5] if p == 2 else _solve([row[:-1] for row in R[:-1]], g[:-1])
    rho_c = [0.5] if p == 1 else _solve(R, g)
    return rho_p, rho_c


def _unipc_plan(sde, ts, order, variant, lower_order_final):
    """Per-step float64 coefficients of UniPC, computed from the grid before the loop (the phi
    functions and the ratios r_k for all steps at once; the small solves in Python floats).
    The plan is a list of (rks, rho_p, rho_c) lists of floats, one per step."""
    alpha, sigma, h = _grid(sde, ts, "unipc")
    lam = sde.lam(ts)
    B = -h if variant == "bh1" else torch.expm1(-h)
    orders = _orders(len(h), order, lower_order_final)
    hh = -h
    G = torch.stack([hh * phi(j + 1, hh) * math.factorial(j) / B for j in range(1, order + 1)]).T.tolist()  # (N, order)
    # r_k of step i = (lam_{i-k} - lam_i) / h_i (k = 1 .. order - 1; only where i >= k is it used).
    RK = (torch.stack([(lam[:-1].roll(k) - lam[:-1]) / h for k in range(1, order)]).T.tolist() if order > 1
          else [[] for _ in range(len(h))])
    plan = []
    for i, p in enumerate(orders):
        rks = RK[i][: p - 1]
        rho_p, rho_c = _unipc_rhos(G[i][:p], rks, p)
        plan.append((rks, rho_p, rho_c))
    return alpha, sigma, h, B, plan


def unipc_coefficients(sde: LinearSDE, ts: Tensor, *, order: int = 2, variant: str = "bh2",
                       lower_order_final: bool = True) -> StageTable:
    """UniPC as a table (see :func:`unipc`): each step's call is made at the UniP point, and its
    prediction both corrects the step (UniC) and starts the next one."""
    alpha, sigma, h, B, plan = _unipc_plan(sde, ts, order, variant, lower_order_final)
    ratio, w1, aB = (v.tolist() for v in (sigma[1:] / sigma[:-1], alpha[1:] * h * phi(1, -h), alpha[1:] * B))
    tb = TableBuilder("unipc", ts, order + 1)
    tb.call(0, ts[0])  # m[k] of the eager loop is the prediction labelled i - k (label i + 1: at t_{i+1})
    for i, (rks, rho_p, rho_c) in enumerate(plan):
        # UniP: x_pred = ratio x + w1 m0 - aB sum_k rho_p[k] (m[k+1] - m0) / r_k.
        pred = {i: w1[i]}
        for k, r in enumerate(rks):
            pred[i] += aB[i] * rho_p[k] / r
            pred[i - k - 1] = pred.get(i - k - 1, 0.0) - aB[i] * rho_p[k] / r
        if i == len(plan) - 1:  # no corrector on the last step
            tb.update(ratio[i], pred, t_start=ts[i], t_end=ts[i + 1], step=i)
            continue
        tb.call(i + 1, ts[i + 1], x=ratio[i], terms=pred)
        # UniC: x = ratio x + w1 m0 - aB (sum_k rho_c[k] (m[k+1] - m0) / r_k + rho_c[-1] (m_t - m0)).
        corr = {i + 1: -aB[i] * rho_c[-1], i: w1[i] + aB[i] * rho_c[-1]}
        for k, r in enumerate(rks):
            corr[i] += aB[i] * rho_c[k] / r
            corr[i - k - 1] = corr.get(i - k - 1, 0.0) - aB[i] * rho_c[k] / r
        tb.update(ratio[i], corr, t_start=ts[i], t_end=ts[i + 1], step=i)
    return tb.build(sde)


# UniP-p + UniC-p is nominally order p + 1, but the UniP-1/UniC-1 first step (local error O(h^3)) caps it at 3.
@register("unipc", kind="ode", order=lambda o: min(o["order"] + 1, 3), stochastic=False, nfe=1, default_steps=10,
          default_schedule="logsnr", exact_for_point_mass=True, coefficients=unipc_coefficients,
          params={"order": Choice(UNIPC_ORDERS), "variant": Choice(UNIPC_VARIANTS)}, variants=({"variant": "bh1"},),
          paper="Zhao et al. 2023 (UniPC), UniP-p + UniC-p, B(h) variants")
def unipc(model, sde: LinearSDE, x, ts, *, noise, callback, order: int = 2, variant: str = "bh2",
          lower_order_final: bool = True):
    """UniPC (Zhao et al. 2023, UniP-p + UniC-p, data prediction); order p + 1 (3 at p = 2), 1 NFE per step."""
    alpha, sigma, h, B, plan = _unipc_plan(sde, ts, order, variant, lower_order_final)
    ratio, w1, aB = _cast(x, sigma[1:] / sigma[:-1], alpha[1:] * h * phi(1, -h), alpha[1:] * B)
    plan = [[torch.tensor(v, dtype=x.dtype, device=x.device) for v in step] for step in plan]
    m = [model(x, ts[0]).x0]  # model values, newest first
    for i, (rks, rho_p, rho_c) in enumerate(plan):
        # UniP: DPM-Solver-1 step plus weighted differences of past model values.
        x_base = ratio[i] * x + w1[i] * m[0]
        D = [(m[k + 1] - m[0]) / rks[k] for k in range(len(rks))]
        x_pred = x_base - aB[i] * sum((rho_p[k] * D[k] for k in range(len(rks))), torch.zeros_like(x))
        if i == len(plan) - 1:  # no corrector on the last step (it would cost an extra NFE)
            x = x_pred
        else:
            # UniC: the model value at the predicted point corrects x and is reused next step.
            m_t = model(x_pred, ts[i + 1]).x0
            corr = sum((rho_c[k] * D[k] for k in range(len(rks))), rho_c[-1] * (m_t - m[0]))
            x = x_base - aB[i] * corr
            m = [m_t] + m[: order - 1]
        x = callback(i, x)
    return x
