"""Probability-flow ODE log-likelihood (Song et al. 2021, Sec. 4.3 and App. D.2).

The PF-ODE ``dx/dt = F(x, t) = f(t) x - g(t)^2 score(x, t) / 2`` is a continuous normalising flow:
along a solution, ``d log p_t(x(t)) / dt = -div F(x(t), t)`` (Chen et al. 2018). Integrating the
augmented state ``[x, delta]`` with ``d delta/dt = div F`` from ``t_min`` to ``T`` gives

    log p_{t_min}(x) = log p_T(z) + delta(T),      z = x(T),

with ``log p_T`` the SDE's prior. ``div F`` is exact (one backward pass per dimension) or the
Hutchinson-Skilling estimate ``v^T (dF/dx) v`` with probes v drawn ONCE per solve (Grathwohl et
al. 2019; Song et al. issue #10: resampling v at every evaluation makes the ODE right-hand side
random and breaks the adaptive solver). With v fixed, ``delta(T) = v^T M v`` for
``M = int (dF/dx) dt`` along the path, an unbiased estimate of ``tr M``; ``n_probes`` independent
probes share one solve (one network call per evaluation) and give a mean and a standard error.

Two biases remain and are the user's to judge (documented in docs/likelihood.md): the value
is the density of the noised marginal at ``t_min`` (not of the data at t = 0), and the prior
``N(0, prior_std^2 I)`` is only approximately the true marginal at T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from . import _torchdiffeq as tdq
from .model import ScoreModel, as_model
from .random import PerSampleNoise, make_seeds
from .registry import Bool, Choice, Int, Maybe, OneOf, Real
from .sde import LinearSDE

__all__ = ["log_likelihood", "LikelihoodResult", "bits_per_dim", "dequantize", "EXACT_MAX_DIM"]

#: the exact divergence costs one backward pass per dimension; above this D use Hutchinson.
EXACT_MAX_DIM = 256


@dataclass
class LikelihoodResult:
    """What :func:`log_likelihood` returns (per-sample tensors are float64, shape (B,))."""

    logp: Tensor  # (B,) log p_{t_min}(x) in nats, of the points integrated (model space, after dequantisation)
    nfe: int  # network evaluations (batch calls) counted by the model
    stderr: Tensor | None  # (B,) Hutchinson standard error of logp (n_probes >= 2), else None
    prior_logp: Tensor  # (B,) log p_T(z)
    delta_logp: Tensor  # (B,) integral of div F from t_min to T (mean over probes)
    z: Tensor  # (B, *D) the ODE state at T
    x: Tensor  # (B, *D) the points whose density was computed (dequantised if asked)
    dim: int  # D, elements per sample
    bpd: Tensor | None = None  # (B,) bits/dim of the discrete data (image data), else None
    estimator: str = "exact"
    n_probes: int = 0


def bits_per_dim(logp: Tensor | float, dim: int, data_range: tuple[float, float] | None = (-1.0, 1.0), bits: int = 8):
    """Bits per dimension of ``bits``-bit data from the log-density ``logp`` (nats) of its uniformly
    dequantised version in model space spanning ``data_range``.

    ``bpd = -logp / (D ln 2) + bits - log2(hi - lo)``: the dequantisation bound
    ``log P(x_int) >= E_u[log p(y)] + D log((hi - lo) / 2^bits)`` converted to bits (7 + ... for
    8-bit data in [-1, 1], 8 + ... in [0, 1], as in Song et al.). ``data_range=None``: plain
    ``-logp / (D ln 2)`` of a continuous density.
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    bpd = -torch.as_tensor(logp, dtype=torch.float64) / (dim * math.log(2.0))
    if data_range is None:
        return bpd
    lo, hi = _check_range(data_range)
    return bpd + bits - math.log2(hi - lo)


def _check_range(data_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi) such as (-1, 1) or (0, 1); got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be a pair (lo, hi) with lo < hi; got {data_range!r}")
    return lo, hi


