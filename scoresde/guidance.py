"""Conditional and controllable generation: guidance and inverse problems as model wrappers.

A guidance method is an object with the front door's contract (:class:`Guidance`):

* ``wrap(model, sde) -> ScoreModel``, called once before sampling: a ScoreModel in, a
  ScoreModel out, so every sampler runs unchanged and counts NFE through the wrapper;
* ``needs_projection`` / ``project(x, t, i)``: called on x_T (``i = -1``, ``t = ts[0]``) and
  after every step i with the state at ``t = ts[i + 1]``; returns the state to continue from;
* ``finish(x)``: called after the final denoising step;
* ``needs_grad``: sampling must run with autograd enabled (classifier guidance, DPS); otherwise
  the front door samples under ``torch.no_grad()``.

Methods here:

* :class:`ClassifierFreeGuidance` (Ho & Salimans 2022): ``(1 + w) D(x | y) - w D(x | null)``
  in the network's own parameterisation (the same as on the score: the combination is affine
  with weights summing to 1), with the guidance interval of Kynkaanniemi et al. 2024 and the
  rescale of Lin et al. 2024 (Sec. 3.4, Alg. 2) as options;
* :class:`ClassifierGuidance` (Dhariwal & Nichol 2021; Song et al. 2021, Eq. 14):
  ``score(x) + scale * grad_x log p(y | x_t, t)`` from any differentiable classifier;
* :class:`Replacement` (Song et al. 2021, App. I.2): imputation / inpainting and colourisation by
  replacing the observed part of the state with a fresh noisy copy of the observation after
  every step (:func:`inpainting`, :func:`colorization`); a known approximation, not the exact
  conditional (measured in tests/test_guidance.py and docs/guidance.md);
* :class:`DPS` (Chung et al. 2023): ``score(x) + scale * grad_x log N(y; A x0(x_t), s^2 I)``,
  backpropagating through the network.

The exact answers they are tested against live in :mod:`scoresde.exact`
(:class:`~scoresde.exact.ClassConditionalMixture`, ``GaussianMixture.condition_linear``).

NFE convention: ``nfe`` counts network evaluations *per sample*, so a guided evaluation costs 2
NFE whether the conditional and unconditional halves go through one doubled batch (the default)
or two calls; ``calls`` counts the forward passes actually launched (1 per doubled batch). A
backward pass (classifier guidance, DPS) is reported separately (``grad_calls``), not as NFE.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ._utils import append_dims, batch_time, check_choice
from .model import Prediction, ScoreModel, as_model, convert
from .random import PerSampleNoise, make_seeds
from .sde import LinearSDE

__all__ = [
    "Guidance",
    "GuidedModel",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "Replacement",
    "DPS",
    "Observation",
    "Mask",
    "Matrix",
    "Grayscale",
    "inpainting",
    "colorization",
    "null_label_of",
]


# ---------------------------------------------------------------------------------- contract
class Guidance:
    """The front door's guidance contract, with do-nothing defaults.

    ``sample(model, sde, shape, sampler, steps, guidance=G)`` calls ``G.wrap(model, sde)`` once,
    samples with the returned model, calls ``G.project(x, t, i)`` on x_T (``i = -1``) and after
    every step when ``G.needs_projection``, and ``G.finish(x)`` after the final denoising step.
    ``needs_grad`` asks for autograd during sampling (otherwise it runs under ``torch.no_grad()``).
    """

    needs_projection: bool = False
    needs_grad: bool = False

    def wrap(self, model: ScoreModel, sde: LinearSDE) -> ScoreModel:
        return model

    def project(self, x: Tensor, t: Tensor, i: int) -> Tensor:
        return x

    def finish(self, x: Tensor) -> Tensor:
        return x


class GuidedModel(ScoreModel):
    """A ScoreModel that wraps another one (``inner``); subclasses define ``forward``.

    ``nfe`` counts network evaluations per sample (the front door reports it), ``calls`` the
    forward passes of ``inner`` actually made and ``grad_calls`` backward passes.
    """

    def __init__(self, inner: ScoreModel):
        super().__init__(inner, inner.sde, inner.parameterization, noise_input=inner.noise_input,
                         sigma_data=inner.sigma_data, check_finite=inner.check_finite)
        self.calls = 0
        self.grad_calls = 0

    @property
    def inner(self) -> ScoreModel:
        return self.net

    def reset_nfe(self) -> None:
        self.nfe = self.calls = self.grad_calls = 0

    def deferred_finite_check(self):
        return self.inner.deferred_finite_check()

    def stats(self) -> dict[str, int]:
        """Counters since construction (or the last ``reset_nfe``)."""
        return {"nfe": self.nfe, "calls": self.calls, "grad_calls": self.grad_calls}

    def _prediction(self, x: Tensor, t: Tensor, kind: str, out: Tensor) -> Prediction:
        alpha = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
        sigma = append_dims(self.sde.sigma(t), x.ndim).to(x.dtype)
        return Prediction(x=x, t=t, alpha=alpha, sigma=sigma, kind=kind, out=out.to(x.dtype))


def _check_number(name: str, v: Any, *, low: float | None = None, what: str = "a finite number") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (low is not None and v < low):
        raise ValueError(f"{name} must be {what}; got {v!r}")
    return float(v)


def _no_inference_mode(who: str) -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who} needs autograd, but it was called under torch.inference_mode(); sample with autograd "
            "enabled (the guidance object says so with needs_grad=True)"
        )


# ---------------------------------------------------------------------------------- CFG
def null_label_of(model: ScoreModel) -> int:
    """The label a class-conditional network reads as "no label" (its ``num_classes``).

    Finds ``net.num_classes`` (exact models) or ``net.label.num_classes`` (scoresde networks built
    with ``num_classes``), looking through ``.module`` / ``._orig_mod`` wrappers (DDP, compile).
    Raises a ValueError for an unconditional network.
    """
    net: Any = model.net if isinstance(model, ScoreModel) else model
    for _ in range(4):
        if isinstance(net, ScoreModel):
            net = net.net
            continue
        n = getattr(net, "num_classes", None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
        label = getattr(net, "label", "missing")
        if label is None:
            raise ValueError(
                f"guidance needs a class-conditional model, but this {type(net).__name__} is unconditional "
                "(num_classes=None, no label embedding); train one with num_classes=C and label dropout"
            )
        if label != "missing" and isinstance(getattr(label, "num_classes", None), int):
            return int(label.num_classes)
        inner = getattr(net, "module", None) or getattr(net, "_orig_mod", None)
        if inner is None:
            break
        net = inner
    raise ValueError(
        f"cannot find the null label of the network {type(net).__name__} (no num_classes attribute); pass "
        "null_label= (the label the network was trained to read as 'no condition')"
    )


class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): ``(1 + w) D(x | y) - w D(x | null)``.

    The condition comes from the call's ``cond`` (``sample(..., cond={"y": labels})``); the
    unconditional half replaces ``cond[key]`` by the null label (``num_classes`` of the network,
    found by :func:`null_label_of`, or ``null_label=``). w = 0 is the conditional model (one call),
    w = -1 the unconditional one; rows whose label is already the null label get the
    unconditional output.

    Args:
        w: guidance weight (finite).
        key: the name of the label in ``cond``.
        null_label: the "no label" index (default: read from the network).
        batched: one forward pass on the doubled batch ``[cond, uncond]`` (default) or two calls.
            Either way a guided evaluation counts 2 NFE (``calls`` counts forward passes).
        interval: ``(sigma_lo, sigma_hi)``: guide only where ``sigma_lo < sigma~ <= sigma_hi``,
            ``sigma~ = sigma(t) / alpha(t)`` (EDM's noise level), Kynkaanniemi et al. 2024
            (Sec. 3); elsewhere the conditional model alone (1 NFE). Default: always.
        rescale: phi of Lin et al. 2024 (Sec. 3.4, Alg. 2): ``x_final = phi x_cfg std(x_cond) /
            std(x_cfg) + (1 - phi) x_cfg``, std over each sample's elements; 0 (default) = off.
        rescale_space: the prediction it is applied to: ``None`` (default) = the network's own
            output, as in Lin et al.'s Alg. 2 (their v-prediction network) and diffusers;
            or ``eps``, ``x0``, ``v``, ``score``. Rescaling is not affine, so the space matters.
    """

    def __init__(self, w: float, *, key: str = "y", null_label: int | None = None, batched: bool = True,
                 interval: Sequence[float] | None = None, rescale: float = 0.0, rescale_space: str | None = None):
        self.w = _check_number("w (the guidance weight)", w)
        if not isinstance(key, str):
            raise TypeError(f"key must be a str (the name of the label in cond); got {type(key).__name__}")
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0):
            raise ValueError(f"null_label must be a non-negative int or None; got {null_label!r}")
        if not isinstance(batched, bool):
            raise TypeError(f"batched must be True or False; got {batched!r}")
        if interval is not None:
            try:
                lo, hi = (float(v) for v in interval)
            except (TypeError, ValueError):
                raise ValueError(f"interval must be a pair (sigma_lo, sigma_hi) of numbers; got {interval!r}") from None
            if not (0.0 <= lo < hi) or math.isnan(hi):
                raise ValueError(f"interval must satisfy 0 <= sigma_lo < sigma_hi (sigma_hi may be inf); got {interval!r}")
            interval = (lo, hi)
        self.rescale = _check_number("rescale (phi)", rescale, low=0.0, what="a number in [0, 1]")
        if self.rescale > 1:
            raise ValueError(f"rescale (phi) must be a number in [0, 1]; got {rescale!r}")
        if rescale_space is not None:
            check_choice("rescale_space", rescale_space, ("eps", "x0", "v", "score"))
        self.key, self.null_label, self.batched = key, null_label, batched
        self.interval, self.rescale_space = interval, rescale_space

    def wrap(self, model: ScoreModel, sde: LinearSDE) -> "CFGModel":
        model = as_model(model, sde)
        null = self.null_label if self.null_label is not None else null_label_of(model)
        return CFGModel(model, self, null)


