"""Linear SDEs: x_t = alpha(t) x_0 + sigma(t) z (Song et al. 2021; Karras et al. 2022).

A linear SDE ``dx = f(t) x dt + g(t) dw`` is fixed by two schedule functions, ``log_alpha(t)``
and ``sigma(t)``. Everything else is derived from them:

* ``f(t) = d log alpha / dt`` and ``g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2``,
* the half log-SNR ``lam(t) = log alpha(t) - log sigma(t)`` and its inverse,
* the reverse-time SDE drift ``f x - g^2 score`` and probability-flow ODE drift
  ``f x - g^2 score / 2``,
* the exact transition from time ``s`` to ``t > s``: ``x_t = a x_s + b z`` with
  ``a = alpha_t / alpha_s`` and ``b^2 = sigma_t^2 - a^2 sigma_s^2``.

All time arithmetic runs in float64 on the device of ``t``; results come back in float64 and are
cast by the caller at the network boundary. Methods are batched over ``t`` (any shape).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._utils import append_dims, as_time
from .registry import Real, Registry

__all__ = ["LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "sde_from_config", "make_sde", "SDES", "CAPABILITIES"]

#: capabilities an SDE may declare (``LinearSDE.capabilities``) and samplers may require.
CAPABILITIES: dict[str, str] = {
    "extends_beyond_T": "its schedule is defined for t > T, so a noise level sigma~ above sigma~(T) maps to a time "
                        "(EDM's churn raises sigma~ above the grid's top)",
}


class LinearSDE:
    """Base class of linear SDEs ``x_t = alpha(t) x_0 + sigma(t) z``.

    Subclasses (or :meth:`from_schedule`) define :meth:`log_alpha` and :meth:`sigma`; they may
    also override the derived quantities with closed forms (``f``, ``g2``, ``lam``,
    ``inverse_lambda``). Defaults use float64 autograd and bisection.

    Attributes:
        T: the end of the forward process (the prior lives there).
        t_min: the smallest time used for training and sampling (``eps`` in Song et al.).
    """

    #: capabilities beyond the base interface (see :data:`CAPABILITIES`); samplers declare the ones
    #: they need (``requires=``) and ``sample()`` checks them before any network call.
    capabilities: frozenset[str] = frozenset()

    def __init__(self, T: float = 1.0, t_min: float = 1e-3):
        where = type(self).__name__
        T, t_min = Real(gt=0).check("T", T, where), Real(ge=0).check("t_min", t_min, where)  # no strings, no bools
        if not 0.0 <= t_min < T:
            raise ValueError(f"need 0 <= t_min < T; got t_min={t_min}, T={T}")
        self.T = T
        self.t_min = t_min

    def provides(self, capability: str) -> bool:
        """Whether the SDE has ``capability``: a declared capability or a callable attribute of that name."""
        return capability in self.capabilities or callable(getattr(self, capability, None))

    # ------------------------------------------------------------------ schedules (define these)
    def log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError("a LinearSDE subclass must define log_alpha(t)")  # abstract

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError("a LinearSDE subclass must define sigma(t)")  # abstract

    # ------------------------------------------------------------------ derived quantities
    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(as_time(t)))

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(self.sigma(as_time(t)))

    def _derivative(self, fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
        t = as_time(t).detach().requires_grad_(True)
        with torch.enable_grad():
            y = fn(t)
            if not y.requires_grad:  # a constant schedule
                return torch.zeros_like(t).detach()
            (dy,) = torch.autograd.grad(y.sum(), t, allow_unused=True, materialize_grads=True)
        return dy.detach()

    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient f(t) = d log alpha / dt (the drift is f(t) x)."""
        return self._derivative(self.log_alpha, t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2."""
        t = as_time(t)
        dsig2 = self._derivative(lambda u: self.sigma(u) ** 2, t)
        return dsig2 - 2.0 * self.f(t) * self.sigma(t) ** 2

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t)."""
        return torch.sqrt(self.g2(t).clamp_min(0.0))

    def lam(self, t: Tensor) -> Tensor:
        """Half log-SNR lambda(t) = log alpha(t) - log sigma(t); decreasing in t."""
        t = as_time(t)
        return self.log_alpha(t) - self.log_sigma(t)

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        """t such that lambda(t) = lam, by float64 bisection on [0, T] (exact to ~1e-15 T).

        With the capability ``extends_beyond_T`` the bracket grows past T (doubling) until it
        holds every lam; otherwise a lam below lambda(T) maps to T.
        """
        lam = as_time(lam)
        lo = torch.zeros_like(lam)
        top = self.T
        if "extends_beyond_T" in self.capabilities:
            lam_min = float(lam.min()) if lam.numel() else 0.0
            for _ in range(60):
                if float(self.lam(as_time(top))) <= lam_min:
                    break
                top *= 2.0
        hi = torch.full_like(lam, top)
        for _ in range(80):  # 2^-80 T: below float64 resolution of t
            mid = 0.5 * (lo + hi)
            go_right = self.lam(mid) > lam  # lambda decreasing: the root is to the right
            lo = torch.where(go_right, mid, lo)
            hi = torch.where(go_right, hi, mid)
        return 0.5 * (lo + hi)

    def sigma_tilde(self, t: Tensor) -> Tensor:
        """The EDM noise level sigma(t)/alpha(t) = exp(-lambda(t))."""
        return torch.exp(-self.lam(t))

    def t_from_sigma_tilde(self, sigma_tilde: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_tilde`."""
        return self.inverse_lambda(-torch.log(as_time(sigma_tilde)))

    # ------------------------------------------------------------------ marginals and prior
    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of p(x_t | x_0); t is (B,) or scalar, returns mean (B,*D) and std (B,1,...)."""
        t = self.check_t(t, batch=x0.shape[0], device=x0.device)
        a = append_dims(self.alpha(t), x0.ndim).to(x0.dtype)
        s = append_dims(self.sigma(t), x0.ndim).to(x0.dtype)
        return a * x0, s

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}; got {tuple(noise.shape)}")
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std^2 I) at t = T (unit-variance data assumed by default)."""
        t = as_time(self.T)
        return float(torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw from the prior N(0, prior_std^2 I)."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std()

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior, summed over all but the batch dim: shape (B,)."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).double().pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s * s) - 0.5 * sq / (s * s)

    # ------------------------------------------------------------------ SDE and ODE
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift f(t) x."""
        return append_dims(self.f(t), x.ndim).to(x.dtype) * x

    def diffusion(self, t: Tensor) -> Tensor:
        """Forward diffusion g(t) (float64)."""
        return self.g(t)

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE dx = [f x - g^2 score] dt + g dw_bar (integrated t: T -> 0)."""
        g2 = append_dims(self.g2(t), x.ndim).to(x.dtype)
        return self.drift(x, t) - g2 * score

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Probability-flow ODE drift dx/dt = f x - g^2 score / 2."""
        g2 = append_dims(self.g2(t), x.ndim).to(x.dtype)
        return self.drift(x, t) - 0.5 * g2 * score

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Exact forward transition s -> t (s < t): x_t = a x_s + b z. Returns (a, b^2), float64.

        ``b^2 = sigma_t^2 - a^2 sigma_s^2`` is computed in a cancellation-free form.
        """
        s, t = as_time(s), as_time(t)
        a = torch.exp(self.log_alpha(t) - self.log_alpha(s))
        # b^2 = sigma_t^2 (1 - exp(2 (lam_t - lam_s))), lam_t < lam_s, via expm1 for small steps.
        b2 = self.sigma(t) ** 2 * -torch.expm1(2.0 * (self.lam(t) - self.lam(s)))
        return a, b2.clamp_min(0.0)

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """One-step forward discretisation ``x_t = x_{t_next} + f + G z`` (Song et al. 2021, App. E).

        For a step t -> t_next < t this returns ``f = (a - 1) x`` and ``G = b`` from the exact
        transition t_next -> t. On uniform grids this is Song et al.'s SMLD discretisation for
        the VE SDE exactly and their DDPM discretisation for the VP SDE with
        ``beta_i = 1 - alpha_t^2 / alpha_{t_next}^2`` (which, unlike ``beta(t)/N``, stays in (0, 1)
        at any step count). Used by the reverse-diffusion and ancestral predictors.
        """
        a, b2 = self.transition(t_next, t)
        f = (append_dims(a, x.ndim).to(x.dtype) - 1.0) * x
        G = append_dims(torch.sqrt(b2), x.ndim).to(x.dtype)
        return f, G

    # ------------------------------------------------------------------ checks and config
    def check_t(
        self,
        t,
        *,
        batch: int | None = None,
        device: torch.device | None = None,
        name: str = "t",
        allow_zero: bool = False,
    ) -> Tensor:
        """Return t as float64, checking it lies in [t_min, T] (or [0, T] when allow_zero)."""
        t = as_time(t, device=device)
        if batch is not None:
            if t.ndim == 0:
                t = t.expand(batch)
            elif t.ndim != 1 or t.shape[0] != batch:
                raise ValueError(
                    f"{name} must be a scalar or a 1-D tensor of the batch size {batch}; got shape {tuple(t.shape)}"
                )
        lo = 0.0 if allow_zero else self.t_min
        tol = 1e-9 * self.T
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if t.numel() and (float(t.min()) < lo - tol or float(t.max()) > self.T + tol):
            raise ValueError(
                f"{name} must lie in [{lo:g}, {self.T:g}] for {type(self).__name__} (t_min={self.t_min:g}); "
                f"got values in [{float(t.min()):g}, {float(t.max()):g}]"
            )
        return t

    def config(self) -> dict:
        """Plain-data description, rebuilt by :func:`sde_from_config` (built-in SDEs only)."""
        return {"class": type(self).__name__, "kwargs": dict(self._kwargs)}

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_kwargs", {}).items())
        return f"{type(self).__name__}({kw})"

    @staticmethod
    def from_schedule(
        log_alpha: Callable[[Tensor], Tensor],
        sigma: Callable[[Tensor], Tensor],
        *,
        T: float = 1.0,
        t_min: float = 1e-3,
        prior_std: float | None = None,
        name: str = "CustomSDE",
        capabilities: tuple[str, ...] = (),
    ) -> "LinearSDE":
        """Build a linear SDE from its two schedule functions (float64 tensor in, tensor out).

        ``f``, ``g^2``, ``lambda`` and its inverse are derived (autograd and bisection).
        ``lambda`` must be strictly decreasing on (0, T]. ``capabilities``: any of
        :data:`CAPABILITIES` the schedule has (e.g. ``extends_beyond_T`` if the two functions are
        valid for t > T).
        """
        return _ScheduleSDE(log_alpha, sigma, T=T, t_min=t_min, prior_std=prior_std, name=name,
                            capabilities=capabilities)


class _ScheduleSDE(LinearSDE):
    def __init__(self, log_alpha, sigma, *, T, t_min, prior_std, name, capabilities=()):
        unknown = sorted(set(capabilities) - set(CAPABILITIES))
        if unknown:
            raise ValueError(f"capabilities {unknown} are not known; accepted: {', '.join(CAPABILITIES)}")
        super().__init__(T=T, t_min=t_min)
        self.capabilities = frozenset(capabilities)
        self._log_alpha_fn = log_alpha
        self._sigma_fn = sigma
        self._prior_std = prior_std
        self._name = name
        self._kwargs = {"T": T, "t_min": t_min}
        ts = torch.linspace(max(t_min, 1e-6 * T), T, 257, dtype=torch.float64)
        lam = self.lam(ts)
        if not bool(torch.isfinite(lam).all()) or not bool((lam[1:] < lam[:-1]).all()):
            raise ValueError(
                f"{name}: lambda(t) = log alpha - log sigma must be finite and strictly decreasing on [t_min, T]"
            )

    def log_alpha(self, t):
        return self._log_alpha_fn(as_time(t))

    def sigma(self, t):
        return self._sigma_fn(as_time(t))

    def prior_std(self):
        return self._prior_std if self._prior_std is not None else super().prior_std()

    def config(self):
        raise TypeError(f"{self._name} is a user-defined SDE: it has no plain-data config to store")

    def __repr__(self):
        return f"{self._name}(T={self.T}, t_min={self.t_min})"


def _check_pos(name: str, value: float) -> float:
    if not Real(gt=0).accepts(value):  # a positive finite real number: no strings, no bools
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def _check_sigma_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    sigma_min, sigma_max = _check_pos("sigma_min", sigma_min), _check_pos("sigma_max", sigma_max)
    if sigma_min >= sigma_max:
        raise ValueError(f"need sigma_min < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return sigma_min, sigma_max


class _BetaSchedule(LinearSDE):
    """Shared closed forms of the linear-beta schedule: log alpha = -t^2 (b1-b0)/4 - t b0/2."""

    capabilities = frozenset({"extends_beyond_T"})

    def __init__(self, beta_min: float, beta_max: float, T: float, t_min: float):
        beta_min = _check_pos("beta_min", beta_min)
        beta_max = _check_pos("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"need beta_min <= beta_max; got beta_min={beta_min}, beta_max={beta_max}")
        super().__init__(T=T, t_min=t_min)
        self.beta_min, self.beta_max = beta_min, beta_max
        self._kwargs = {"beta_min": beta_min, "beta_max": beta_max, "T": T, "t_min": t_min}
        log_a = float(self.log_alpha(torch.tensor(self.T, dtype=torch.float64)))
        if log_a < -700.0:  # alpha(T) = exp(log_a) would underflow float64 to 0: lambda, x0 undefined at T
            raise ValueError(f"{type(self).__name__}: beta_min={beta_min}, beta_max={beta_max}, T={T} give alpha(T) = "
                             f"exp({log_a:.4g}), below float64's range; lower beta_max or T")

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def f(self, t):
        return -0.5 * self.beta(t)

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # Root of (b1-b0)/4 t^2 + b0/2 t + log_alpha = 0, rationalised (stable when b1 == b0).
        L = -2.0 * log_alpha  # = integral of beta from 0 to t
        b0, b1 = self.beta_min, self.beta_max
        return 2.0 * L / (torch.sqrt(b0**2 + 2.0 * (b1 - b0) * L) + b0)


class VPSDE(_BetaSchedule):
    """Variance-preserving SDE (DDPM in continuous time): dx = -beta(t) x/2 dt + sqrt(beta(t)) dw.

    ``beta(t) = beta_min + t (beta_max - beta_min)``, ``sigma(t)^2 = 1 - alpha(t)^2``; prior N(0, I).
    Defaults from Song et al. 2021 (t_min = 1e-3 as in their VP configs).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        super().__init__(beta_min, beta_max, T, t_min)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def g2(self, t):
        return self.beta(t)

    def lam(self, t):
        t = as_time(t)
        return self.log_alpha(t) - self.log_sigma(t)

    def inverse_lambda(self, lam):
        # alpha^2 = sigmoid(2 lam)  =>  log alpha = -softplus(-2 lam)/2  (Lu et al. 2022, App.).
        lam = as_time(lam)
        return self._t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2.0 * lam))

    def prior_std(self):
        return 1.0


class SubVPSDE(_BetaSchedule):
    """Sub-VP SDE (Song et al. 2021): alpha as VP, sigma(t) = 1 - alpha(t)^2 (no square root).

    ``g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta))``; prior N(0, I).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        super().__init__(beta_min, beta_max, T, t_min)

    def sigma(self, t):
        return -torch.expm1(2.0 * self.log_alpha(t))

    def log_sigma(self, t):
        return torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def g2(self, t):
        return self.beta(t) * -torch.expm1(4.0 * self.log_alpha(t))

    def lam(self, t):
        t = as_time(t)
        return self.log_alpha(t) - self.log_sigma(t)

    def inverse_lambda(self, lam):
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})).
        lam = as_time(lam)
        sp = torch.nn.functional.softplus
        log_alpha = math.log(2.0) + lam - sp(0.5 * sp(2.0 * lam + math.log(4.0)))
        return self._t_from_log_alpha(log_alpha)

    def prior_std(self):
        return 1.0


class VESDE(LinearSDE):
    """Variance-exploding SDE (SMLD/NCSN in continuous time): sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    alpha = 1, ``g(t)^2 = 2 sigma(t)^2 log(sigma_max/sigma_min)``; prior N(0, sigma_max^2 I).
    Defaults from Song et al. 2021 (t_min = 1e-5 as in their VE configs).
    """

    capabilities = frozenset({"extends_beyond_T"})

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, t_min: float = 1e-5):
        sigma_min, sigma_max = _check_sigma_range(sigma_min, sigma_max)
        super().__init__(T=T, t_min=t_min)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)
        self._kwargs = {"sigma_min": sigma_min, "sigma_max": sigma_max, "T": T, "t_min": t_min}

    def log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def log_sigma(self, t):
        return math.log(self.sigma_min) + as_time(t) / self.T * self._log_ratio

    def sigma(self, t):
        return torch.exp(self.log_sigma(t))

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2.0 * self.sigma(t) ** 2 * self._log_ratio / self.T

    def lam(self, t):
        return -self.log_sigma(t)

    def inverse_lambda(self, lam):
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio * self.T

    def prior_std(self):
        return self.sigma_max


class EDMSDE(LinearSDE):
    """The SDE of Karras et al. 2022 (EDM): sigma(t) = t, alpha = 1, g(t)^2 = 2t; t in [sigma_min, sigma_max].

    Prior N(0, sigma_max^2 I).
    """

    capabilities = frozenset({"extends_beyond_T"})

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        sigma_min, sigma_max = _check_sigma_range(sigma_min, sigma_max)
        super().__init__(T=sigma_max, t_min=sigma_min)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._kwargs = {"sigma_min": sigma_min, "sigma_max": sigma_max}

    def log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return as_time(t).clone()

    def log_sigma(self, t):
        return torch.log(as_time(t))

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2.0 * as_time(t)

    def lam(self, t):
        return -torch.log(as_time(t))

    def inverse_lambda(self, lam):
        return torch.exp(-as_time(lam))

    def prior_std(self):
        return self.sigma_max


#: the built-in SDEs by short name (aliases: the class names, used in checkpoints). Option types come
#: from the constructors' defaults; the constructors check ranges (sigma_min < sigma_max, ...).
SDES = Registry("SDE")
# sigma up to 1e8 keeps sigma^2 and x_T finite in float32 with room; the beta schedules are also bounded by alpha(T) > 0.
_BETAS = {"beta_min": Real(gt=0), "beta_max": Real(gt=0), "T": Real(gt=0), "t_min": Real(ge=0)}
_SIGMAS = {"sigma_min": Real(gt=0), "sigma_max": Real(gt=0, le=1e8)}
SDES.add("vp", VPSDE, aliases=("VPSDE",), params=_BETAS)
SDES.add("subvp", SubVPSDE, aliases=("SubVPSDE",), params=_BETAS)
SDES.add("ve", VESDE, aliases=("VESDE",), params={**_SIGMAS, "T": Real(gt=0), "t_min": Real(ge=0)})
SDES.add("edm", EDMSDE, aliases=("EDMSDE",), params=_SIGMAS)


def make_sde(name: str, **kwargs) -> LinearSDE:
    """A built-in SDE by short name (``vp``, ``subvp``, ``ve``, ``edm``) or class name, options checked."""
    return SDES.build(name, **kwargs)


def sde_from_config(cfg: dict) -> LinearSDE:
    """Rebuild a built-in SDE from ``{"class": name, "kwargs": {...}}`` (whitelisted names only)."""
    if not isinstance(cfg, dict) or "class" not in cfg:
        raise ValueError(f"an SDE config must be a dict with 'class' and 'kwargs'; got {cfg!r}")
    name = cfg["class"]
    if name not in SDES:
        raise ValueError(f"unknown SDE class {name!r}; accepted: {', '.join(SDES.names(aliases=True))}")
    kwargs = cfg.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"SDE config kwargs must be a dict; got {kwargs!r}")
    try:
        return make_sde(name, **kwargs)
    except TypeError as err:  # unknown or missing option: a config error
        raise ValueError(str(err)) from None