def _dequantize(x_int: Tensor, bits: int, noise: PerSampleNoise, data_range, dtype) -> tuple[Tensor, Tensor]:
    if int(bits) != bits or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16]; got {bits!r}")
    lo, hi = _check_range(data_range)
    v = x_int.to(torch.float64)
    levels = 2 ** int(bits)
    if x_int.is_floating_point() and not bool((v == v.round()).all()):
        raise ValueError("dequantize expects integer pixel values (0 .. 2^bits - 1); got non-integer values")
    if bool((v < 0).any()) or bool((v > levels - 1).any()):
        raise ValueError(
            f"dequantize: pixel values must lie in [0, {levels - 1}] for bits={bits}; "
            f"got values in [{float(v.min()):g}, {float(v.max()):g}]"
        )
    u = torch.special.ndtr(noise(v))  # U[0, 1): the normal CDF of a per-sample normal draw
    y = lo + (hi - lo) * (v + u) / levels
    d = x_int[0].numel()
    offset = torch.full((x_int.shape[0],), d * (math.log(hi - lo) - bits * math.log(2.0)), dtype=torch.float64)
    return y.to(dtype), offset.to(x_int.device)


def dequantize(
    x_int: Tensor,
    bits: int = 8,
    generator: torch.Generator | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype = torch.float32,
    *,
    seeds: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Uniform dequantisation (Theis et al. 2016): integer pixels -> continuous values in ``data_range``.

    ``y = lo + (hi - lo) (x_int + u) / 2^bits`` with ``u ~ U[0, 1)^D`` (per-sample Philox streams:
    ``seeds`` (B,) int64 if given, else drawn from ``generator``). Returns ``(y, offset)`` with
    ``offset = D log((hi - lo) / 2^bits)`` (B,) float64: the log-Jacobian term to ADD to the
    continuous log-density log p(y) to get the Jensen lower bound on the discrete log-likelihood,
    ``log P(x_int) >= E_u[log p(y)] + offset`` (8 bits in [-1, 1]: ``-7 D log 2``, i.e. +7 bits/dim).
    """
    if not isinstance(x_int, Tensor) or x_int.ndim < 2:
        raise ValueError(f"x_int must be a tensor of shape (B, *D); got {getattr(x_int, 'shape', type(x_int).__name__)}")
    noise = PerSampleNoise(make_seeds(x_int.shape[0], generator=generator, seeds=seeds, device=x_int.device))
    return _dequantize(x_int, bits, noise, data_range, dtype)


def _check_not_quantized(x: Tensor) -> None:
    hint = (
        "the likelihood of a continuous density is meaningless on quantised pixels (Song et al. issue #24): "
        "pass dequantize=8 (uniform dequantisation of integer pixels 0..255 here), or dequantize them yourself "
        "with scoresde.likelihood.dequantize, or pass dequantize=False if the data really are continuous"
    )
    if not x.is_floating_point():
        raise ValueError(f"x has the integer dtype {x.dtype}; {hint}")
    if x.ndim < 3:  # the lattice tests are for image-shaped data
        return
    v = x.detach().to(torch.float64)

    def on_lattice(u: Tensor) -> bool:
        return bool(((u - u.round()).abs() <= 1e-3).all())

    if on_lattice(v * 255.0) or on_lattice((v + 1.0) * 127.5):
        raise ValueError(f"every value of x lies on the 1/255 pixel lattice ([0, 1] or [-1, 1] scaling); {hint}")
    if v.numel() >= 1024 and torch.unique(v).numel() <= 256:
        raise ValueError(f"x takes at most 256 distinct values over {v.numel()} elements (quantised pixels); {hint}")


class _AugmentedDrift:
    """Right-hand side of the augmented PF-ODE: (x, delta) -> (F(x, t), div F). No host syncs."""

    def __init__(self, model: ScoreModel, sde: LinearSDE, shape, probes: Tensor | None, cond: dict):
        self.model, self.sde, self.shape, self.probes, self.cond = model, sde, tuple(shape), probes, cond

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        B, D = x.shape
        tb = t.to(torch.float64).expand(B)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            xs = xg.view(self.shape)
            score = self.model(xs, tb, **self.cond).score
            drift = self.sde.ode_drift(xs, tb, score).reshape(B, D)
            div = self._exact(drift, xg) if self.probes is None else self._hutchinson(drift, xg)
        return drift.detach(), div.detach()

    @staticmethod
    def _grad(out: Tensor, x: Tensor, v: Tensor, retain: bool) -> Tensor:
        (g,) = torch.autograd.grad(out, x, grad_outputs=v, retain_graph=retain, allow_unused=True, materialize_grads=True)
        return g

    def _exact(self, drift: Tensor, x: Tensor) -> Tensor:
        # Exact trace: one vector-Jacobian product per dimension, e_i^T (dF/dx) e_i.
        D = x.shape[1]
        div = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        for i in range(D):
            e = torch.zeros_like(drift)
            e[:, i] = 1.0
            div = div + self._grad(drift, x, e, i < D - 1)[:, i : i + 1]
        return div

    def _hutchinson(self, drift: Tensor, x: Tensor) -> Tensor:
        # Hutchinson-Skilling: v^T (dF/dx) v for each fixed probe v (one VJP per probe).
        K = self.probes.shape[0]
        cols = [(self._grad(drift, x, v, k < K - 1) * v).sum(1) for k, v in enumerate(self.probes)]
        return torch.stack(cols, 1)


def _draw_probes(noise: PerSampleNoise, K: int, like: Tensor, probe: str) -> Tensor:
    z = torch.stack([noise(like) for _ in range(K)])  # (K, B, D), draw k of sample i from (seed_i, k)
    return torch.where(z >= 0, 1.0, -1.0).to(like.dtype) if probe == "rademacher" else z


def log_likelihood(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x: Tensor,
    *,
    estimator: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    dequantize: int | bool | None = None,
    cond: dict[str, Any] | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    options: dict[str, Any] | None = None,
    seeds: Tensor | None = None,
) -> LikelihoodResult:
    """Log-likelihood by the probability-flow ODE (Song et al. 2021, Sec. 4.3): log p = log p_T(z) + delta.

    Args:
        model: a :class:`~scoresde.ScoreModel` or a plain ``score_fn(x, t)``. It must treat samples
            independently (eval mode: no batch norm statistics, no dropout).
        sde: the linear SDE.
        x: (B, *D) points in model space (float). Integrated in float64 (the network sees its own dtype).
        estimator: ``"exact"`` (D backward passes per evaluation; D <= ``EXACT_MAX_DIM``) or
            ``"hutchinson"``.
        n_probes: Hutchinson probes per sample, all drawn once and shared by one solve; >= 2 gives
            a standard error.
        probe: ``"rademacher"`` (lower variance; Song et al.'s default) or ``"gaussian"``.
        method, rtol, atol, options: torchdiffeq ``odeint`` settings (score_sde uses RK45 at 1e-5).
            Fixed-step methods need ``options={"step_size": ...}``.
        t_min: start time (default ``sde.t_min``): the result is the density of p_{t_min}.
        generator: seeds the per-sample Philox streams of the probes and of the dequantisation noise
            (draw 0 dequantises, draws 1..n_probes are the probes).
        seeds: (B,) int64 per-sample seeds instead of ``generator``: sample i's probes then do not
            depend on the batch it is in.
        dequantize: ``None`` (x must be continuous: integer dtypes and image-shaped data on the
            1/255 lattice are refused), an integer number of bits (x holds integer pixels
            0 .. 2^bits - 1, dequantised here into ``data_range``; ``True`` = 8), or ``False``
            (continuous data, skip the lattice check).
        cond: keyword arguments passed to every model call.
        data_range: the model-space range of image data, for dequantisation and bits/dim.

    Returns:
        :class:`LikelihoodResult`. ``bpd`` is filled for image data (``dequantize`` given or x of
        rank >= 3, assumed 8-bit dequantised into ``data_range``).
    """
    where = "log_likelihood"
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"{where}: sde must be a scoresde LinearSDE; got {type(sde).__name__}")
    Choice("exact", "hutchinson").check("estimator", estimator, where)
    Choice("rademacher", "gaussian").check("probe", probe, where)
    Choice(*tdq.SOLVERS).check("method", method, where)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        Real(gt=0).check(name, tol, where)
    n_probes = Int(ge=1).check("n_probes", n_probes, where)
    Maybe(Real(ge=0)).check("t_min", t_min, where)
    Maybe(OneOf(Bool(), Int(ge=1, le=16))).check("dequantize", dequantize, where)
    for name, value in (("cond", cond), ("options", options)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{where}: {name} must be a dict or None; got {type(value).__name__}")
    if method in tdq.FIXED_METHODS and not (options and ("step_size" in options or "grid_constructor" in options)):
        raise ValueError(f"method={method!r} is a fixed-step solver: give options={{'step_size': ...}} (or use 'dopri5')")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (B, *D); got {getattr(x, 'shape', type(x).__name__)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"x must hold real numbers; got dtype {x.dtype}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):  # the data, not the model
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1)
        raise ValueError(f"x (the data) contains NaN or Inf in {int(bad.sum())} of {x.shape[0]} samples (first: sample "
                         f"{int(torch.nonzero(bad)[0])}); their likelihood is undefined")
    B, D = x.shape[0], x[0].numel()
    if B == 0 or D == 0:
        raise ValueError(f"x must hold at least one sample with at least one value; got shape {tuple(x.shape)}")
    if estimator == "exact" and D > EXACT_MAX_DIM:
        raise ValueError(
            f"estimator='exact' needs one backward pass per dimension; D={D} > EXACT_MAX_DIM={EXACT_MAX_DIM}: "
            "use estimator='hutchinson' (with n_probes >= 2 for a standard error)"
        )
    t0 = float(sde.t_min if t_min is None else t_min)
    if not 0.0 <= t0 < sde.T:
        raise ValueError(f"t_min must lie in [0, T={sde.T:g}); got {t0!r}")
    m = as_model(model, sde)
    noise = PerSampleNoise(make_seeds(B, generator=generator, seeds=seeds, device=x.device))

    bits = None
    if dequantize is not None and dequantize is not False:
        bits = 8 if dequantize is True else dequantize
        x, _ = _dequantize(x, bits, noise, data_range, torch.float64)  # uses draw 0 of each sample's stream
    elif dequantize is None:
        _check_not_quantized(x)
    x64 = x.detach().reshape(B, D).to(torch.float64)
    K = int(n_probes) if estimator == "hutchinson" else 1
    probes = _draw_probes(noise, K, x64, probe) if estimator == "hutchinson" else None

    func = _AugmentedDrift(m, sde, x.shape, probes, dict(cond or {}))
    ts = torch.tensor([t0, sde.T], dtype=torch.float64, device=x.device)
    start = m.nfe
    with torch.no_grad():
        xs, deltas = tdq.odeint(func, (x64, x64.new_zeros(B, K)), ts, what="log_likelihood", rtol=rtol, atol=atol,
                                method=method, options=options)
    z, delta = xs[-1].reshape(x.shape), deltas[-1]  # delta: (B, K)

    prior = sde.prior_logp(z).to(torch.float64)
    logp_k = prior[:, None] + delta
    logp = logp_k.mean(1)
    stderr = logp_k.std(1) / math.sqrt(K) if estimator == "hutchinson" and K >= 2 else None
    image = bits is not None or x.ndim >= 3
    bpd = bits_per_dim(logp, D, data_range, bits if bits is not None else 8) if image else None
    return LikelihoodResult(
        logp=logp, nfe=m.nfe - start, stderr=stderr, prior_logp=prior, delta_logp=delta.mean(1), z=z,
        x=x64.reshape(x.shape), dim=D, bpd=bpd, estimator=estimator, n_probes=K if probes is not None else 0,
    )