class CFGModel(GuidedModel):
    """The classifier-free guided model made by :meth:`ClassifierFreeGuidance.wrap`."""

    def __init__(self, inner: ScoreModel, g: ClassifierFreeGuidance, null_label: int):
        super().__init__(inner)
        self.g, self.null_label = g, int(null_label)
        self._checked: Tensor | None = None

    def _labels(self, cond: dict, B: int, device) -> Tensor:
        key = self.g.key
        if key not in cond or cond[key] is None:
            raise ValueError(
                f"classifier-free guidance needs the condition cond[{key!r}] (labels in [0, {self.null_label})); "
                f"pass cond={{{key!r}: labels}} to sample()"
            )
        y = cond[key]
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((B,), y, dtype=torch.long, device=device)
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"cond[{key!r}] must be an int or an integer tensor of shape ({B},); got {y!r}")
        if y.ndim == 0:
            y = y.expand(B)
        if y.shape != (B,):
            raise ValueError(f"cond[{key!r}] must have shape ({B},) (one label per sample); got {tuple(y.shape)}")
        if y is not self._checked:  # validated once per labels tensor (a host sync)
            bad = (y < 0) | (y > self.null_label)
            if bool(bad.any()):
                raise ValueError(
                    f"cond[{key!r}] holds labels {y[bad][:5].tolist()} out of range: classes are 0..{self.null_label - 1} "
                    f"and {self.null_label} is the null label"
                )
            self._checked = y
        return y

    def _weights(self, t: Tensor) -> Tensor:
        w = torch.full_like(t, self.g.w)
        if self.g.interval is not None:
            lo, hi = self.g.interval
            st = self.sde.sigma_tilde(t)
            w = torch.where((st > lo) & (st <= hi), w, torch.zeros_like(w))
        return w

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Prediction:
        B = x.shape[0]
        t = batch_time(t, B, x.device)
        y = self._labels(cond, B, x.device)
        w = self._weights(t)
        if self.g.w == 0 or (self.g.interval is not None and not bool((w != 0).any())):
            # Conditional model alone: one evaluation.
            self.nfe += 1
            self.calls += 1
            return self.inner(x, t, **cond)
        y_null = torch.full_like(y, self.null_label)
        if self.g.batched:
            # One forward pass on [cond, uncond] (2 evaluations per sample).
            cond2 = {k: _double(v, B) for k, v in cond.items()}
            cond2[self.g.key] = torch.cat([y, y_null])
            pred = self.inner(torch.cat([x, x]), torch.cat([t, t]), **cond2)
            out_c, out_u = pred.out[:B], pred.out[B:]
            self.calls += 1
        else:
            pred = self.inner(x, t, **cond)
            out_c = pred.out
            out_u = self.inner(x, t, **{**cond, self.g.key: y_null}).out
            self.calls += 2
        self.nfe += 2
        kind = pred.kind
        # Guided prediction: affine in the output with weights (1 + w, -w), so any parameterisation agrees.
        wd = append_dims(w, x.ndim).to(x.dtype)
        out = out_c + wd * (out_c - out_u)
        if self.g.rescale > 0:
            kind, out = self._rescale(x, t, kind, out_c, out)
        return self._prediction(x, t, kind, out)

    def _rescale(self, x: Tensor, t: Tensor, kind: str, out_c: Tensor, out: Tensor) -> tuple[str, Tensor]:
        """Lin et al. 2024, Alg. 2: match the guided prediction's per-sample std to the conditional one's."""
        space = self.g.rescale_space or kind
        if space != kind:
            alpha = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
            sigma = append_dims(self.sde.sigma(t), x.ndim).to(x.dtype)
            out_c, out = convert(x, alpha, sigma, out_c, kind, space), convert(x, alpha, sigma, out, kind, space)
        dims = tuple(range(1, x.ndim))
        std_c, std_g = out_c.std(dim=dims, keepdim=True), out.std(dim=dims, keepdim=True)
        phi = self.g.rescale
        return space, out * (phi * std_c / std_g + (1.0 - phi))

    def config(self) -> dict:
        g = self.g
        return {**self.inner.config(), "guidance": {"method": "cfg", "w": g.w, "key": g.key, "null_label": self.null_label,
                                                    "interval": g.interval, "rescale": g.rescale,
                                                    "rescale_space": g.rescale_space}}


