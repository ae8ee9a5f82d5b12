"""Exact models: Gaussian mixtures and Gaussians, with closed-form noised scores at every t.

Under a linear SDE, component ``N(mu_k, Sigma_k)`` becomes ``N(alpha mu_k, alpha^2 Sigma_k +
sigma^2 I)`` at time t, so the noised marginal of a mixture is again a mixture and its score is

    score(x, t) = sum_k r_k(x, t) (alpha^2 Sigma_k + sigma^2 I)^{-1} (alpha mu_k - x)

with responsibilities ``r_k`` computed by log-sum-exp. Each covariance is eigendecomposed once
(``Sigma_k = U_k diag(l_k) U_k^T``), so every t costs one projection per component. Arithmetic is
float64 inside; results come back in x's dtype. Singular (even zero) covariances are allowed for
t > 0, which gives point masses: the test oracle for exponential integrators.

Conditional oracles (conditional and controllable generation, docs/guidance.md):

* :meth:`GaussianMixture.condition_linear`: the posterior of a linear Gaussian observation
  ``y = A x + n``, ``n ~ N(0, s^2 I)``: again a mixture, with closed-form weights, means and
  full covariances (the Kalman update per component); its noised score at every t is the exact
  conditional score ``grad log p_t(x_t | y)``;
* :meth:`GaussianMixture.condition`: conditioning on observed coordinates (imputation), a mixture
  in the unobserved ones;
* :class:`ClassConditionalMixture`: a mixture whose components carry class labels, so that
  ``p(x | y)`` is the sub-mixture of class y; closed-form conditional scores, the classifier
  ``log p(y | x_t, t)`` and its gradient, and the classifier-free guided score
  ``(1 + w) score(x | y) - w score(x)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ._utils import append_dims, batch_time
from .model import ScoreModel
from .sde import LinearSDE

__all__ = ["GaussianMixture", "Gaussian", "ClassConditionalMixture"]


def _dims(dims: Any, D: int, name: str) -> Tensor:
    """Coordinate indices from a (D,) bool mask or a list of distinct indices in [0, D)."""
    d = torch.as_tensor(dims)
    if d.dtype == torch.bool:
        if d.shape != (D,):
            raise ValueError(f"{name} as a mask must have shape ({D},); got {tuple(d.shape)}")
        d = torch.nonzero(d).reshape(-1)
    else:
        if d.is_floating_point() or d.ndim != 1:
            raise ValueError(f"{name} must be a ({D},) bool mask or a 1-D list of coordinate indices; got {dims!r}")
        d = d.long()
        if bool(((d < 0) | (d >= D)).any()) or len(set(d.tolist())) != d.numel():
            raise ValueError(f"{name} must hold distinct coordinate indices in [0, {D}); got {d.tolist()}")
    if d.numel() == 0:
        raise ValueError(f"{name} selects no coordinate")
    return d


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

    # ------------------------------------------------------------------ conditioning
    def components(self, idx: Sequence[int] | Tensor) -> "GaussianMixture":
        """The sub-mixture of components ``idx`` (weights renormalised)."""
        i = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if i.numel() == 0 or bool(((i < 0) | (i >= self.n_components)).any()):
            raise ValueError(f"idx must be a non-empty list of component indices in [0, {self.n_components}); got {i.tolist()}")
        return GaussianMixture(self.weights[i], self.means[i], self.covariances[i])

    def marginal(self, dims: Sequence[int] | Tensor) -> "GaussianMixture":
        """The marginal mixture of the coordinates ``dims`` (a list of indices or a (D,) bool mask)."""
        d = _dims(dims, self.dim, "dims")
        return GaussianMixture(self.weights, self.means[:, d], self.covariances[:, d][:, :, d])

    def condition_linear(self, A: Any, y: Any, noise_std: float = 0.0) -> "GaussianMixture":
        """The posterior ``p(x | A x + n = y)``, ``n ~ N(0, noise_std^2 I_m)``, as a D-dim mixture.

        Per component (the Kalman update): ``S_k = A Sigma_k A^T + s^2 I``,
        ``G_k = Sigma_k A^T S_k^{-1}``, mean ``mu_k + G_k (y - A mu_k)``, covariance
        ``Sigma_k - G_k A Sigma_k`` (full, singular along A's rows when s = 0), weight
        ``proportional to w_k N(y; A mu_k, S_k)``.

        Args:
            A: (m, D) observation matrix (any rank-m matrix; ``noise_std = 0`` needs every
                ``A Sigma_k A^T`` positive definite).
            y: (m,) the observation.
            noise_std: the observation noise std s >= 0.
        """
        A_ = _as64(A, "A")
        if A_.ndim != 2 or A_.shape[1] != self.dim or A_.shape[0] < 1:
            raise ValueError(f"A must have shape (m, {self.dim}) with m >= 1; got {tuple(A_.shape)}")
        m = A_.shape[0]
        y_ = _as64(y, "y").reshape(-1)
        if y_.shape != (m,):
            raise ValueError(f"y must have {m} elements (one per row of A); got shape {tuple(_as64(y, 'y').shape)}")
        if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0; got {noise_std!r}")
        cov, mu = self.covariances, self.means
        SAt = cov @ A_.T  # (K, D, m)
        S = A_ @ SAt + noise_std**2 * torch.eye(m, dtype=torch.float64)  # (K, m, m)
        S = 0.5 * (S + S.transpose(1, 2))
        L, info = torch.linalg.cholesky_ex(S)
        if bool((info != 0).any()):
            k = int(torch.nonzero(info)[0])
            raise ValueError(
                f"the observation covariance A Sigma_k A^T + noise_std^2 I is singular for component {k}: "
                "use noise_std > 0 or an A whose rows see every component's variance"
            )
        r = y_[None] - mu @ A_.T  # (K, m)
        sol = torch.cholesky_solve(r[:, :, None], L)[:, :, 0]  # S^{-1} r
        logdet = 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
        log_ev = -0.5 * (r * sol).sum(1) - 0.5 * logdet - 0.5 * m * math.log(2 * math.pi)
        logw = torch.log(self.weights) + log_ev
        if not bool(torch.isfinite(logw).any()):
            raise ValueError("the observation has zero likelihood under every component")
        G = torch.cholesky_solve(SAt.transpose(1, 2), L).transpose(1, 2)  # Sigma A^T S^{-1}, (K, D, m)
        means = mu + (G @ r[:, :, None])[:, :, 0]
        post = cov - G @ SAt.transpose(1, 2)
        post = 0.5 * (post + post.transpose(1, 2))
        return GaussianMixture(torch.softmax(logw, 0), means, post)

    def condition(self, observed: Any, values: Any) -> "GaussianMixture":
        """``p(x_u | x_o = values)``: the mixture of the unobserved coordinates given the observed ones.

        Args:
            observed: (D,) bool mask (True = observed) or a list of observed coordinate indices.
            values: the observed values, (m,) in the order of the observed coordinates, or a
                full (D,) vector (its unobserved entries are ignored).
        """
        o = _dims(observed, self.dim, "observed")
        if o.numel() == self.dim:
            raise ValueError("observed must leave at least one coordinate unobserved")
        v = _as64(values, "values").reshape(-1)
        if v.shape[0] == self.dim:
            v = v[o]
        if v.shape != (o.numel(),):
            raise ValueError(f"values must have {o.numel()} (observed) or {self.dim} elements; got {v.shape[0]}")
        A = torch.eye(self.dim, dtype=torch.float64)[o]
        u = torch.tensor([j for j in range(self.dim) if j not in set(o.tolist())], dtype=torch.long)
        return self.condition_linear(A, v).marginal(u)

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


class ClassConditionalMixture:
    """A Gaussian mixture whose components carry class labels: ``p(x | y)`` is class y's sub-mixture.

    With ``C`` classes, labels ``0..C-1`` are classes and ``C`` (:attr:`null_label`) means "no
    label" (the joint ``p(x)``), the convention of :class:`scoresde.nets.embeddings.LabelEmbedding`
    and of classifier-free guidance. Everything is closed form at every t of any linear SDE:

    * ``score(x, t, sde, y)``: ``grad log p_t(x | y)``: the responsibilities restricted to class
      y's components;
    * ``classifier_log_probs(x, t, sde)``: ``log p(c | x_t)`` for every class c, (B, C);
    * ``classifier_grad(x, t, sde, y)`` = ``score(x | y) - score(x)`` (Bayes' rule);
    * ``cfg_score(x, t, sde, y, w)`` = ``(1 + w) score(x | y) - w score(x)``.

    Args:
        mixture: the joint mixture p(x) (its weights are the joint weights p(k)).
        labels: (K,) the class of each component; every class 0..C-1 needs a component of
            positive weight.
        num_classes: C (default ``max(labels) + 1``).
    """

    def __init__(self, mixture: GaussianMixture, labels: Sequence[int] | Tensor, num_classes: int | None = None):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture; got {type(mixture).__name__}")
        lab = torch.as_tensor(labels)
        K = mixture.n_components
        if lab.shape != (K,) or lab.is_floating_point() or lab.dtype == torch.bool:
            raise ValueError(f"labels must be K = {K} integer class labels (one per component); got {labels!r}")
        lab = lab.long()
        C = int(lab.max()) + 1 if num_classes is None else num_classes
        if isinstance(C, bool) or int(C) != C or C < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        C = int(C)
        if bool(((lab < 0) | (lab >= C)).any()):
            raise ValueError(f"labels must lie in [0, {C}) (num_classes={C}); got {lab.tolist()}")
        member = lab[None, :] == torch.arange(C)[:, None]  # (C, K)
        class_w = (member * mixture.weights[None]).sum(1)
        if bool((class_w <= 0).any()):
            empty = torch.nonzero(class_w <= 0).reshape(-1).tolist()
            raise ValueError(f"every class needs a component of positive weight; classes {empty} have none")
        self.mixture = mixture
        self.labels = lab
        self.num_classes = C
        self.null_label = C
        self.class_probs = class_w  # p(y), (C,)
        self._member = member
        self.dim = mixture.dim

    # ------------------------------------------------------------------ labels
    def check_labels(self, y: Any, batch: int, *, allow_null: bool = True) -> Tensor:
        """y as a (B,) long tensor: None (null), an int, or an integer tensor of shape (B,)."""
        C = self.num_classes
        hi = C + 1 if allow_null else C
        accepted = f"labels in [0, {C})" + (f" or the null label {C} (no label)" if allow_null else "")
        if y is None:
            if not allow_null:
                raise ValueError(f"y must be given ({accepted})")
            return torch.full((batch,), C, dtype=torch.long)
        if isinstance(y, bool) or (not isinstance(y, (int, Tensor))):
            raise ValueError(f"y must be an int or an integer tensor of shape ({batch},) with {accepted}; got {y!r}")
        yt = torch.as_tensor(y)
        if yt.is_floating_point() or yt.is_complex() or yt.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels ({accepted}); got dtype {yt.dtype}")
        if yt.ndim == 0:
            yt = yt.expand(batch)
        if yt.shape != (batch,):
            raise ValueError(f"y must be a scalar or have shape ({batch},) (one label per sample); got {tuple(yt.shape)}")
        if yt.numel() and bool(((yt < 0) | (yt >= hi)).any()):
            bad = yt[(yt < 0) | (yt >= hi)][:5].tolist()
            raise ValueError(f"y must hold {accepted}; got out-of-range labels {bad}")
        return yt.long()

    def _keep(self, y: Any, batch: int, device: torch.device) -> Tensor:
        """(B, K) bool: the components each sample's label allows (all of them for the null label)."""
        yt = self.check_labels(y, batch).to(device)
        member = torch.cat([self._member, torch.ones(1, self.mixture.n_components, dtype=torch.bool)]).to(device)
        return member[yt]

    # ------------------------------------------------------------------ data
    def conditional(self, y: int) -> GaussianMixture:
        """p(x | y) as a GaussianMixture (the sub-mixture of class y)."""
        yy = int(self.check_labels(y, 1, allow_null=False)[0])
        return self.mixture.components(torch.nonzero(self._member[yy]).reshape(-1))

    def sample(self, n: int, y: int | None = None, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None):
        """``(x, labels)``: joint samples (y None) or n samples of class y (labels all y)."""
        if y is None:
            x, k = self.mixture.sample(n, generator=generator, dtype=dtype, device=device, return_labels=True)
            return x, self.labels.to(k.device)[k]
        x = self.conditional(y).sample(n, generator=generator, dtype=dtype, device=device)
        return x, torch.full((x.shape[0],), int(y), dtype=torch.long, device=x.device)

    # ------------------------------------------------------------------ closed forms
    def _masked_logn(self, x: Tensor, t, sde, y):
        logn, prec_r, _, _ = self.mixture._noised(x, t, sde)
        keep = self._keep(y, x.shape[0], logn.device)
        return logn.masked_fill(~keep, -math.inf), prec_r

    def score(self, x: Tensor, t: Tensor | float, sde: LinearSDE, y: Any = None) -> Tensor:
        """``grad log p_t(x | y)`` (y None or the null label: the unconditional score), in x's dtype."""
        logn, prec_r = self._masked_logn(x, t, sde, y)
        resp = torch.softmax(logn, dim=1)
        s = -(resp[:, :, None] * prec_r).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def x0(self, x: Tensor, t: Tensor | float, sde: LinearSDE, y: Any = None) -> Tensor:
        """E[x_0 | x_t = x, y] (Tweedie on the conditional score)."""
        tt = batch_time(t, x.shape[0], x.device)
        s = self.score(x, tt, sde, y).to(torch.float64)
        a, sg = append_dims(sde.alpha(tt), x.ndim), append_dims(sde.sigma(tt), x.ndim)
        return ((x.to(torch.float64) + sg**2 * s) / a).to(x.dtype)

    def log_prob(self, x: Tensor, t=None, sde: LinearSDE | None = None, y: Any = None) -> Tensor:
        """``log p_t(x | y)`` (float64, (B,)); t and sde None: the data density."""
        if (t is None) != (sde is None):
            raise ValueError("give both t and sde for the noised marginal, or neither for the data")
        logn, _ = self._masked_logn(x, t, sde, y)
        yt = self.check_labels(y, x.shape[0]).to(logn.device)
        log_py = torch.cat([torch.log(self.class_probs), torch.zeros(1, dtype=torch.float64)]).to(logn.device)[yt]
        return torch.logsumexp(logn, dim=1) - log_py

    def classifier_log_probs(self, x: Tensor, t=None, sde: LinearSDE | None = None) -> Tensor:
        """``log p(c | x_t)`` for every class c, (B, C) float64 (differentiable in x)."""
        logn, _, _, _ = self.mixture._noised(x, t, sde)
        mask = torch.log(self._member.to(torch.float64)).to(logn.device)  # 0 or -inf, (C, K)
        per_class = torch.logsumexp(logn[:, None, :] + mask[None], dim=2)  # (B, C)
        return per_class - torch.logsumexp(logn, dim=1, keepdim=True)

    def classifier(self, sde: LinearSDE):
        """The exact classifier as a callable ``log_prob(x, t, y) -> (B,)`` (``log p(y | x_t, t)``).

        Differentiable in x: :class:`scoresde.guidance.ClassifierGuidance` takes its gradient.
        """

        def log_prob(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
            yt = self.check_labels(y, x.shape[0], allow_null=False).to(x.device)
            lp = self.classifier_log_probs(x, t, sde)
            return lp.gather(1, yt[:, None])[:, 0]

        return log_prob

    def classifier_grad(self, x: Tensor, t: Tensor | float, sde: LinearSDE, y: Any) -> Tensor:
        """``grad_x log p(y | x_t)`` in closed form: ``score(x | y) - score(x)`` (float64 inside)."""
        self.check_labels(y, x.shape[0], allow_null=False)
        x64 = x.to(torch.float64)
        return (self.score(x64, t, sde, y) - self.score(x64, t, sde, None)).to(x.dtype)

    def cfg_score(self, x: Tensor, t: Tensor | float, sde: LinearSDE, y: Any, w: float) -> Tensor:
        """The classifier-free guided score ``(1 + w) score(x | y) - w score(x)`` (float64 inside)."""
        if not (isinstance(w, (int, float)) and math.isfinite(w)):
            raise ValueError(f"w must be a finite number; got {w!r}")
        x64 = x.to(torch.float64)
        return ((1 + w) * self.score(x64, t, sde, y) - w * self.score(x64, t, sde, None)).to(x.dtype)

    # ------------------------------------------------------------------ as a model
    def model(self, sde: LinearSDE, parameterization: str = "score") -> ScoreModel:
        """The exact conditional model as a :class:`ScoreModel` whose network takes ``y=`` labels.

        ``model(x, t, y=labels)`` is ``score(x | y)``; ``y=None`` or the null label gives the
        unconditional score. The network exposes ``num_classes`` (the null label), like the
        scoresde networks built with ``num_classes``.
        """
        if parameterization not in ("score", "x0"):
            raise ValueError(f"parameterization={parameterization!r} is not one of the accepted values: 'score', 'x0'")
        return ScoreModel(_ClassConditionalNet(self, sde, parameterization), sde, parameterization)

    def config(self) -> dict:
        return {**self.mixture.config(), "labels": self.labels.tolist(), "num_classes": self.num_classes}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.mixture.n_components}, D={self.dim}, classes={self.num_classes})"


class _ClassConditionalNet:
    """``net(x, t, y=None)`` of an exact :class:`ClassConditionalMixture` (noise_input ``t``)."""

    def __init__(self, ccm: ClassConditionalMixture, sde: LinearSDE, kind: str):
        self.ccm, self.sde, self.kind = ccm, sde, kind
        self.num_classes = ccm.num_classes

    def __call__(self, x: Tensor, t: Tensor, y: Any = None) -> Tensor:
        if self.kind == "score":
            return self.ccm.score(x, t, self.sde, y)
        return self.ccm.x0(x, t, self.sde, y)
