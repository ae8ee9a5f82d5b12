"""Exact models: Gaussian mixtures and Gaussians, with closed-form noised scores at every t.

Under a linear SDE, component ``N(mu_k, Sigma_k)`` becomes ``N(alpha mu_k, alpha^2 Sigma_k +
sigma^2 I)`` at time t, so the noised marginal of a mixture is again a mixture and its score is

    score(x, t) = sum_k r_k(x, t) (alpha^2 Sigma_k + sigma^2 I)^{-1} (alpha mu_k - x)

with responsibilities ``r_k`` computed by log-sum-exp. Each covariance is eigendecomposed once
(``Sigma_k = U_k diag(l_k) U_k^T``), so every t costs one projection per component. Arithmetic is
float64 inside; results come back in x's dtype. Singular (even zero) covariances are allowed for
t > 0, which gives point masses: the test oracle for exponential integrators.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ._utils import append_dims, batch_time
from .model import ScoreModel
from .sde import LinearSDE

__all__ = ["GaussianMixture", "Gaussian"]


def _as64(v: Any, name: str) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


class GaussianMixture:
    """A mixture of Gaussians in any dimension D.

    Args:
        weights: (K,) non-negative, normalised internally.
        means: (K, D).
        covariances: (K, D, D) full, (K, D) diagonal, or (K,) isotropic variances; positive
            semi-definite. A float broadcasts as an isotropic variance shared by all components.
    """

    def __init__(self, weights: Sequence[float] | Tensor, means: Any, covariances: Any):
        w = _as64(weights, "weights")
        mu = _as64(means, "means")
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, D); got {tuple(mu.shape)}")
        K, D = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape (K,) = ({K},) to match means; got {tuple(w.shape)}")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        cov = _as64(covariances, "covariances")
        if cov.ndim == 0:
            cov = cov.expand(K)
        if cov.shape == (K,):
            cov = torch.diag_embed(cov[:, None].expand(K, D))
        elif cov.shape == (K, D):
            cov = torch.diag_embed(cov)
        elif cov.shape != (K, D, D):
            raise ValueError(
                f"covariances must have shape (K,), (K, D) or (K, D, D) = ({K},), ({K}, {D}) or ({K}, {D}, {D}); "
                f"got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-10):
            raise ValueError("covariances must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        if bool((evals < -1e-10 * evals.abs().max().clamp_min(1.0)).any()):
            raise ValueError("covariances must be positive semi-definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = cov
        self._evals = evals.clamp_min(0.0)  # (K, D)
        self._evecs = evecs  # (K, D, D), columns are eigenvectors
        self.dim = D
        self.n_components = K

    # ------------------------------------------------------------------ data
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ):
        """Exact samples of the data distribution, shape (n, D) (and component labels)."""
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer; got {n}")
        n = int(n)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(self.weights.to(gen_device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gen_device)
        k, z = k.cpu(), z.cpu()
        scale = self._evecs[k] * self._evals[k].sqrt()[:, None, :]  # U sqrt(L)
        x = self.means[k] + torch.einsum("nij,nj->ni", scale, z)
        x = x.to(device=device, dtype=dtype)
        return (x, k.to(device)) if return_labels else x

    # ------------------------------------------------------------------ noised marginals
    def _noised(self, x: Tensor, t: Tensor | None, sde: LinearSDE | None):
        """Per-sample, per-component log N and precision-applied residual in float64."""
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}) (or (B, *D) with {self.dim} elements); got {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1)
        x64 = x.detach().to(torch.float64) if not x.requires_grad else x.to(torch.float64)
        dev = x.device
        B = x.shape[0]
        if sde is None:
            alpha = torch.ones(B, dtype=torch.float64, device=dev)
            sigma = torch.zeros(B, dtype=torch.float64, device=dev)
        else:
            tt = batch_time(t, B, dev)
            alpha, sigma = sde.alpha(tt), sde.sigma(tt)
        U, L = self._evecs.to(dev), self._evals.to(dev)
        mu, w = self.means.to(dev), self.weights.to(dev)
        var = alpha[:, None, None] ** 2 * L[None] + sigma[:, None, None] ** 2  # (B, K, D)
        if bool((var <= 0).any()):
            raise ValueError(
                "the noised covariance is singular (zero-variance data at sigma(t) = 0): use t > 0 or "
                "a positive-definite covariance"
            )
        r = x64[:, None, :] - alpha[:, None, None] * mu[None]  # (B, K, D)
        y = torch.einsum("kdj,bkd->bkj", U, r)  # eigenbasis coordinates
        logn = (
            -0.5 * (y**2 / var).sum(-1)
            - 0.5 * torch.log(var).sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
            + torch.log(w)[None]
        )  # (B, K)
        prec_r = torch.einsum("kdj,bkj->bkd", U, y / var)  # (Sigma_t)^{-1} r
        return logn, prec_r, alpha, sigma

    def log_prob(self, x: Tensor, t: Tensor | float | None = None, sde: LinearSDE | None = None) -> Tensor:
        """Log-density (float64, shape (B,)) of the data (t None) or of the noised marginal p_t."""
        if (t is None) != (sde is None):
            raise ValueError("give both t and sde for the noised marginal, or neither for the data")
        if sde is not None:
            t = sde.check_t(t, batch=x.shape[0], device=x.device, allow_zero=True)
        logn, _, _, _ = self._noised(x, t, sde)
        return torch.logsumexp(logn, dim=1)

    def responsibilities(self, x: Tensor, t=None, sde: LinearSDE | None = None) -> Tensor:
        """Posterior component probabilities (B, K) at time t (or of the data)."""
        logn, _, _, _ = self._noised(x, t, sde)
        return torch.softmax(logn, dim=1)

    def score(self, x: Tensor, t: Tensor | float, sde: LinearSDE) -> Tensor:
        """Exact score of the noised marginal p_t at x, in x's dtype. t: (B,) or scalar in (0, T]."""
        logn, prec_r, _, _ = self._noised(x, t, sde)
        resp = torch.softmax(logn, dim=1)  # (B, K)
        s = -(resp[:, :, None] * prec_r).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def x0(self, x: Tensor, t: Tensor | float, sde: LinearSDE) -> Tensor:
        """Exact posterior mean E[x_0 | x_t = x] (Tweedie): (x + sigma^2 score) / alpha."""
        B = x.shape[0]
        tt = batch_time(t, B, x.device)
        s = self.score(x, tt, sde).to(torch.float64)
        a, sg = append_dims(sde.alpha(tt), x.ndim), append_dims(sde.sigma(tt), x.ndim)
        return ((x.to(torch.float64) + sg**2 * s) / a).to(x.dtype)

    def score_fn(self, sde: LinearSDE):
        """A plain ``score_fn(x, t)`` closure for ``sde`` (x of shape (B, D) or (B, *D) with D elements)."""

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, t, sde)

        return score_fn

    def model(self, sde: LinearSDE, parameterization: str = "score") -> ScoreModel:
        """The exact model wrapped as a :class:`ScoreModel` (``score`` or ``x0`` output)."""
        if parameterization == "score":
            return ScoreModel(self.score_fn(sde), sde, "score")
        if parameterization == "x0":
            return ScoreModel(lambda x, t: self.x0(x, t, sde), sde, "x0")
        raise ValueError(f"parameterization={parameterization!r} is not one of the accepted values: 'score', 'x0'")

    def noised(self, sde: LinearSDE, t: float) -> "GaussianMixture":
        """The marginal p_t as a GaussianMixture (scalar t)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a * a * self.covariances + s * s * eye)

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        d = self.means - m
        return (self.weights[:, None, None] * (self.covariances + d[:, :, None] * d[:, None, :])).sum(0)

    def config(self) -> dict:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim})"

    # ------------------------------------------------------------------ ready-made problems
    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.5, weights=None) -> "GaussianMixture":
        """K isotropic modes on a circle (2-D)."""
        ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        w = torch.ones(k) if weights is None else weights
        return cls(w, means, torch.full((k,), std**2, dtype=torch.float64))

    @classmethod
    def random(cls, k: int, dim: int, *, seed: int = 0, spread: float = 3.0, unequal: bool = True) -> "GaussianMixture":
        """K modes with random means, unequal weights and random full covariances (reproducible)."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(k, dim, generator=g, dtype=torch.float64)
        w = torch.rand(k, generator=g, dtype=torch.float64) + 0.2 if unequal else torch.ones(k)
        A = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
        cov = 0.3 * (A @ A.transpose(1, 2)) + 0.05 * torch.eye(dim, dtype=torch.float64)
        return cls(w, means, cov)