def _double(v: Any, B: int) -> Any:
    """A non-label condition shared by both halves of the doubled batch."""
    if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == B:
        return torch.cat([v, v])
    return v


# ---------------------------------------------------------------------------------- classifier guidance
class ClassifierGuidance(Guidance):
    """Classifier guidance (Dhariwal & Nichol 2021, Alg. 1; Song et al. 2021, Eq. 14).

    ``score(x_t | y) ~ score(x_t) + scale * grad_x log p(y | x_t, t)`` with ``log_prob(x, t, y)
    -> (B,)`` any differentiable callable (for an exact mixture,
    :meth:`scoresde.exact.ClassConditionalMixture.classifier` makes this the exact conditional
    score at scale 1). The labels come from ``cond[key]``; the inner (unconditional) model gets
    the rest of ``cond`` (``pass_cond=True`` forwards the labels too). Each evaluation is 1 NFE of
    the score network plus one forward and one backward pass of the classifier, counted in
    ``grad_calls`` (= classifier forward-backward passes) of the wrapped model.
    """

    needs_grad = True

    def __init__(self, log_prob, scale: float = 1.0, *, key: str = "y", pass_cond: bool = False):
        if not callable(log_prob):
            raise TypeError(f"log_prob must be a callable log_prob(x, t, y) -> (B,); got {type(log_prob).__name__}")
        self.log_prob = log_prob
        self.scale = _check_number("scale", scale)
        self.key, self.pass_cond = key, bool(pass_cond)

    def wrap(self, model: ScoreModel, sde: LinearSDE) -> "ClassifierGuidedModel":
        return ClassifierGuidedModel(as_model(model, sde), self)


