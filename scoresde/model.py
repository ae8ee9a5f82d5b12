"""One score-model interface: any parameterisation in, score / eps / x0 / v out, from ONE call.

Conventions (x_t = alpha x_0 + sigma eps, for the SDE the model is wrapped with):

* ``score = -eps / sigma``
* ``x0 = (x - sigma eps) / alpha``
* ``v = (alpha eps - sigma x0) / r`` with ``r = sqrt(alpha^2 + sigma^2)`` (Salimans & Ho 2022 for
  VP, where r = 1; the normalisation keeps the definition scale-free for other SDEs)
* ``denoiser``: the network is EDM's ``D(x; sigma~)`` on the scaled input ``x / alpha`` with
  ``sigma~ = sigma / alpha``, returning x0 (Karras et al. 2022, Eq. 4 / Table 1)
* ``edm``: EDM's preconditioned raw network ``F``:
  ``x0 = c_skip x~ + c_out F(c_in x~, c_noise)`` with ``x~ = x / alpha``,
  ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd/sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``,
  ``c_noise = ln(s)/4`` (s = sigma~, sd = sigma_data).

This file is the only home of these conversions.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._utils import append_dims, as_time, batch_time, check_choice
from .registry import Bool, Real
from .sde import LinearSDE

__all__ = ["ScoreModel", "Prediction", "NonFiniteError", "PARAMETERIZATIONS", "NOISE_INPUTS", "as_model"]

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "denoiser", "edm")
NOISE_INPUTS = ("t", "sigma", "log_sigma", "lambda", "edm")


class NonFiniteError(FloatingPointError):
    """A model produced NaN or Inf. ``t`` and ``call`` say where."""

    def __init__(self, message: str, *, t: float | None = None, call: int | None = None):
        super().__init__(message)
        self.t = t
        self.call = call


@dataclass
class Prediction:
    """The output of one network call, viewable in every parameterisation.

    ``alpha`` and ``sigma`` are broadcast to x's rank and cast to x's dtype.
    """

    x: Tensor  # (B, *D)
    t: Tensor  # (B,) float64
    alpha: Tensor  # (B, 1, ...)
    sigma: Tensor  # (B, 1, ...)
    kind: str  # which of eps / x0 / score / v the network gave
    out: Tensor  # (B, *D) that quantity

    @property
    def eps(self) -> Tensor:
        if self.kind == "eps":
            return self.out
        if self.kind == "x0":
            return (self.x - self.alpha * self.out) / self.sigma
        if self.kind == "score":
            return -self.sigma * self.out
        r2 = self.alpha**2 + self.sigma**2  # v
        return (self.sigma * self.x + self.alpha * torch.sqrt(r2) * self.out) / r2

    @property
    def x0(self) -> Tensor:
        if self.kind == "x0":
            return self.out
        if self.kind == "v":
            r2 = self.alpha**2 + self.sigma**2
            return (self.alpha * self.x - self.sigma * torch.sqrt(r2) * self.out) / r2
        return (self.x - self.sigma * self.eps) / self.alpha

    @property
    def score(self) -> Tensor:
        if self.kind == "score":
            return self.out
        return -self.eps / self.sigma

    @property
    def v(self) -> Tensor:
        if self.kind == "v":
            return self.out
        r = torch.sqrt(self.alpha**2 + self.sigma**2)
        return (self.alpha * self.eps - self.sigma * self.x0) / r


def convert(x: Tensor, alpha: Tensor, sigma: Tensor, value: Tensor, src: str, dst: str) -> Tensor:
    """Convert ``value`` given in parameterisation ``src`` to ``dst`` (each of eps, x0, score, v)."""
    for name, v in (("src", src), ("dst", dst)):
        check_choice(name, v, ("eps", "x0", "score", "v"))
    return getattr(Prediction(x, alpha.new_zeros(()), alpha, sigma, src, value), dst)


class ScoreModel(nn.Module):
    """Wrap a network of any parameterisation into a model that gives score, eps, x0 and v.

    Args:
        net: ``net(x_in, c_noise, **cond) -> Tensor`` of x's shape; an ``nn.Module`` or any
            callable (a bare ``score_fn(x, t)`` is ``ScoreModel(score_fn, sde)``). An output with a
            ``.sample`` tensor (diffusers' ``UNet2DOutput``) or a tuple whose first item is the
            tensor is accepted too. For diffusers, k-diffusion, score_sde and EDM networks see
            :mod:`scoresde.adapters`, which also map their time inputs.
        sde: the linear SDE the network was trained for.
        parameterization: what the network outputs: one of ``score``, ``eps``, ``x0``, ``v``,
            ``denoiser`` (EDM's D(x; sigma) call convention) or ``edm`` (EDM-preconditioned F).
        noise_input: what the network receives as ``c_noise``: ``t`` (default), ``sigma``,
            ``log_sigma``, ``lambda``, or ``edm`` (ln(sigma~)/4). ``denoiser`` always receives
            sigma~ and ``edm`` always receives ln(sigma~)/4.
        sigma_data: EDM's data std (``edm`` only), default 0.5.
        check_finite: raise :class:`NonFiniteError` on NaN/Inf output (one sum of the output per
            call, and one host sync per call on GPU unless inside :meth:`deferred_finite_check`).

    Calling ``model(x, t, **cond)`` makes exactly one network call and returns a
    :class:`Prediction`; ``model.nfe`` counts calls (one per batch call).
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        sde: LinearSDE,
        parameterization: str = "score",
        *,
        noise_input: str = "t",
        sigma_data: float = 0.5,
        check_finite: bool = True,
    ):
        super().__init__()
        check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        check_choice("noise_input", noise_input, NOISE_INPUTS)
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a scoresde LinearSDE; got {type(sde).__name__}")
        if not callable(net):
            raise TypeError(f"net must be callable; got {type(net).__name__}")
        sigma_data = Real(gt=0).check("sigma_data", sigma_data, "ScoreModel")  # no strings, bools, NaN
        check_finite = Bool().check("check_finite", check_finite, "ScoreModel")
        self.net = net  # registered as a submodule when it is an nn.Module
        self.sde = sde
        self.parameterization = parameterization
        self.noise_input = noise_input
        self.sigma_data = float(sigma_data)
        self.check_finite = check_finite
        self.nfe = 0
        self._deferred: list | None = None
        self._grid_cache: dict = {}
        self._dtype_param: tuple | None = None

    def reset_nfe(self) -> None:
        self.nfe = 0

    def count(self, calls: int = 1) -> None:
        """Add network calls made outside :meth:`forward` (engines that call ``net`` themselves)."""
        self.__dict__["nfe"] += int(calls)

    def _c_noise(self, t: Tensor) -> Tensor:
        sde, mode = self.sde, self.noise_input
        if mode == "t":
            return t
        if mode == "sigma":
            return sde.sigma(t)
        if mode == "log_sigma":
            return sde.log_sigma(t)
        if mode == "lambda":
            return sde.lam(t)
        return 0.25 * torch.log(sde.sigma_tilde(t))  # edm

    def _time_terms(self, t: Tensor, ndim: int, x_dtype: torch.dtype, net_dtype: torch.dtype) -> dict[str, Tensor]:
        """The time-only quantities of a call at times t (M,), float64 arithmetic, cast once:
        alpha and sigma as (M, 1, ...) in x's dtype, c_noise (M,) in the network's dtype, and for
        ``edm`` c_in, c_skip, c_out (M, 1, ...) in x's dtype."""
        sde, p = self.sde, self.parameterization
        alpha64, sigma64 = sde.alpha(t), sde.sigma(t)
        terms = {"alpha": append_dims(alpha64, ndim).to(x_dtype), "sigma": append_dims(sigma64, ndim).to(x_dtype)}
        if p == "denoiser":
            terms["c_noise"] = (sigma64 / alpha64).to(net_dtype)  # sigma~
        elif p == "edm":
            s = sigma64 / alpha64  # sigma~, float64
            sd = self.sigma_data
            s_ = append_dims(s, ndim).to(x_dtype)
            terms["c_in"] = 1.0 / torch.sqrt(s_**2 + sd**2)
            terms["c_skip"] = sd**2 / (s_**2 + sd**2)
            terms["c_out"] = s_ * sd / torch.sqrt(s_**2 + sd**2)
            terms["c_noise"] = (0.25 * torch.log(s)).to(net_dtype)
        else:
            terms["c_noise"] = self._c_noise(t).to(net_dtype)
        return terms

    def _grid_terms(self, t: Any, x: Tensor, net_dtype: torch.dtype) -> dict[str, Tensor] | None:
        """Time terms for a scalar t that is an element of a 1-D float64 grid (``ts[i]``), from a
        per-grid cache: the float64 arithmetic and the casts run once per grid, not once per call.
        None when t is not such a view (or its grid cannot be tracked, e.g. an inference tensor)."""
        if not isinstance(t, Tensor) or t.ndim != 0 or t.dtype != torch.float64 or t.device != x.device:
            return None
        base = t._base
        if base is None or base.ndim != 1 or base.dtype != torch.float64 or not base.is_contiguous() or base.shape[0] > 100_000:
            return None
        try:
            version = base._version  # views share it: an in-place change of the grid invalidates the entry
        except RuntimeError:
            return None
        B = x.shape[0]
        key = (id(base), x.dtype, net_dtype, x.ndim, B)
        entry = self._grid_cache.get(key)
        if entry is None or entry[0] is not base or entry[1] != version:
            if len(self._grid_cache) >= 8:
                self._grid_cache.clear()
            terms = self._time_terms(base, x.ndim, x.dtype, net_dtype)
            # One dict of ready (B, ...) views per grid point.
            rows = [{k: v[i : i + 1].expand(B, *v.shape[1:]) for k, v in terms.items()} for i in range(base.shape[0])]
            entry = self._grid_cache[key] = (base, version, rows)  # holds the grid: its id cannot be reused
        row = entry[2][t.storage_offset() - base.storage_offset()]
        # c_noise is handed to the network: a fresh tensor, so that an in-place change of it cannot
        # reach the cache; the others stay views.
        return {**row, "c_noise": row["c_noise"].clone()}

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Prediction:
        """One network call at (x, t). x: (B, *D); t: (B,) or scalar, SDE time."""
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError(
                f"x must be a tensor of shape (B, *D) with a batch dim; got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        _check_real_input(x)
        net_dtype = self.net_dtype(x.dtype)
        terms = self._grid_terms(t, x, net_dtype)
        t = batch_time(t, x.shape[0], x.device)
        if terms is None:
            terms = self._time_terms(t, x.ndim, x.dtype, net_dtype)
        alpha, sigma, c_noise = terms["alpha"], terms["sigma"], terms["c_noise"]
        _check_denominators(self.parameterization, t, alpha, sigma)
        p = self.parameterization
        if p in ("denoiser", "edm"):
            x_in = x / alpha
            if p == "denoiser":
                out = _unwrap(self.net(x_in.to(net_dtype), c_noise, **cond))
            else:
                F = _unwrap(self.net((terms["c_in"] * x_in).to(net_dtype), c_noise, **cond))
                self._check_shape(F, x)
                out = terms["c_skip"] * x_in + terms["c_out"] * F.to(x.dtype)
            kind = "x0"
        else:
            out = _unwrap(self.net(x.to(net_dtype), c_noise, **cond))
            kind = p
        self._check_shape(out, x)
        out = out.to(x.dtype)
        self.count()  # past nn.Module.__setattr__, which costs more than the rest of this bookkeeping
        if self._deferred is not None:
            # No host sync: keep a device flag per call, inspected when the deferred block ends.
            self._deferred.append((self.nfe, torch.isfinite(out).all(), t))
        elif self.check_finite and not _all_finite(out):
            raise _non_finite(self.nfe, t.detach().min(), t.detach().max(), x)
        return Prediction(x=x, t=t, alpha=alpha, sigma=sigma, kind=kind, out=out)

    def net_dtype(self, default: torch.dtype) -> torch.dtype:
        """The dtype of the network's first floating-point parameter (``default`` for a plain function)."""
        where = self._dtype_param
        if where is None:
            where = self._dtype_param = _first_float_param(self.net)
        if not where:
            return default
        p = getattr(where[0], where[1], None)
        if not isinstance(p, Tensor):  # the module changed shape: look again
            self._dtype_param = None
            return self.net_dtype(default)
        return p.dtype

    def linear_io(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The call at times t (E,) float64 as linear maps, for engines that call the network themselves:
        ``out = net(k_in * u, c_noise)`` and ``x0 = a_u * u + a_out * out`` for a model input u.

        Returns float64 (E,) tensors ``(k_in, c_noise, a_u, a_out)``; the same formulas as
        :meth:`forward` and :class:`Prediction` (module docstring), rearranged.
        """
        t = as_time(t)
        sde, p = self.sde, self.parameterization
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        if p == "eps":  # x0 = (u - sigma eps) / alpha
            return one, self._c_noise(t), 1.0 / alpha, -sigma / alpha
        if p == "score":  # eps = -sigma score
            return one, self._c_noise(t), 1.0 / alpha, sigma**2 / alpha
        if p == "x0":
            return one, self._c_noise(t), zero, one
        if p == "v":  # x0 = (alpha u - sigma r v) / r^2
            r = torch.sqrt(alpha**2 + sigma**2)
            return one, self._c_noise(t), alpha / r**2, -sigma / r
        s = sigma / alpha
        if p == "denoiser":  # x0 = D(u / alpha; sigma~)
            return 1.0 / alpha, s, zero, one
        sd = self.sigma_data  # edm: x0 = c_skip u / alpha + c_out F(c_in u / alpha, ln(sigma~) / 4)
        c_in, c_skip, c_out = 1.0 / torch.sqrt(s**2 + sd**2), sd**2 / (s**2 + sd**2), s * sd / torch.sqrt(s**2 + sd**2)
        return c_in / alpha, 0.25 * torch.log(s), c_skip / alpha, c_out

    @contextlib.contextmanager
    def deferred_finite_check(self):
        """Check outputs for NaN/Inf without a host sync per call; raise at the end of the block.

        Used by samplers on GPU: the error still names the first bad evaluation and its t.
        """
        if self._deferred is not None or not self.check_finite:
            yield
            return
        self._deferred = []
        try:
            yield
            records = self._deferred
        finally:
            self._deferred = None
        if records:
            flags = torch.stack([r[1] for r in records]).cpu()
            if not bool(flags.all()):
                call, _, t = records[int(torch.nonzero(~flags)[0])]
                raise _non_finite(call, t.detach().min(), t.detach().max())

    @staticmethod
    def _check_shape(out: Any, x: Tensor) -> None:
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the network must return a tensor of x's shape {tuple(x.shape)} (or an object whose .sample is one, "
                f"e.g. diffusers' UNet2DOutput, or a tuple whose first item is one); got {got}"
            )
        if not out.is_floating_point():  # complex or integer: never cast silently (a complex part would be dropped)
            raise ValueError(f"the network must return real floating-point values; it returned dtype {out.dtype}")

    def score(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Convenience: the score at (x, t) (one network call)."""
        return self(x, t, **cond).score

    def config(self) -> dict:
        return {
            "parameterization": self.parameterization,
            "noise_input": self.noise_input,
            "sigma_data": self.sigma_data,
        }


def _unwrap(out: Any) -> Any:
    """The tensor of a network's output: the output itself, its ``.sample`` (diffusers' ``UNet2DOutput``
    and friends), or the first item of a tuple/list (``return_dict=False``). Anything else is left
    for :meth:`ScoreModel._check_shape` to refuse with the accepted forms named."""
    if isinstance(out, Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return out


def _check_real_input(x: Tensor) -> None:
    """x is a real floating-point state (an integer x gave NaN in the conversions; a complex one lost its
    imaginary part at the network boundary)."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a real floating-point tensor; got dtype {x.dtype} (cast it, e.g. x.float())")


def _check_denominators(p: str, t: Tensor, alpha: Tensor, sigma: Tensor) -> None:
    """Every parameterisation but ``score`` divides by sigma(t) or alpha(t) (eps -> score = -eps / sigma,
    x0 = (x - sigma eps) / alpha; denoiser / edm scale x by 1/alpha and take log sigma): where either is 0 the
    model is undefined, which is an error naming t, not an Inf. Checked on the CPU only, where it costs no
    host synchronisation; on other devices the division runs and sample() reports the non-finite samples."""
    if p == "score" or t.device.type != "cpu":
        return
    bad = ((sigma == 0) | (alpha == 0)).reshape(sigma.shape[0], -1).any(1)  # (B,): alpha, sigma may be (B, 1, ...)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        which = "sigma(t) = 0" if float(sigma.reshape(sigma.shape[0], -1)[i, 0]) == 0 else "alpha(t) = 0"
        raise ValueError(
            f"a model with parameterization={p!r} is undefined at t={float(t[i]):.6g}, where {which} (its conversions "
            "divide by sigma and alpha); evaluate it at times with sigma(t) > 0 and alpha(t) > 0 (e.g. t >= sde.t_min), "
            "or wrap a score model (parameterization='score')")


def _non_finite(call: int, tmin: Tensor, tmax: Tensor, x: Tensor | None = None) -> NonFiniteError:
    lo, hi = float(tmin), float(tmax)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # a solver whose step control broke down: not the model
        return NonFiniteError(f"network evaluation #{call} was asked for at t = {hi} (not a time): the solver's step "
                              "control broke down after an earlier step diverged; the model is not what failed", call=call)
    if x is not None and not bool(torch.isfinite(x).all()):  # the caller's state, not the model, went bad first
        return NonFiniteError(f"the model's input x was already NaN or Inf at network evaluation #{call} (t in "
                              f"[{lo:.6g}, {hi:.6g}]): the sampler's or solver's state diverged before this call", t=hi,
                              call=call)
    return NonFiniteError(
        f"the model returned NaN or Inf at network evaluation #{call} (t in [{lo:.6g}, {hi:.6g}])", t=hi, call=call
    )


def _first_float_param(net: Any) -> tuple:
    """(module, name) of the network's first floating-point parameter; () when it has none."""
    if isinstance(net, nn.Module):
        for mod in net.modules():
            for name, p in mod.named_parameters(recurse=False):
                if p.is_floating_point():
                    return (mod, name)
    return ()


def _all_finite(out: Tensor) -> bool:
    """Whether out has no NaN or Inf: one sum (NaN and Inf propagate through it) and, only when the
    sum is not finite (a NaN, an Inf, or finite values that overflow the sum), the exact check."""
    if math.isfinite(float(out.detach().sum())):
        return True
    return bool(torch.isfinite(out).all())


def as_model(model: Any, sde: LinearSDE) -> ScoreModel:
    """Lift a plain ``score_fn(x, t)`` to a :class:`ScoreModel`; pass a ScoreModel through.

    A ScoreModel built for a different SDE object is accepted if its config matches (the
    conversions depend on alpha and sigma); otherwise it is an error.
    """
    if isinstance(model, ScoreModel):
        if model.sde is not sde and _sde_key(model.sde) != _sde_key(sde):
            raise ValueError(
                f"the ScoreModel was built for {model.sde!r} but sampling uses {sde!r}; "
                "wrap the network with the SDE you sample with"
            )
        return model
    if callable(model):
        return ScoreModel(model, sde, "score")
    raise TypeError(f"model must be a ScoreModel or a callable score_fn(x, t); got {type(model).__name__}")


def _sde_key(sde: LinearSDE):
    try:
        return repr(sde.config())
    except Exception:  # user-defined SDE: identity only
        return id(sde)