class Gaussian(GaussianMixture):
    """A single Gaussian ``N(mean, cov)``: closed-form PF-ODE solution and noised log-density.

    ``cov`` may be (D, D), (D,) diagonal or a scalar. ``cov = 0`` is a point mass.
    """

    def __init__(self, mean: Any, cov: Any = 1.0):
        mu = _as64(mean, "mean")
        if mu.ndim != 1:
            raise ValueError(f"mean must have shape (D,); got {tuple(mu.shape)}")
        D = mu.shape[0]
        c = _as64(cov, "cov")
        if c.ndim == 0:
            c = c * torch.ones(D, dtype=torch.float64)
        if c.shape == (D,):
            c = torch.diag(c)
        if c.shape != (D, D):
            raise ValueError(f"cov must be a scalar, (D,) or (D, D) with D={D}; got {tuple(c.shape)}")
        super().__init__(torch.ones(1), mu[None], c[None])

    def pf_ode_map(self, x_u: Tensor, u: Tensor | float, t: Tensor | float, sde: LinearSDE) -> Tensor:
        """Exact solution of the probability-flow ODE from time u (state x_u) to time t.

        In the eigenbasis of the covariance, per coordinate j:
        ``x_t = alpha_t mu + sqrt((alpha_t^2 l_j + sigma_t^2) / (alpha_u^2 l_j + sigma_u^2)) (x_u - alpha_u mu)``.
        """
        if x_u.ndim != 2 or x_u.shape[1] != self.dim:
            raise ValueError(f"x_u must have shape (B, {self.dim}); got {tuple(x_u.shape)}")
        B, dev = x_u.shape[0], x_u.device
        uu, tt = batch_time(u, B, dev), batch_time(t, B, dev)
        U, L, mu = self._evecs[0].to(dev), self._evals[0].to(dev), self.means[0].to(dev)
        au, su = sde.alpha(uu)[:, None], sde.sigma(uu)[:, None]
        at, st = sde.alpha(tt)[:, None], sde.sigma(tt)[:, None]
        y = (x_u.to(torch.float64) - au * mu) @ U  # eigen-coordinates of the residual
        ratio = torch.sqrt((at**2 * L + st**2) / (au**2 * L + su**2))
        return (at * mu + (ratio * y) @ U.T).to(x_u.dtype)

    @property
    def mean_(self) -> Tensor:
        return self.means[0]