class ClassifierGuidedModel(GuidedModel):
    def __init__(self, inner: ScoreModel, g: ClassifierGuidance):
        super().__init__(inner)
        self.g = g

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Prediction:
        B = x.shape[0]
        t = batch_time(t, B, x.device)
        if self.g.key not in cond or cond[self.g.key] is None:
            raise ValueError(f"classifier guidance needs the labels cond[{self.g.key!r}]; pass "
                             f"cond={{{self.g.key!r}: labels}} to sample()")
        y = cond[self.g.key]
        inner_cond = cond if self.g.pass_cond else {k: v for k, v in cond.items() if k != self.g.key}
        score = self.inner(x, t, **inner_cond).score
        self.nfe += 1
        self.calls += 1
        if self.g.scale == 0:
            return self._prediction(x, t, "score", score)
        _no_inference_mode("classifier guidance")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.g.log_prob(xg, t, y)
            if not isinstance(lp, Tensor) or lp.shape != (B,):
                got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
                raise ValueError(f"log_prob(x, t, y) must return a tensor of shape ({B},) (log p(y | x_t) per sample); "
                                 f"got {got}")
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        self.grad_calls += 1
        return self._prediction(x, t, "score", score + self.g.scale * grad.to(x.dtype))


# ---------------------------------------------------------------------------------- observations
class Observation:
    """A linear observation ``A x`` of one sample (batched over dim 0).

    ``apply(x)``: A x, ``adjoint(v)``: A^T v, ``pinv(v)``: A^T (A A^T)^{-1} v (full row rank);
    ``obs_shape(sample_shape)``: the shape of one observation.
    """

    def apply(self, x: Tensor) -> Tensor:
        raise NotImplementedError("an Observation subclass defines apply()")  # abstract

    def adjoint(self, v: Tensor) -> Tensor:
        raise NotImplementedError("an Observation subclass defines adjoint()")  # abstract

    def pinv(self, v: Tensor) -> Tensor:
        raise NotImplementedError("an Observation subclass defines pinv()")  # abstract

    def obs_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError("an Observation subclass defines obs_shape()")  # abstract

    def check(self, sample_shape: tuple[int, ...]) -> None:
        """Raise a ValueError if the observation does not fit samples of this shape."""


