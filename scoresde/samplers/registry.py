"""The sampler registry: name -> function + declared metadata.

A sampler is a plain function holding its paper's loop::

    @register("ddim", kind="ode", order=1, nfe_per_step=1, stochastic=False, paper="Song et al. 2021a")
    def ddim(model, sde, x, ts, *, noise, callback, eta=0.0):
        ...
        return x

``model(x, t)`` returns a :class:`~scoresde.model.Prediction` (one network call); ``ts`` is the
float64 grid from T to t_min; ``noise(like)`` draws standard normals; ``callback(i, x)`` is called
after step i. Keyword-only arguments after ``callback`` are the sampler's options: their names
and defaults are read from the signature, so unknown options raise and list the valid ones.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..sde import LinearSDE

__all__ = ["SamplerSpec", "register", "register_sampler", "get", "available", "specs", "unregister"]

KINDS = ("ode", "sde", "langevin", "pc", "adaptive")
_RESERVED = ("noise", "callback")


@dataclass(frozen=True)
class SamplerSpec:
    """What a sampler declares about itself (read by sample(), the benchmark, the docs and tests)."""

    name: str
    fn: Callable[..., Any]
    kind: str
    order: float | None  # convergence order (ODE) or strong order (SDE); None when not defined
    stochastic: bool
    nfe_per_step: str  # as documented, e.g. "1", "2 (1 on the last step)", "adaptive"
    fixed_grid: bool = True  # runs on the grid ts (False: only its end points, e.g. adaptive)
    needs: tuple[str, ...] = ()  # SDE attributes it requires (checked by the front door)
    supports: Callable[[LinearSDE], str | None] | None = None  # returns a reason when unsupported
    default_steps: int = 100
    default_schedule: str = "uniform"
    exact_for_point_mass: bool = False  # exponential integrators: exact PF solution for point masses
    # Optional table of linear-update coefficients: coefficients(sde, ts, **options) -> CoefficientTable
    # (scoresde.samplers.tables), checked when built; run_table(model, sde, x, ts, table, noise) replays it.
    coefficients: Callable[..., Any] | None = None
    paper: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def check_sde(self, sde: LinearSDE) -> None:
        for attr in self.needs:
            if not callable(getattr(sde, attr, None)):
                usable = [s.name for s in _REGISTRY.values() if all(callable(getattr(sde, a, None)) for a in s.needs)]
                raise ValueError(
                    f"sampler {self.name!r} needs sde.{attr}, which {type(sde).__name__} does not define "
                    f"(define it, or use one of: {', '.join(usable)})"
                )
        if self.supports is not None:
            reason = self.supports(sde)
            if reason:
                raise ValueError(f"sampler {self.name!r} does not support {sde!r}: {reason}")


_REGISTRY: dict[str, SamplerSpec] = {}


def _options_of(fn: Callable[..., Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional[:4] != ["model", "sde", "x", "ts"]:
        raise TypeError(f"a sampler's signature starts with (model, sde, x, ts, *, noise, callback, ...); got {sig}")
    opts = {}
    for p in params:
        if p.kind == p.KEYWORD_ONLY and p.name not in _RESERVED:
            if p.default is p.empty:
                raise TypeError(f"sampler option {p.name!r} needs a default value")
            opts[p.name] = p.default
    missing = [r for r in _RESERVED if r not in sig.parameters]
    if missing:
        raise TypeError(f"a sampler must take keyword-only {', '.join(_RESERVED)}; {fn.__name__} lacks {missing}")
    return opts


def register_sampler(name: str, fn: Callable[..., Any], *, overwrite: bool = False, **meta: Any) -> SamplerSpec:
    """Register ``fn`` under ``name`` (see :class:`SamplerSpec` for the metadata)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a sampler name must be an identifier-like string; got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"sampler {name!r} is already registered (pass overwrite=True to replace it)")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of the accepted values: {', '.join(KINDS)}")
    meta["nfe_per_step"] = str(meta.get("nfe_per_step", "1"))
    spec = SamplerSpec(name=name, fn=fn, options=_options_of(fn), **meta)
    _REGISTRY[name] = spec
    return spec


def register(name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of :func:`register_sampler`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        register_sampler(name, fn, **meta)
        return fn

    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> SamplerSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; available samplers: {', '.join(available())}")
    return _REGISTRY[name]


def available() -> list[str]:
    """Names of all registered samplers."""
    return sorted(_REGISTRY)


def specs() -> list[SamplerSpec]:
    return [_REGISTRY[n] for n in available()]
