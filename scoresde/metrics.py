"""Distances between sample sets, each with its noise floor.

Every function takes sample sets as tensors of shape (N, *D) (flattened to (N, D)) and computes
in float64. A distance estimated from N samples is not zero even between two sets drawn from the
same distribution; :func:`noise_floor` measures that level (the same distance between two
independent reference sets of the same size), and :func:`compare` reports every metric next to
its floor. Formulas:

* sliced Wasserstein-p: ``SW_p = (E_theta W_p^p(theta.x, theta.y))^(1/p)`` over uniform unit
  directions theta (Bonneel et al. 2015), exact 1-D W_p between empirical measures;
* MMD^2, unbiased (Gretton et al. 2012, Eq. 3) with the Gaussian RBF kernel
  ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``; ``h`` by the median heuristic (see :func:`median_bandwidth`)
  or given; a list of bandwidths sums the kernels (multi-scale);
* energy distance (Szekely & Rizzo 2013), unbiased:
  ``E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (the squared energy distance; 0 iff same law);
* kernel distance (KID, Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel
  ``k(a, b) = (a.b / D + 1)^3``, on the coordinates given (Inception or classifier features for KID);
* Frechet distance between Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017):
  ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^(1/2) C2 C1^(1/2))^(1/2))``;
* mode weights, mode-weight error (total variation) and the mean log-likelihood under a known
  density.

:data:`METRICS` is the one registry of metrics by name, used by :func:`compare` and by the benchmark
(:mod:`scoresde.bench.quality`); :mod:`scoresde.features` registers the digits' Frechet distance
``fd`` and kernel distance ``kd`` into it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .registry import Registry

__all__ = [
    "sliced_wasserstein",
    "mmd",
    "median_bandwidth",
    "energy_distance",
    "kernel_distance",
    "mode_weights",
    "mode_weight_error",
    "mean_log_likelihood",
    "frechet_distance",
    "frechet_distance_from_samples",
    "Floor",
    "noise_floor",
    "compare",
    "METRICS",
    "bind",
    "floor_of",
    "fid_inception",
    "inception_score",
]

_BLOCK = 2048  # rows per block of a pairwise matrix: 2048^2 float64 = 32 MiB


def _flat64(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"{name} must be a tensor of shape (N, *D); got {getattr(x, 'shape', type(x).__name__)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _pair(x: Tensor, y: Tensor, min_n: int = 1) -> tuple[Tensor, Tensor]:
    a, b = _flat64(x, "x"), _flat64(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same dimension D; got {tuple(x.shape)} and {tuple(y.shape)}")
    if a.shape[0] < min_n or b.shape[0] < min_n:
        raise ValueError(f"x and y need at least {min_n} samples each; got {a.shape[0]} and {b.shape[0]}")
    return a, b.to(a.device)


# ---------------------------------------------------------------------------------- sliced W_p
def _w1d_pp(pa: Tensor, pb: Tensor, p: float) -> Tensor:
    """W_p^p between 1-D empirical measures, column by column: pa (n, P), pb (m, P), sorted."""
    n, m = pa.shape[0], pb.shape[0]
    if n == m:
        return (pa - pb).abs().pow(p).mean(0)
    # Quantile functions are step functions with jumps at k/n and l/m; integrate |Fa^-1 - Fb^-1|^p
    # exactly over the merged breakpoints, in integer units of 1/(n m).
    dev = pa.device
    cuts = torch.unique(torch.cat([torch.arange(1, n + 1, device=dev) * m, torch.arange(1, m + 1, device=dev) * n]))
    widths = torch.diff(cuts, prepend=cuts.new_zeros(1))
    mid2 = 2 * cuts - widths  # twice the midpoint of each piece, units 1/(n m)
    ia, ib = mid2 // (2 * m), mid2 // (2 * n)
    w = (widths.to(torch.float64) / (n * m))[:, None]
    return (w * (pa[ia] - pb[ib]).abs().pow(p)).sum(0)


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, n_projections: int = 256, generator: torch.Generator | None = None, p: int = 2
) -> float:
    """Sliced Wasserstein-p distance between two sample sets (N, *D) and (M, *D) (Bonneel et al. 2015).

    Averages the exact 1-D W_p^p of the projections on ``n_projections`` random unit directions
    (drawn from ``generator``, default seed 0 for reproducibility) and returns its p-th root.
    N and M may differ (the 1-D quantile functions are integrated exactly).
    """
    a, b = _pair(x, y)
    if int(n_projections) != n_projections or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer; got {n_projections!r}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1; got {p!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dirs = torch.randn(a.shape[1], int(n_projections), generator=generator, dtype=torch.float64,
                       device=generator.device)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device)
    pa = torch.sort(a @ dirs, dim=0).values
    pb = torch.sort(b @ dirs, dim=0).values
    return float(_w1d_pp(pa, pb, p).mean()) ** (1.0 / p)


# ---------------------------------------------------------------------------------- kernels
def _pair_sum(a: Tensor, b: Tensor, fn: Callable[[Tensor], Tensor], *, same: bool) -> Tensor:
    """sum_ij fn(|a_i - b_j|^2), excluding i == j when ``same`` (a is b); blocked, float64."""
    a2, b2 = (a * a).sum(1), (b * b).sum(1)
    total = a.new_zeros(())
    for i in range(0, a.shape[0], _BLOCK):
        for j in range(0, b.shape[0], _BLOCK):
            d2 = a2[i : i + _BLOCK, None] + b2[None, j : j + _BLOCK] - 2.0 * (a[i : i + _BLOCK] @ b[j : j + _BLOCK].T)
            k = fn(d2.clamp_min(0.0))
            if same and i == j:
                k.fill_diagonal_(0.0)
            total = total + k.sum()
    return total


def median_bandwidth(x: Tensor, y: Tensor, *, max_points: int = 2048) -> float:
    """The median heuristic (Gretton et al. 2012): h = median of |z_i - z_j| over pairs i < j of
    the pooled set z = [x; y].

    When the pooled set has more than ``max_points`` points, the median is taken over a random
    subset of ``max_points`` of them (fixed seed 0, so the rule is deterministic).
    """
    a, b = _pair(x, y)
    z = torch.cat([a, b])
    if z.shape[0] > max_points:
        idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:max_points]
        z = z[idx.to(z.device)]
    z = z - z.mean(0)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    d = torch.cdist(z, z)[iu[0], iu[1]]
    h = float(d.median())
    if not h > 0:
        raise ValueError("median_bandwidth: the median pairwise distance is 0 (repeated points); give bandwidth=")
    return h


def _bandwidths(bandwidth: Any, a: Tensor, b: Tensor) -> list[float]:
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth={bandwidth!r} is not one of the accepted values: 'median', a number, a list")
        return [median_bandwidth(a, b)]
    hs = [bandwidth] if isinstance(bandwidth, (int, float)) else list(bandwidth)
    if not hs or not all(isinstance(h, (int, float)) and math.isfinite(h) and h > 0 for h in hs):
        raise ValueError(f"bandwidth must be 'median', a positive number or a list of them; got {bandwidth!r}")
    return [float(h) for h in hs]


def mmd(x: Tensor, y: Tensor, *, kernel: str = "rbf", bandwidth: Any = "median") -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) between sample sets (N, *D) and (M, *D).

    ``MMD^2 = sum_{i!=j} k(x_i,x_j)/(N(N-1)) + sum_{i!=j} k(y_i,y_j)/(M(M-1)) - 2 sum_ij k(x_i,y_j)/(NM)``
    with ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))``. ``bandwidth``: ``"median"`` (one h by
    :func:`median_bandwidth` of the pooled sets), a number, or a list of numbers (multi-scale:
    the kernels are summed). Unbiased, so it can be slightly negative for equal distributions.
    """
    if kernel != "rbf":
        raise ValueError(f"kernel={kernel!r} is not one of the accepted values: 'rbf'")
    a, b = _pair(x, y, min_n=2)
    c = torch.cat([a, b]).mean(0)  # centring reduces cancellation in |a|^2 + |b|^2 - 2ab
    a, b = a - c, b - c
    hs = _bandwidths(bandwidth, a, b)

    def k(d2: Tensor) -> Tensor:
        return sum(torch.exp(-d2 / (2.0 * h * h)) for h in hs)

    n, m = a.shape[0], b.shape[0]
    kxx = _pair_sum(a, a, k, same=True) / (n * (n - 1))
    kyy = _pair_sum(b, b, k, same=True) / (m * (m - 1))
    kxy = _pair_sum(a, b, k, same=False) / (n * m)
    return float(kxx + kyy - 2.0 * kxy)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Squared energy distance (Szekely & Rizzo 2013), unbiased U-statistic.

    ``E = 2 sum_ij |x_i - y_j|/(NM) - sum_{i!=j} |x_i - x_j|/(N(N-1)) - sum_{i!=j} |y_i - y_j|/(M(M-1))``,
    an unbiased estimate of ``2E|X-Y| - E|X-X'| - E|Y-Y'| >= 0`` (0 iff the laws agree; can be
    slightly negative for equal distributions).
    """
    a, b = _pair(x, y, min_n=2)
    c = torch.cat([a, b]).mean(0)
    a, b = a - c, b - c
    n, m = a.shape[0], b.shape[0]
    dxy = _pair_sum(a, b, torch.sqrt, same=False) / (n * m)
    dxx = _pair_sum(a, a, torch.sqrt, same=True) / (n * (n - 1))
    dyy = _pair_sum(b, b, torch.sqrt, same=True) / (m * (m - 1))
    return float(2.0 * dxy - dxx - dyy)


def kernel_distance(
    x: Tensor,
    y: Tensor,
    *,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    subset_size: int | None = None,
    subsets: int = 100,
    generator: torch.Generator | None = None,
) -> float:
    """KID's estimator (Binkowski et al. 2018): unbiased MMD^2 with a polynomial kernel.

    ``k(a, b) = (gamma a.b + coef0)^degree`` with gamma = 1/D by default (KID: degree 3, coef0 1), and
    ``MMD^2 = sum_{i!=j} k(x_i,x_j)/(N(N-1)) + sum_{i!=j} k(y_i,y_j)/(M(M-1)) - 2 sum_ij k(x_i,y_j)/(NM)``
    (Gretton et al. 2012, Eq. 3). On Inception features this is the kernel inception distance; here
    it is computed on the coordinates given (``scoresde.features`` registers ``kd`` on the digits
    classifier's features). ``subset_size``: the mean over ``subsets`` random subsets of that size
    of each set (the reference implementations' 100 x 1000; drawn from ``generator``, default seed
    0); None (default): the one estimate on the full sets, which has the same expectation. Unbiased,
    so it can be slightly negative for equal distributions.
    """
    a, b = _pair(x, y, min_n=2)
    if isinstance(degree, bool) or int(degree) != degree or degree < 1:
        raise ValueError(f"degree must be a positive integer; got {degree!r}")
    g = 1.0 / a.shape[1] if gamma is None else gamma
    if not (isinstance(g, (int, float)) and math.isfinite(g) and g > 0):
        raise ValueError(f"gamma must be a positive number or None (1/D); got {gamma!r}")
    if not (isinstance(coef0, (int, float)) and math.isfinite(coef0) and coef0 >= 0):
        raise ValueError(f"coef0 must be a non-negative number; got {coef0!r}")

    def k(ip: Tensor) -> Tensor:
        return (g * ip + coef0) ** int(degree)

    def estimate(p: Tensor, q: Tensor) -> float:
        n, m = p.shape[0], q.shape[0]
        kxx = _gram_sum(p, p, k, same=True) / (n * (n - 1))
        kyy = _gram_sum(q, q, k, same=True) / (m * (m - 1))
        kxy = _gram_sum(p, q, k, same=False) / (n * m)
        return float(kxx + kyy - 2.0 * kxy)

    if subset_size is None:
        return estimate(a, b)
    if isinstance(subset_size, bool) or int(subset_size) != subset_size or not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(f"subset_size must be an integer in [2, min(N, M) = {min(len(a), len(b))}] or None; got {subset_size!r}")
    if isinstance(subsets, bool) or int(subsets) != subsets or subsets < 1:
        raise ValueError(f"subsets must be a positive integer; got {subsets!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    vals = []
    for _ in range(int(subsets)):
        ia = torch.randperm(a.shape[0], generator=gen)[: int(subset_size)].to(a.device)
        ib = torch.randperm(b.shape[0], generator=gen)[: int(subset_size)].to(b.device)
        vals.append(estimate(a[ia], b[ib]))
    return sum(vals) / len(vals)


def _gram_sum(a: Tensor, b: Tensor, fn: Callable[[Tensor], Tensor], *, same: bool) -> Tensor:
    """sum_ij fn(a_i . b_j), excluding i == j when ``same`` (a is b); blocked, float64."""
    total = a.new_zeros(())
    for i in range(0, a.shape[0], _BLOCK):
        for j in range(0, b.shape[0], _BLOCK):
            kk = fn(a[i : i + _BLOCK] @ b[j : j + _BLOCK].T)
            if same and i == j:
                kk.fill_diagonal_(0.0)
            total = total + kk.sum()
    return total


# ---------------------------------------------------------------------------------- modes, log p
def mode_weights(x: Tensor, gm) -> Tensor:
    """Fraction of the samples assigned to each component of ``gm`` (K,), float64.

    A sample goes to the component of maximum responsibility under the data mixture (t = 0). If
    any component is degenerate (a singular covariance, e.g. a point mass), responsibilities are
    undefined and every sample goes to the nearest mean (Euclidean) instead.
    """
    a = _flat64(x, "x")
    if a.shape[1] != gm.dim:
        raise ValueError(f"x must have {gm.dim} elements per sample to match the mixture; got {tuple(x.shape)}")
    cov = gm.covariances.to(torch.float64)
    evals = torch.linalg.eigvalsh(cov)
    degenerate = bool((evals.min(dim=1).values <= 1e-12 * evals.abs().max().clamp_min(1e-300)).any())
    if degenerate:
        labels = torch.cdist(a, gm.means.to(a)).argmin(1)
    else:
        labels = gm.responsibilities(a).argmax(1)
    return torch.bincount(labels, minlength=gm.n_components).to(torch.float64).cpu() / a.shape[0]


def mode_weight_error(x: Tensor, gm) -> float:
    """Total variation ``(1/2) sum_k |w_hat_k - w_k|`` between measured and true mixture weights."""
    return 0.5 * float((mode_weights(x, gm) - gm.weights.to(torch.float64).cpu()).abs().sum())


def mean_log_likelihood(x: Tensor, density: Any) -> float:
    """Mean exact log-density (nats) of the samples under a known data density.

    ``density`` is a callable ``x -> (N,)`` log p (e.g. ``GaussianMixture.log_prob``) or an object
    with a ``log_prob`` method.
    """
    fn = density.log_prob if hasattr(density, "log_prob") else density
    if not callable(fn):
        raise TypeError(f"density must be callable x -> log p(x) or have .log_prob; got {type(density).__name__}")
    a = _flat64(x, "x")
    lp = torch.as_tensor(fn(a), dtype=torch.float64)
    if lp.shape != (a.shape[0],):
        raise ValueError(f"density must return one log p per sample, shape ({a.shape[0]},); got {tuple(lp.shape)}")
    return float(lp.mean())


# ---------------------------------------------------------------------------------- Frechet
def _sym(c: Tensor) -> Tensor:
    return 0.5 * (c + c.transpose(-1, -2))


def _as_cov(c: Any, d: int, name: str) -> Tensor:
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.ndim == 0:
        c = c * torch.eye(d, dtype=torch.float64)
    elif c.ndim == 1:
        c = torch.diag(c)
    if c.shape != (d, d):
        raise ValueError(f"{name} must be a scalar, (D,) diagonal or (D, D) matrix with D={d}; got {tuple(c.shape)}")
    return _sym(c)


def _sqrt_psd(c: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Frechet (Wasserstein-2 squared) distance between N(mu1, cov1) and N(mu2, cov2).

    ``|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1^(1/2) C2 C1^(1/2))^(1/2))`` with both square roots
    taken of symmetric PSD matrices by eigendecomposition (negative round-off eigenvalues clamped
    to 0). This equals the usual ``tr sqrtm(C1 C2)`` form but needs no complex arithmetic.
    """
    m1 = torch.as_tensor(mu1, dtype=torch.float64).reshape(-1)
    m2 = torch.as_tensor(mu2, dtype=torch.float64).reshape(-1)
    if m1.shape != m2.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape (D,); got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    c1, c2 = _as_cov(cov1, d, "cov1"), _as_cov(cov2, d, "cov2")
    s1 = _sqrt_psd(c1)
    tr_sqrt = torch.linalg.eigvalsh(_sym(s1 @ c2 @ s1)).clamp_min(0.0).sqrt().sum()
    return float((m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * tr_sqrt)


def frechet_distance_from_samples(f1: Tensor, f2: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F), (M, F)
    (sample means; covariances with the N-1 normaliser)."""
    a, b = _pair(f1, f2, min_n=2)
    return frechet_distance(a.mean(0), torch.cov(a.T).reshape(a.shape[1], a.shape[1]),
                            b.mean(0), torch.cov(b.T).reshape(b.shape[1], b.shape[1]))


# ---------------------------------------------------------------------------------- noise floors
@dataclass
class Floor:
    """The distance between independent reference sets of size ``n`` over ``repeats`` draws.

    ``rms = sqrt(mean(values^2))`` is the level used for ratios: for biased estimators (SW, Frechet)
    it is close to the mean; for unbiased ones (MMD^2, energy), whose mean is ~0, it is their spread.
    """

    mean: float
    std: float
    rms: float
    n: int
    values: list[float] = field(default_factory=list)


def _reference_draw(reference: Any, n: int, generator: torch.Generator) -> Tensor:
    if isinstance(reference, Tensor):
        if reference.shape[0] < n:
            raise ValueError(f"the reference pool has {reference.shape[0]} samples; need at least n={n}")
        idx = torch.randperm(reference.shape[0], generator=generator)[:n]
        return reference[idx.to(reference.device)]
    fn = reference.sample if hasattr(reference, "sample") else reference
    if not callable(fn):
        raise TypeError(
            "reference must be a sampler callable (n, generator=...) -> (n, *D), an object with .sample "
            f"(e.g. a GaussianMixture), a tensor pool or a list of tensors; got {type(reference).__name__}"
        )
    out = fn(n, generator=generator)
    if not isinstance(out, Tensor) or out.shape[0] != n:
        raise ValueError(f"the reference sampler must return a tensor of n={n} samples; got {getattr(out, 'shape', out)}")
    return out


def _reference_pairs(reference: Any, n: int, repeats: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    if isinstance(reference, (list, tuple)):
        sets = list(reference)
        if len(sets) < 2 or not all(isinstance(s, Tensor) and s.shape[0] >= n for s in sets):
            raise ValueError(f"a list of reference sets needs at least 2 tensors of >= n={n} samples each")
        return [(sets[i][:n], sets[i + 1][:n]) for i in range(0, len(sets) - 1, 2)]
    pairs = []
    for _ in range(repeats):
        if isinstance(reference, Tensor):
            if reference.shape[0] < 2 * n:
                raise ValueError(f"the reference pool has {reference.shape[0]} samples; a pair of disjoint sets needs 2n={2 * n}")
            idx = torch.randperm(reference.shape[0], generator=generator)[: 2 * n].to(reference.device)
            pairs.append((reference[idx[:n]], reference[idx[n:]]))
        else:
            pairs.append((_reference_draw(reference, n, generator), _reference_draw(reference, n, generator)))
    return pairs


def _floor(values: Sequence[float], n: int) -> Floor:
    v = torch.tensor(list(values), dtype=torch.float64)
    std = float(v.std()) if len(v) > 1 else float("nan")
    return Floor(mean=float(v.mean()), std=std, rms=float(v.pow(2).mean().sqrt()), n=n, values=[float(u) for u in v])


def noise_floor(
    metric: Callable[[Tensor, Tensor], float],
    reference: Any,
    n: int,
    *,
    repeats: int = 5,
    generator: torch.Generator | None = None,
) -> Floor:
    """The noise floor of a distance: ``metric(r1, r2)`` for independent reference sets of size n.

    ``reference``: a sampler ``(n, generator=...) -> (n, *D)`` or an object with ``.sample`` (e.g. a
    :class:`~scoresde.GaussianMixture`), drawn ``2 * repeats`` times; a tensor pool (M >= 2n), split
    into disjoint random halves ``repeats`` times; or a list of tensors, paired (0, 1), (2, 3), ...
    Randomness comes from ``generator`` (default seed 0).
    """
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2; got {n!r}")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer; got {repeats!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    vals = [float(metric(r1, r2)) for r1, r2 in _reference_pairs(reference, int(n), int(repeats), g)]
    return _floor(vals, int(n))


# ---------------------------------------------------------------------------------- the metric registry
def _mode_err(x: Tensor, ref: Tensor, *, mixture) -> float:
    """Total variation between the samples' mode weights and the mixture's (``ref`` is not used)."""
    return mode_weight_error(x, mixture)


def _logp_gap(x: Tensor, ref: Tensor, *, mixture) -> float:
    """``|mean log p(x) - mean log p(ref)|`` under the exact mixture density."""
    return abs(mean_log_likelihood(x, mixture) - mean_log_likelihood(ref, mixture))


def _logp(x: Tensor, ref: Tensor, *, mixture) -> float:
    """Mean exact log-density of x (a level, not a distance: compared with exact sets' mean)."""
    return mean_log_likelihood(x, mixture)


def _mmd_bandwidth(r1: Tensor, r2: Tensor) -> dict[str, Any]:
    return {"bandwidth": median_bandwidth(r1, r2)}


#: Every metric by name. ``kind``: ``distance`` (two sets), ``mixture`` (needs the exact mixture; a
#: distance), ``level`` (a value of one set, compared with exact sets' mean); ``calibrate(r1, r2)``
#: fixes data-dependent settings once from two reference sets (the MMD bandwidth), so the kernel does
#: not depend on the samples being judged. :mod:`scoresde.features` registers ``fd`` and ``kd``.
METRICS = Registry("metric", skip=("x", "y", "ref", "mixture", "f1", "f2"))
METRICS.add("sw2", sliced_wasserstein, label="SW2", kind="distance")
METRICS.add("mmd", mmd, label="MMD", kind="distance", calibrate=_mmd_bandwidth)
METRICS.add("energy", energy_distance, label="energy", kind="distance")
METRICS.add("frechet", frechet_distance_from_samples, label="Frechet", kind="distance")
METRICS.add("kid", kernel_distance, label="KID", kind="distance", aliases=("kernel_distance",))
METRICS.add("mode_err", _mode_err, label="mode err", kind="mixture", aliases=("mode_weight_error",))
METRICS.add("logp_gap", _logp_gap, label="logp gap", kind="mixture")
METRICS.add("logp", _logp, label="logp", kind="level", aliases=("mean_log_likelihood",))


def bind(name: str, ref: Tensor, *, mixture: Any = None, calibration: Tensor | None = None) -> Callable[[Tensor], float]:
    """The metric ``name`` as a function of the samples alone, against the fixed reference set ``ref``.

    ``calibration``: a second reference set for the metric's calibration (the MMD bandwidth from
    (ref, calibration)); ``mixture``: the exact mixture, for metrics of kind ``mixture``/``level``.
    """
    entry = METRICS.get(name)
    kw = entry.meta["calibrate"](ref, calibration) if entry.meta.get("calibrate") and calibration is not None else {}
    if entry.meta["kind"] in ("mixture", "level"):
        if mixture is None or not hasattr(mixture, "log_prob"):
            raise TypeError(f"metric {entry.name!r} needs the exact mixture (a GaussianMixture); got "
                            f"{type(mixture).__name__}")
        kw["mixture"] = mixture
    fn = entry.obj
    return lambda x: float(fn(x, ref, **kw))


def floor_of(values: Sequence[float], n: int) -> Floor:
    """A :class:`Floor` from a metric's values on independent exact (or held-out) sets of size n."""
    return _floor(values, n)


def compare(
    samples: Tensor,
    reference: Any,
    metrics: Sequence[str] | Mapping[str, Callable[[Tensor, Tensor], float]] = ("sw2", "mmd", "energy"),
    *,
    generator: torch.Generator | None = None,
    repeats: int = 5,
) -> dict[str, dict[str, Any]]:
    """Each metric of ``samples`` against the reference, with its noise floor and the ratio.

    ``reference`` is a sampler ``(n, generator=...)``, an exact model with ``.sample`` (a
    :class:`~scoresde.GaussianMixture`, which also enables the ``mixture`` and ``level`` metrics:
    ``mode_err``, ``logp_gap``, ``logp``), or a tensor pool. Metric names are those of
    :data:`METRICS` (``mode_weight_error`` and ``mean_log_likelihood`` are aliases of ``mode_err``
    and ``logp``), or a mapping name -> two-set distance. For a distance d the value is
    ``d(samples, R)`` with a fresh reference set R of the same size, the floor is
    :func:`noise_floor` of d, and ``ratio = value / floor_rms`` (~1 means "indistinguishable from
    two exact sets"). Calibrated metrics (the MMD bandwidth) are calibrated once on the first
    reference pair. ``logp`` reports the exact sets' mean (``floor``) and spread (``floor_std``),
    with ``ratio`` None and ``gap = floor - value``.

    Returns ``{name: {"value", "floor", "floor_mean", "floor_std", "ratio", "n"}}``, keyed by the
    names as given.
    """
    x = samples
    n = x.shape[0]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    names = list(metrics.keys()) if isinstance(metrics, Mapping) else list(metrics)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if isinstance(metrics, Mapping):
            fn, kind, kw = metrics[name], "distance", {}
        else:
            entry = METRICS.get(name)
            fn, kind, kw = entry.obj, entry.meta["kind"], {}
            if kind in ("mixture", "level"):
                if not (hasattr(reference, "responsibilities") and hasattr(reference, "log_prob")):
                    raise TypeError(f"metric {name!r} needs a GaussianMixture reference; got {type(reference).__name__}")
                kw["mixture"] = reference
        pairs = _reference_pairs(reference, n, repeats, g)
        if not isinstance(metrics, Mapping) and entry.meta.get("calibrate"):
            kw.update(entry.meta["calibrate"](*pairs[0]))
        d = lambda a, b, fn=fn, kw=kw: float(fn(a, b, **kw))  # noqa: E731
        value = d(x, _reference_draw(reference, n, g))
        fl = _floor([d(r1, r2) for r1, r2 in pairs], n)
        if kind == "level":
            out[name] = {"value": value, "floor": fl.mean, "floor_mean": fl.mean, "floor_std": fl.std, "ratio": None,
                         "gap": fl.mean - value, "n": n}
        else:
            out[name] = _row(value, fl)
    return out


def _row(value: float, fl: Floor) -> dict[str, Any]:
    ratio = value / fl.rms if fl.rms > 0 else float("inf")
    return {"value": value, "floor": fl.rms, "floor_mean": fl.mean, "floor_std": fl.std, "ratio": ratio, "n": fl.n}


# ---------------------------------------------------------------------------------- Inception (optional)
_INCEPTION_HELP = (
    "needs the optional package torch-fidelity (pip install torch-fidelity) and a local copy of its "
    "Inception-v3 weights file (weights-inception-2015-12-05-6726825d.pth, from the torch-fidelity "
    "releases), given as weights_path=; nothing is downloaded"
)


def _inception(weights_path: str | os.PathLike | None, what: str):
    if weights_path is None:
        raise ValueError(f"{what} {_INCEPTION_HELP}; got weights_path=None")
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{what}: weights_path={os.fspath(weights_path)!r} is not a file; {what} {_INCEPTION_HELP}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError(f"{what} {_INCEPTION_HELP} ({err})") from err
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=os.fspath(weights_path)
    ).eval()


def _to_uint8_rgb(x: Tensor, data_range: tuple[float, float]) -> Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W); got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        lo, hi = data_range
        x = ((x.to(torch.float64) - lo) / (hi - lo) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def _inception_outputs(x: Tensor, weights_path, what, data_range, batch_size, device):
    net = _inception(weights_path, what).to(device)
    feats, logits = [], []
    for i in range(0, x.shape[0], batch_size):
        f, lg = net(_to_uint8_rgb(x[i : i + batch_size], data_range).to(device))
        feats.append(f.double().cpu())
        logits.append(lg.double().cpu())
    return torch.cat(feats), torch.cat(logits)


def fid_inception(
    x: Tensor,
    y: Tensor,
    *,
    weights_path: str | os.PathLike | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """FID (Heusel et al. 2017) on Inception-v3 pool features through torch-fidelity (optional).

    Images (N, 1|3, H, W): uint8 in [0, 255], or floats in ``data_range``. Grey images are
    repeated to 3 channels. The user supplies the weights file; nothing is downloaded.
    """
    fx, _ = _inception_outputs(x, weights_path, "fid_inception", data_range, batch_size, device)
    fy, _ = _inception_outputs(y, weights_path, "fid_inception", data_range, batch_size, device)
    return frechet_distance_from_samples(fx, fy)


def inception_score(
    x: Tensor,
    *,
    weights_path: str | os.PathLike | None = None,
    splits: int = 10,
    data_range: tuple[float, float] = (-1.0, 1.0),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over
    ``splits`` splits, from torch-fidelity's unbiased Inception logits (optional dependency)."""
    _, logits = _inception_outputs(x, weights_path, "inception_score", data_range, batch_size, device)
    scores = []
    for part in torch.tensor_split(logits, splits):
        logp = torch.log_softmax(part, dim=1)
        logpy = torch.logsumexp(logp, dim=0) - math.log(part.shape[0])
        kl = (logp.exp() * (logp - logpy)).sum(1).mean()
        scores.append(float(kl.exp()))
    s = torch.tensor(scores, dtype=torch.float64)
    return float(s.mean()), float(s.std()) if len(scores) > 1 else 0.0


def __getattr__(name: str) -> Any:
    # Deprecated location: the digits' Frechet distance lives in scoresde.features (metric "fd").
    if name == "frechet_digits_distance":
        import warnings

        warnings.warn("scoresde.metrics.frechet_digits_distance is deprecated: use scoresde.features."
                      "frechet_digits_distance or metrics.METRICS['fd']", DeprecationWarning, stacklevel=2)
        return METRICS["fd"]
    raise AttributeError(f"module 'scoresde.metrics' has no attribute {name!r}")