class Mask(Observation):
    """Observed entries (True) of each sample: ``A x = mask * x`` (an orthogonal projection).

    ``mask`` has the shape of one sample, or broadcasts to it with the same number of dims
    (e.g. (1, H, W) for every channel of (C, H, W) images). Observations are given in the sample
    shape; their unobserved entries are ignored.
    """

    def __init__(self, mask: Any):
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool:
            if m.is_floating_point() and bool(((m == 0) | (m == 1)).all()):
                m = m.bool()
            else:
                raise ValueError(f"mask must be a bool tensor (True = observed) or 0/1 values; got dtype {m.dtype}")
        if m.ndim < 1:
            raise ValueError("mask must have the shape of one sample (True = observed); got a scalar")
        self.mask = m

    def check(self, sample_shape):
        m = self.mask
        ok = m.ndim == len(sample_shape) and all(a in (1, b) for a, b in zip(m.shape, sample_shape, strict=True))
        if not ok:
            raise ValueError(
                f"mask has shape {tuple(m.shape)}, but one sample has shape {tuple(sample_shape)}: the mask must have "
                "the shape of one sample (or broadcast to it with the same number of dims); True = observed"
            )

    def _m(self, x: Tensor) -> Tensor:
        return self.mask.to(x.device)[None].to(x.dtype)

    def apply(self, x):
        return self._m(x) * x

    adjoint = apply
    pinv = apply

    def obs_shape(self, sample_shape):
        return tuple(sample_shape)


