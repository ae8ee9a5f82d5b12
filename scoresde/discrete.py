"""A linear SDE from a discrete DDPM schedule: ``alphas_cumprod`` (Ho et al. 2020) in continuous time.

A discrete-time model (a diffusers ``UNet2DModel`` trained with a DDPM scheduler, score_sde's
discrete DDPM models) was trained on ``N`` noise levels only,
``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` for the integer timesteps ``k = 0 .. N-1``.
:class:`DiscreteVPSDE` is the variance-preserving linear SDE that passes through exactly those
levels and interpolates between them:

* **time**: ``t = k / (N - 1)``, so ``t`` runs over [0, 1] with timestep 0 at ``t = 0`` and
  timestep ``N - 1`` at ``T = 1`` (score_sde's ``labels = t * (N - 1)``). ``t_min`` defaults to 0:
  the table's first level (``sigma = sqrt(beta_0)``, not 0).
* **interpolation**: the half log-SNR ``lam = log(alpha / sigma) = logit(abar) / 2`` is linear in
  ``t`` between table points (k-diffusion's ``DiscreteSchedule`` interpolates ``log sigma~ = -lam``
  the same way), continued linearly by the end segments outside [0, 1]. Variance preserving:
  ``alpha^2 = sigmoid(2 lam)``, ``sigma^2 = sigmoid(-2 lam)``, so ``alpha(t_k)^2 = abar_k``.
* **derivatives** (closed form, consistent with that interpolation): with the segment slope
  ``lam'(t)``, ``f = d log alpha / dt = lam' sigma^2`` and ``g^2 = d sigma^2/dt - 2 f sigma^2 = -2 lam' sigma^2``
  (so ``g^2 = -2 f``, as for every VP SDE). ``lam'`` is piecewise constant; at a table point the
  segment below it (towards smaller t, where reverse-time samplers step) is used, at ``t = 0``
  the first segment. The kinks cost adaptive ODE solvers (``ode``, ``ode_scipy``) many steps;
  docs/byo-model.md measures it. The exponential integrators and EDM-style samplers use alpha,
  sigma and lambda only.
* **inverse_lambda** is closed form: find the segment, solve the linear equation.

Networks that accept only integer timesteps are a matter for the adapter
(``scoresde.adapters.from_diffusers(..., timesteps=...)``): feed the interpolated timestep,
round it, or run only on grids made of table points (:meth:`DiscreteVPSDE.grid`,
:meth:`DiscreteVPSDE.snap`); docs/byo-model.md measures what each choice costs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ._utils import as_time, check_choice
from .registry import Choice, Int, Maybe, Real
from .sde import SDES, LinearSDE

__all__ = ["DiscreteVPSDE", "make_betas", "BETA_SCHEDULES", "SPACINGS"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
CONVENTIONS = ("ddim", "multistep")


def _softplus(z: Tensor) -> Tensor:
    """log(1 + e^z) to full float64 precision (torch's softplus switches to z above 20: error e^-20 ~ 2e-9)."""
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    max_beta: float = 0.999,
) -> Tensor:
    """The betas of a named DDPM schedule, float64, shape (N,).

    * ``linear``: ``linspace(beta_start, beta_end, N)`` (Ho et al. 2020; defaults 1e-4, 0.02);
    * ``scaled_linear``: ``linspace(sqrt(beta_start), sqrt(beta_end), N)^2`` (Rombach et al. 2022,
      latent diffusion; Stable Diffusion uses 0.00085, 0.012);
    * ``squaredcos_cap_v2``: the cosine schedule of Nichol & Dhariwal 2021, Eq. 17, with s = 0.008:
      ``abar(u) = cos((u + s)/(1 + s) pi/2)^2``, ``beta_k = min(1 - abar((k+1)/N) / abar(k/N), max_beta)``
      (``beta_start`` / ``beta_end`` unused).

    The names are diffusers' ``beta_schedule`` values. diffusers computes these in float32, so its
    ``scheduler.alphas_cumprod`` differs from the float64 values here by float32 round-off (relative
    ~1e-6, measured in docs/byo-model.md); to reproduce a scheduler's own table, build the SDE from it.
    """
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if isinstance(num_train_timesteps, bool) or int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2; got {num_train_timesteps!r}")
    n = int(num_train_timesteps)
    if beta_schedule == "squaredcos_cap_v2":
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1); got {max_beta}")
        u = torch.arange(n + 1, dtype=torch.float64) / n
        abar = torch.cos((u + 0.008) / 1.008 * (math.pi / 2)) ** 2
        return (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 < v < 1.0):
            raise ValueError(f"{name} must be a number in (0, 1); got {v!r}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64) ** 2


class DiscreteVPSDE(LinearSDE):
    """The VP SDE through a DDPM table ``alphas_cumprod`` (log-SNR linear between table points).

    Give exactly one of:

    * ``alphas_cumprod``: the table ``abar_k``, k = 0 .. N-1 (e.g. ``scheduler.alphas_cumprod``),
      strictly decreasing in (0, 1);
    * ``betas``: ``abar = cumprod(1 - betas)`` (diffusers' ``trained_betas``);
    * ``beta_schedule`` with ``num_train_timesteps``, ``beta_start``, ``beta_end``: a named schedule
      (:func:`make_betas`).

    Time: ``t = timestep / (N - 1)`` in [0, 1]; ``alpha(t_k)^2 = abar_k`` exactly at every table
    point. ``t_min`` (default 0, the first table point) is the smallest time used for sampling.
    See the module docstring for the interpolation and its derivatives.
    """

    def __init__(
        self,
        alphas_cumprod: Sequence[float] | Tensor | None = None,
        *,
        betas: Sequence[float] | Tensor | None = None,
        beta_schedule: str | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        t_min: float = 0.0,
    ):
        given = [n for n, v in (("alphas_cumprod", alphas_cumprod), ("betas", betas), ("beta_schedule", beta_schedule))
                 if v is not None]
        if len(given) != 1:
            raise ValueError(
                "DiscreteVPSDE needs exactly one of alphas_cumprod=, betas= or beta_schedule=; "
                f"got {', '.join(given) if given else 'none'}"
            )
        if beta_schedule is not None:
            betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
            kwargs: dict[str, Any] = {"beta_schedule": beta_schedule, "num_train_timesteps": int(num_train_timesteps),
                                      "beta_start": float(beta_start), "beta_end": float(beta_end)}
        if betas is not None:
            b = _table("betas", betas)
            if not bool(((b > 0) & (b < 1)).all()):
                i = int(torch.nonzero(~((b > 0) & (b < 1)))[0])
                raise ValueError(f"betas must lie in (0, 1); betas[{i}] = {float(b[i])!r}")
            ac = torch.cumprod(1.0 - b, 0)
            if beta_schedule is None:
                kwargs = {"betas": b.tolist()}
        else:
            ac = _table("alphas_cumprod", alphas_cumprod)
            kwargs = {"alphas_cumprod": ac.tolist()}
        bad = ~((ac > 0) & (ac < 1))
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            hint = (" (a zero-terminal-SNR schedule has abar = 0 at the last step: lambda = -inf there; clip it, "
                    "e.g. to 2**-24 as diffusers' schedulers do)") if float(ac[i]) <= 0 else ""
            raise ValueError(f"alphas_cumprod must lie strictly in (0, 1); alphas_cumprod[{i}] = {float(ac[i])!r}{hint}")
        d = ac[1:] - ac[:-1]
        if bool((d >= 0).any()):
            i = int(torch.nonzero(d >= 0)[0])
            raise ValueError(
                f"alphas_cumprod must be strictly decreasing; alphas_cumprod[{i}] = {float(ac[i])!r}, "
                f"alphas_cumprod[{i + 1}] = {float(ac[i + 1])!r}"
            )
        super().__init__(T=1.0, t_min=t_min)
        self.alphas_cumprod = ac  # (N,) float64, CPU
        self.num_train_timesteps = int(ac.numel())
        # lam_k = log(alpha/sigma) = (log abar - log(1 - abar)) / 2, float64
        self._lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))
        self._on: dict[torch.device, Tensor] = {}
        self._kwargs = {**kwargs, "t_min": float(t_min)}

    # ------------------------------------------------------------------ the table and time mapping
    def _lam_table(self, device: torch.device) -> Tensor:
        if device not in self._on:
            self._on[device] = self._lam.to(device)
        return self._on[device]

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(lam_k, lam_{k+1}, w, slope): t = (k + w)/(N - 1), k in [0, N-2], w in (0, 1] inside [0, 1].

        A table point belongs to the segment below it (timestep 0 to the first segment), so a
        sampler step that starts at a table point and goes down in t uses that segment's slope.
        Outside [0, 1], w leaves [0, 1] and the end segments extrapolate.
        """
        t = as_time(t)
        lam = self._lam_table(t.device)
        n1 = self.num_train_timesteps - 1
        u = t * n1
        k = (torch.ceil(u) - 1).clamp(0, n1 - 1).long()  # the segment below a knot: samplers step down in t
        lo, hi = lam[k], lam[k + 1]
        return lo, hi, u - k, (hi - lo) * n1

    def timestep(self, t: Tensor | float) -> Tensor:
        """The (fractional) training timestep of time t: ``t (N - 1)``, float64."""
        return as_time(t) * (self.num_train_timesteps - 1)

    def t_from_timestep(self, timestep: Tensor | float | Sequence[int]) -> Tensor:
        """The time of a training timestep: ``timestep / (N - 1)``, float64."""
        return as_time(timestep) / (self.num_train_timesteps - 1)

    # ------------------------------------------------------------------ schedules and closed forms
    def lam(self, t):
        lo, hi, w, _ = self._segment(t)
        return torch.lerp(lo, hi, w)  # exact at both ends of a segment

    def log_alpha(self, t):
        return -0.5 * _softplus(-2.0 * self.lam(t))

    def log_sigma(self, t):
        return -0.5 * _softplus(2.0 * self.lam(t))

    def sigma(self, t):
        return torch.exp(self.log_sigma(t))

    def f(self, t):
        _, _, _, slope = self._segment(t)
        return slope * torch.sigmoid(-2.0 * self.lam(t))  # lam' sigma^2

    def g2(self, t):
        _, _, _, slope = self._segment(t)
        return -2.0 * slope * torch.sigmoid(-2.0 * self.lam(t))  # -2 lam' sigma^2

    def inverse_lambda(self, lam):
        """Closed form: the segment with lam_k >= lam >= lam_{k+1}, then linear (extrapolated outside)."""
        lam = as_time(lam)
        table = self._lam_table(lam.device)
        n1 = self.num_train_timesteps - 1
        idx = torch.searchsorted(-table, (-lam).contiguous())  # first k with lam_k <= lam
        k = (idx - 1).clamp(0, n1 - 1)
        lo, hi = table[k], table[k + 1]
        return (k + (lam - lo) / (hi - lo)) / n1

    def prior_std(self):
        return 1.0

    # ------------------------------------------------------------------ grids on the table's points
    def timesteps(self, steps: int, spacing: str = "leading", steps_offset: int = 0, *,
                  convention: str = "ddim") -> Tensor:
        """The integer timesteps of diffusers' ``set_timesteps(steps)`` (int64, decreasing).

        ``convention="ddim"`` (``DDIMScheduler``, the default):

        * ``leading``: ``arange(steps) * (N // steps) + steps_offset``, reversed (DDIM's default);
        * ``trailing``: ``round(arange(N, 0, -N / steps)) - 1`` (Lin et al. 2024, Table 2);
        * ``linspace``: ``round(linspace(0, N - 1, steps))``, reversed.

        ``convention="multistep"`` (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``):
        ``leading`` and ``linspace`` are made with ``steps + 1`` points and the last (timestep 0) is
        dropped; ``trailing`` is as above. At ``steps`` near N, ``linspace`` then repeats timesteps
        (999 of 1000 distinct at N = 1000): :meth:`grid` refuses the zero-length steps.

        Pass the result to :meth:`grid` for ``sample(..., schedule=...)``.
        """
        check_choice("spacing", spacing, SPACINGS)
        check_choice("convention", convention, CONVENTIONS)
        n = self.num_train_timesteps
        if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= n:
            raise ValueError(f"steps must be an integer in [1, {n}] (the table has {n} timesteps); got {steps!r}")
        steps = int(steps)
        extra = 1 if convention == "multistep" and spacing != "trailing" else 0
        m = steps + extra
        if spacing == "leading":
            ks = (torch.arange(m, dtype=torch.int64) * (n // m)).flip(0) + int(steps_offset)
        elif spacing == "trailing":
            ks = torch.round(torch.arange(n, 0, -n / steps, dtype=torch.float64)).long() - 1
        else:
            ks = torch.round(torch.linspace(0, n - 1, m, dtype=torch.float64)).long().flip(0)
        return ks[:-1] if extra else ks

    def grid(self, timesteps: Sequence[int] | Tensor) -> Tensor:
        """The times of the given integer timesteps: a float64 grid for ``sample(..., schedule=grid)``.

        The timesteps must be integers in [0, N - 1], strictly decreasing (a repeated timestep, as
        diffusers' multistep schedulers produce at ``steps = N``, is a zero-length step: refused, with
        the positions named). The last grid time must not be below ``t_min``.
        """
        ks = torch.as_tensor(timesteps)
        if ks.ndim != 1 or ks.numel() < 2:
            raise ValueError(f"timesteps must be a 1-D sequence of at least 2 integers; got shape {tuple(ks.shape)}")
        kf = ks.to(torch.float64)
        if not bool((kf == torch.round(kf)).all()):
            i = int(torch.nonzero(kf != torch.round(kf))[0])
            raise ValueError(f"timesteps must be integers (table points); timesteps[{i}] = {float(kf[i])!r}; "
                             "for fractional timesteps use sde.t_from_timestep")
        n = self.num_train_timesteps
        if float(kf.min()) < 0 or float(kf.max()) > n - 1:
            raise ValueError(f"timesteps must lie in [0, {n - 1}]; got values in [{int(kf.min())}, {int(kf.max())}]")
        d = kf[1:] - kf[:-1]
        if bool((d >= 0).any()):
            i = int(torch.nonzero(d >= 0)[0])
            hint = " (a repeated timestep is a zero-length step; drop the repeats)" if kf[i] == kf[i + 1] else ""
            raise ValueError(
                f"timesteps must be strictly decreasing; timesteps[{i}] = {int(kf[i])}, "
                f"timesteps[{i + 1}] = {int(kf[i + 1])}{hint}"
            )
        return self.t_from_timestep(kf)

    def snap(self, ts: Tensor | Sequence[float]) -> Tensor:
        """Restrict a grid to table points: each time rounded to the nearest timestep, repeats dropped.

        This is the "restrict the grid" choice for networks that take integer timesteps only: the
        network then sees only the levels it was trained on, and the sampler steps between them.
        """
        ks = torch.round(self.timestep(as_time(ts).flatten().cpu())).clamp(0, self.num_train_timesteps - 1)
        keep = torch.ones_like(ks, dtype=torch.bool)
        keep[1:] = ks[1:] != ks[:-1]
        ks = ks[keep]
        if ks.numel() < 2:
            raise ValueError(f"the grid snaps to fewer than 2 distinct timesteps ({ks.tolist()}); use more steps")
        return self.grid(ks)

    def __repr__(self) -> str:
        if "beta_schedule" in self._kwargs:
            kw = ", ".join(f"{k}={v!r}" for k, v in self._kwargs.items())
        else:
            kw = f"N={self.num_train_timesteps}, abar[0]={float(self.alphas_cumprod[0]):.6g}, " \
                 f"abar[-1]={float(self.alphas_cumprod[-1]):.6g}, t_min={self.t_min}"
        return f"DiscreteVPSDE({kw})"


def _table(name: str, values: Any) -> Tensor:
    if isinstance(values, Tensor):
        v = values.detach().to("cpu", torch.float64).flatten()
    else:  # lists of Python floats: straight to float64 (torch's default would round them to float32)
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        raise ValueError(f"{name} must have at least 2 entries; got {v.numel()}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return v


# Rebuildable from its config (checkpoints) and by name: one more entry of the SDE registry.
SDES.add("discrete_vp", DiscreteVPSDE, aliases=("DiscreteVPSDE",),
         params={"beta_schedule": Maybe(Choice(*BETA_SCHEDULES)), "num_train_timesteps": Int(ge=2, le=10**6),
                 "beta_start": Real(gt=0, lt=1), "beta_end": Real(gt=0, lt=1), "t_min": Real(ge=0, lt=1)})