class Matrix(Observation):
    """``A x`` with a dense (m, D) matrix on the flattened sample."""

    def __init__(self, A: Any):
        a = torch.as_tensor(A, dtype=torch.float64)
        if a.ndim != 2 or a.shape[0] < 1 or not bool(torch.isfinite(a).all()):
            raise ValueError(f"A must be a finite (m, D) matrix; got shape {tuple(a.shape)}")
        if int(torch.linalg.matrix_rank(a)) < a.shape[0]:
            raise ValueError(f"A ({a.shape[0]} x {a.shape[1]}) must have full row rank")
        self.A = a
        self._gram_inv = torch.linalg.inv(a @ a.T)

    def check(self, sample_shape):
        D = math.prod(sample_shape)
        if D != self.A.shape[1]:
            raise ValueError(f"A has {self.A.shape[1]} columns, but one sample has {D} elements (shape {tuple(sample_shape)})")

    def apply(self, x):
        return x.reshape(x.shape[0], -1) @ self.A.to(x.device, x.dtype).T

    def adjoint(self, v):
        return v @ self.A.to(v.device, v.dtype)  # flattened; reshaped by the caller

    def pinv(self, v):
        return (v @ self._gram_inv.to(v.device, v.dtype)) @ self.A.to(v.device, v.dtype)

    def obs_shape(self, sample_shape):
        return (self.A.shape[0],)


class Grayscale(Observation):
    """Colourisation's observation (Song et al. 2021, App. I.2): the channel mean of (C, H, W) images.

    ``A x = mean over channels`` (shape (1, H, W)); its rows are orthogonal, so replacing the gray
    part is imputation in the orthogonal colour basis whose first axis is (1, ..., 1) / sqrt(C).
    """

    def __init__(self, channels: int = 3):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
            raise ValueError(f"channels must be an int >= 2; got {channels!r}")
        self.channels = channels

    def check(self, sample_shape):
        if len(sample_shape) != 3 or sample_shape[0] != self.channels:
            raise ValueError(f"colourisation needs samples of shape ({self.channels}, H, W); got {tuple(sample_shape)}")

    def apply(self, x):
        return x.mean(dim=1, keepdim=True)

    def adjoint(self, v):
        return v.expand(-1, self.channels, -1, -1) / self.channels

    def pinv(self, v):
        return v.expand(-1, self.channels, -1, -1)

    def obs_shape(self, sample_shape):
        return (1, *sample_shape[1:])


class _Observed:
    """An observation y of a linear operator, checked against the samples' shape on first use."""

    def __init__(self, observation: Observation, y: Any):
        if not isinstance(observation, Observation):
            raise TypeError("observation must be a Mask, Matrix, Grayscale or another Observation; got "
                            f"{type(observation).__name__}")
        yt = torch.as_tensor(y)
        if not yt.is_floating_point() or not bool(torch.isfinite(yt).all()):
            raise ValueError("the observation y must be a finite floating-point tensor")
        self.op, self.y = observation, yt
        self._shape: tuple[int, ...] | None = None

    def bind(self, x: Tensor) -> Tensor:
        """y broadcast to x's batch, dtype and device (shapes checked once per sample shape)."""
        shape = tuple(x.shape[1:])
        want = tuple(self.op.obs_shape(shape))
        if self._shape != shape:
            self.op.check(shape)
            if tuple(self.y.shape) not in (want, (x.shape[0], *want)):
                raise ValueError(f"y has shape {tuple(self.y.shape)}; for samples of shape {shape} it must be {want} "
                                 f"or ({x.shape[0]}, {', '.join(map(str, want))})")
            self._shape = shape
        y = self.y.to(device=x.device, dtype=x.dtype).expand(x.shape[0], *want)
        # In the range of A (a mask's unobserved entries of y are ignored).
        return self.op.apply(self.op.pinv(y).reshape(x.shape))

    def lift(self, v: Tensor, like: Tensor) -> Tensor:
        return self.op.pinv(v).reshape(like.shape)


# ---------------------------------------------------------------------------------- inverse problems
class Replacement(Guidance):
    """Song et al. 2021 (App. I.2) imputation / inpainting / colourisation by replacement.

    After every step the observed part of the state (the row space of A) is replaced by a fresh
    sample of the forward process of the observation, ``A x_t <- alpha(t) y + sigma(t) A z``,
    ``z ~ N(0, I)``; ``finish`` sets ``A x = y`` exactly. The unobserved part follows the joint
    score at the replaced state, which approximates ``p_t(x_u | y)`` by ``p_t(x_u | x_t,o)`` for
    one random ``x_t,o``: not the exact conditional (the bias is measured in the tests).

    Args:
        observation: a :class:`Mask` (imputation / inpainting), :class:`Grayscale`
            (colourisation) or :class:`Matrix` (any full-row-rank A).
        y: the observation, of the observation's shape, or batched (B, *obs).
        seed: the replacement noise comes from per-sample Philox streams keyed by seeds drawn
            from ``torch.Generator().manual_seed(seed)`` (restarted on every x_T projection,
            i = -1, so a run is reproducible); ``noise=`` gives a noise source instead.
    """

    needs_projection = True

    def __init__(self, observation: Observation, y: Any, *, seed: int = 0, noise: Any = None):
        self.obs = _Observed(observation, y)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        if noise is not None and not callable(noise):
            raise TypeError("noise must be None or a callable noise(like) -> standard normal tensor")
        self.seed, self.user_noise = seed, noise
        self.sde: LinearSDE | None = None
        self._noise: Any = None

    def wrap(self, model: ScoreModel, sde: LinearSDE) -> ScoreModel:
        self.sde = sde
        return as_model(model, sde)

    def project(self, x: Tensor, t: Tensor, i: int) -> Tensor:
        if self.sde is None:
            raise RuntimeError("Replacement.project was called before wrap(model, sde)")
        y = self.obs.bind(x)
        if i < 0 or self._noise is None:
            self._noise = self.user_noise or PerSampleNoise(
                make_seeds(x.shape[0], generator=torch.Generator().manual_seed(self.seed), device=x.device))
        tt = batch_time(t, x.shape[0], x.device)
        a = append_dims(self.sde.alpha(tt), y.ndim).to(x.dtype)
        s = append_dims(self.sde.sigma(tt), y.ndim).to(x.dtype)
        # Replace A x_t by a sample of the observation's forward process: alpha y + sigma A z.
        target = a * y + s * self.obs.op.apply(self._noise(x))
        return x + self.obs.lift(target - self.obs.op.apply(x), x)

    def finish(self, x: Tensor) -> Tensor:
        y = self.obs.bind(x)
        return x + self.obs.lift(y - self.obs.op.apply(x), x)


def inpainting(mask: Any, y: Any, **kwargs: Any) -> Replacement:
    """Song et al. 2021 imputation / inpainting: ``mask`` (True = observed) and the observed sample(s) ``y``."""
    return Replacement(Mask(mask), y, **kwargs)


def colorization(gray: Any, channels: int = 3, **kwargs: Any) -> Replacement:
    """Song et al. 2021 colourisation: ``gray`` = channel mean of the images, shape (1, H, W) or (B, 1, H, W)."""
    return Replacement(Grayscale(channels), gray, **kwargs)


class DPS(Guidance):
    """Diffusion posterior sampling (Chung et al. 2023): the likelihood of the denoised estimate.

    Two forms of the same approximation ``p(y | x_t) ~ p(y | x0(x_t))`` (Chung et al., Eq. 11),
    the gradient taken through the network (one backward pass per evaluation, counted in
    ``grad_calls``; 1 NFE):

    * ``step="score"`` (default): a score correction,
      ``score(x_t | y) ~ score(x_t) + scale * grad_x log N(y; A x0(x_t), noise_std^2 I)``
      (Eq. 16 with the Gaussian likelihood), so any sampler can use it; ``scale = 1`` is the
      approximation itself. Stiff for small noise_std: an explicit step is stable only for
      ``g(t)^2 dt / noise_std^2`` of order 1 (an estimate; the divergence at noise_std 0.05 is
      measured in docs/guidance.md);
    * ``step="chung"``: Chung et al.'s Alg. 1: the sampler steps with the unguided model and
      ``project`` then moves the state by ``-zeta grad_x ||y - A x0||^2 / ||y - A x0||``, the
      gradient at the state of the step's (last) network evaluation; meant for one-evaluation
      steps (ddim, euler_maruyama, ancestral), as in the paper (DDPM, zeta in [0.1, 1]).

    Args:
        observation: a :class:`Mask`, :class:`Matrix` or :class:`Grayscale` (any linear A).
        y: the observation (observation shape, or batched).
        noise_std: the observation noise std (> 0; ``step="score"`` only).
        scale: multiplies the likelihood gradient (``step="score"``).
        step: ``score`` or ``chung``.
        zeta: Chung et al.'s zeta' (``step="chung"``).
    """

    needs_grad = True

    def __init__(self, observation: Observation, y: Any, noise_std: float | None = None, scale: float = 1.0, *,
                 step: str = "score", zeta: float = 1.0):
        check_choice("step", step, ("score", "chung"))
        self.obs = _Observed(observation, y)
        self.step = step
        if step == "score":
            self.noise_std = _check_number("noise_std", noise_std, low=0.0, what="a positive finite number")
            if self.noise_std == 0:
                raise ValueError("noise_std must be a positive finite number (the DPS likelihood is N(y; A x0, "
                                 "noise_std^2 I)); got 0")
        else:
            self.noise_std = None if noise_std is None else _check_number("noise_std", noise_std, low=0.0)
        self.scale = _check_number("scale", scale)
        self.zeta = _check_number("zeta", zeta, low=0.0, what="a finite number >= 0")
        self.needs_projection = step == "chung"
        self._model: DPSModel | None = None

    def wrap(self, model: ScoreModel, sde: LinearSDE) -> "DPSModel":
        self._model = DPSModel(as_model(model, sde), self)
        return self._model

    def project(self, x: Tensor, t: Tensor, i: int) -> Tensor:
        if self.step != "chung" or i < 0:
            return x
        move = self._model.displacement if self._model is not None else None
        if move is None or move.shape != x.shape:
            raise RuntimeError("DPS(step='chung') needs one network evaluation on the whole batch before each "
                               "projection (use a one-evaluation-per-step sampler such as ddim or euler_maruyama)")
        self._model.displacement = None
        return x + move


class DPSModel(GuidedModel):
    def __init__(self, inner: ScoreModel, g: DPS):
        super().__init__(inner)
        self.g = g
        self.displacement: Tensor | None = None  # step="chung": the move project() applies

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Prediction:
        B = x.shape[0]
        t = batch_time(t, B, x.device)
        y = self.g.obs.bind(x)
        _no_inference_mode("DPS")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pred = self.inner(xg, t, **cond)
            rss = (y - self.g.obs.op.apply(pred.x0)).pow(2).reshape(B, -1).sum(1)
            if self.g.step == "score":
                (grad,) = torch.autograd.grad(-0.5 * rss.sum() / self.g.noise_std**2, xg)
            else:
                (grad,) = torch.autograd.grad(rss.sum(), xg)
        self.nfe += 1
        self.calls += 1
        self.grad_calls += 1
        score = pred.score.detach()
        if self.g.step == "chung":
            # Chung et al. Alg. 1: x <- x - zeta grad ||r||^2 / ||r|| after the step.
            norm = append_dims(rss.detach().sqrt().clamp_min(1e-30), x.ndim).to(x.dtype)
            self.displacement = -self.g.zeta * grad.to(x.dtype) / norm
            return self._prediction(x, t, "score", score)
        return self._prediction(x, t, "score", score + self.g.scale * grad.to(x.dtype))
