"""Benchmark problems: an SDE, a model, and the data the samples are compared with.

Built-in problems are exact Gaussian mixtures (the model is the closed-form noised score, so
every difference between samplers is the sampler's own error):

* ``gmm2d``: 5 modes in 2-D with unequal weights (0.05 to 0.35) and unequal, some tilted, covariances;
* ``gmm16d``: 6 modes in 16-D with random full covariances (``GaussianMixture.random(6, 16, seed=16, spread=1.5)``);
* ``gmm64d``: 8 modes in 64-D (``GaussianMixture.random(8, 64, seed=64, spread=1.0)``).

Each is paired with an SDE by a suffix: ``-vp``, ``-subvp``, ``-ve``, ``-edm`` (default ``-vp``),
e.g. ``gmm16d-ve``. A trained checkpoint is ``ckpt:PATH`` (``scoresde.checkpoint.load_model``);
its samples are compared with held-out data of the set it was trained on.

Your own model is :meth:`Problem.from_model` ``(name, model, sde, reference)``: any ScoreModel or
``score_fn(x, t)`` (a diffusers UNet through ``scoresde.adapters.from_diffusers``, ...) with a tensor
of reference samples or a sampler of them. On the command line it is ``py:MODULE:FUNCTION`` (or
``py:path/to/file.py:FUNCTION``): that function, called with no arguments, returns the Problem.
This imports and runs your module, as ``python -c "import MODULE"`` would; nothing from a
checkpoint is ever executed (scoresde checkpoints are safetensors and JSON).

Reference and floor sets are drawn with fixed seeds that depend on the sweep seed only, so every
sampler of a sweep is compared with the same reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..exact import GaussianMixture
from ..sde import SDES, LinearSDE

__all__ = ["Problem", "get_problem", "MIXTURES", "SDES", "mixture", "builtin_problem_names"]

# SDES: the SDE registry (scoresde.sde.SDES): short names vp, subvp, ve, edm

# Seed offsets of the exact sets: reference = REF + seed, floor repeat r = FLOOR + 1000 seed + r.
_REF, _FLOOR = 1_000_003, 2_000_003


def _gmm2d() -> GaussianMixture:
    weights = [0.05, 0.1, 0.2, 0.3, 0.35]
    means = [[-4.0, 3.0], [0.0, 4.0], [4.0, 2.0], [3.0, -3.5], [-2.5, -3.0]]
    covs = [
        [[0.3, 0.0], [0.0, 0.3]],
        [[0.6, 0.3], [0.3, 0.4]],
        [[0.2, 0.0], [0.0, 0.5]],
        [[0.8, -0.4], [-0.4, 0.5]],
        [[0.25, 0.0], [0.0, 0.25]],
    ]
    return GaussianMixture(weights, means, covs)


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "gmm2d": _gmm2d,
    "gmm16d": lambda: GaussianMixture.random(6, 16, seed=16, spread=1.5),
    "gmm64d": lambda: GaussianMixture.random(8, 64, seed=64, spread=1.0),
}


def mixture(name: str) -> GaussianMixture:
    """The built-in mixture ``name`` (one of :data:`MIXTURES`)."""
    if name not in MIXTURES:
        raise ValueError(f"mixture {name!r} is not one of the accepted values: {', '.join(MIXTURES)}")
    return MIXTURES[name]()


def builtin_problem_names() -> list[str]:
    return [f"{m}-{s}" for m in MIXTURES for s in SDES]


@dataclass
class Problem:
    """What a benchmark cell samples and how its samples are judged.

    ``reference(n, seed)`` is the set every sampler is compared with; ``floor_set(n, seed, r)``
    is an independent exact (or held-out data) set of the same size: a metric between it and the
    reference is that metric's noise floor at this n.
    """

    name: str
    sde: LinearSDE
    shape: tuple[int, ...]  # one sample's shape (D,) or (C, H, W)
    make_model: Callable[[torch.device], Any]  # -> ScoreModel on that device
    reference: Callable[[int, int], Tensor]
    floor_set: Callable[[int, int, int], Tensor]
    mixture: GaussianMixture | None = None
    metrics: tuple[str, ...] = ()
    to_data: Callable[[Tensor], Tensor] | None = None  # model space -> the reference's space (None: same)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls,
        name: str,
        model: Any,
        sde: LinearSDE | None = None,
        reference: Any = None,
        *,
        metrics: tuple[str, ...] | list[str] | None = None,
        shape: tuple[int, ...] | None = None,
        to_data: Callable[[Tensor], Tensor] | None = None,
    ) -> "Problem":
        """A benchmark problem from your own model and its reference data.

        Args:
            name: the problem's name in tables, plots and cell keys (a resumed sweep recognises
                its cells by it: give another model another name).
            model: a :class:`~scoresde.model.ScoreModel` (``model.sde`` is used when ``sde`` is
                None) or a plain ``score_fn(x, t)``; moved to the sweep's device when it is an ``nn.Module``.
            sde: the linear SDE the model was trained for.
            reference: what the samples are compared with: a tensor of samples ``(M, *D)``
                (the reference is n of them and the floor sets are n-subsets of the rest, drawn per
                sweep seed; so M >= 2n), a sampler ``(n, generator=...) -> (n, *D)``, or an object with
                ``.sample(n, generator=...)`` (a :class:`~scoresde.GaussianMixture` also enables the
                mixture metrics).
            metrics: metric names (default: the mixture metrics for a mixture, ``sw2, fd, kd`` for
                8x8 digits ``(1, 8, 8)``, else ``sw2, mmd, energy``).
            shape: one sample's shape (default: the reference's).
            to_data: maps samples from model space to the reference's space (default: the same).
        """
        from ..metrics import METRICS
        from ..model import ScoreModel

        if not isinstance(name, str) or not name.strip() or "|" in name:
            raise ValueError(f"name must be a non-empty string without '|' (it is part of the cell key); got {name!r}")
        if isinstance(model, ScoreModel):
            sde = model.sde if sde is None else sde
        elif not callable(model):
            raise TypeError(f"model must be a ScoreModel or a callable score_fn(x, t); got {type(model).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a scoresde LinearSDE (the model's SDE); got {type(sde).__name__}")
        if to_data is not None and not callable(to_data):
            raise TypeError(f"to_data must be callable (model space -> data space) or None; got {type(to_data).__name__}")
        mix = reference if isinstance(reference, GaussianMixture) else None
        if isinstance(reference, Tensor):
            if reference.ndim < 2 or reference.shape[0] < 4 or not reference.is_floating_point():
                raise ValueError(f"reference must be a float tensor of samples (M, *D) with M >= 4; got "
                                 f"{reference.dtype} of shape {tuple(reference.shape)}")
            pool = reference.detach().to("cpu", torch.float64)
            ref_fn, floor_fn = _pool_sets(name, pool)
            data_shape = tuple(pool.shape[1:])
            kind = "samples"
        else:
            draw = getattr(reference, "sample", reference)
            if not callable(draw):
                raise TypeError("reference must be a tensor of samples (M, *D), a sampler (n, generator=...) -> (n, *D) "
                                f"or an object with .sample(n, generator=...); got {type(reference).__name__}")
            ref_fn, floor_fn = _sampler_sets(name, draw)
            data_shape = tuple(ref_fn(2, 0).shape[1:])
            kind = "sampler"
        shape = tuple(int(d) for d in (shape if shape is not None else data_shape))
        if metrics is None:
            if mix is not None:
                metrics = ("sw2", "mmd", "energy", "mode_err", "logp_gap")
            elif data_shape == (1, 8, 8):
                metrics = ("sw2", "fd", "kd")
            else:
                metrics = ("sw2", "mmd", "energy")
        metrics = tuple(metrics)
        for m in metrics:
            METRICS.get(m)  # an unknown name raises, listing the accepted ones
        net = model

        def make_model(device):
            return net.to(device) if isinstance(net, torch.nn.Module) else net

        return cls(name=name, sde=sde, shape=shape, make_model=make_model, reference=ref_fn, floor_set=floor_fn,
                   mixture=mix, metrics=metrics, to_data=to_data,
                   info={"kind": "user", "reference": kind, "shape": list(shape), "sde": type(sde).__name__})


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _mixture_problem(name: str) -> Problem:
    base, _, sde_name = name.partition("-")
    sde_name = sde_name or "vp"
    if base not in MIXTURES or sde_name not in SDES:
        raise ValueError(
            f"problem {name!r} is not one of the accepted values: {', '.join(builtin_problem_names())}, "
            "a bare mixture name (VP SDE), ckpt:PATH, or py:MODULE:FUNCTION"
        )
    gm, sde = mixture(base), SDES[sde_name]()
    return Problem(
        name=f"{base}-{sde_name}",
        sde=sde,
        shape=(gm.dim,),
        make_model=lambda device: gm.model(sde),
        reference=lambda n, seed: gm.sample(n, generator=_gen(_REF + seed), dtype=torch.float64),
        floor_set=lambda n, seed, r: gm.sample(n, generator=_gen(_FLOOR + 1000 * seed + r), dtype=torch.float64),
        mixture=gm,
        metrics=("sw2", "mmd", "energy", "mode_err", "logp_gap"),
        info={"kind": "mixture", "dim": gm.dim, "components": gm.n_components, "sde": type(sde).__name__},
    )


def _checkpoint_problem(name: str) -> Problem:
    """A trained model: its samples are compared with its own training set (in model space).

    The data set is rebuilt from the checkpoint's config (``scoresde.data.dataset_from_config``).
    For seed s it is permuted once; the first n points are the reference and n-subsets of
    the rest are the floor sets (random subsets of it, which overlap when the rest is
    small), so n may be at most half the data set. Images get the Frechet
    digits distance (8x8 digits: model space is the classifier's [-1, 1]); a data set with an
    exact Gaussian-mixture law (toy mixtures) also gets the mixture metrics."""
    path = name[len("ckpt:"):]
    if not os.path.exists(path):
        raise FileNotFoundError(f"problem {name!r}: checkpoint folder {path!r} does not exist")
    from ..checkpoint import load_checkpoint
    from ..data import dataset_from_config

    ck = load_checkpoint(path)
    if ck.config.get("data") is None:
        raise ValueError(f"problem {name!r}: the checkpoint records no data set (trained on a plain tensor), so "
                         "there is nothing to compare its samples with")
    ds = dataset_from_config(ck.config["data"])
    data = ds.x.to(torch.float64)
    shape = tuple(data.shape[1:])
    if ds.exact is not None:
        metrics: tuple[str, ...] = ("sw2", "mmd", "energy", "mode_err", "logp_gap")
    elif shape == (1, 8, 8):
        metrics = ("sw2", "fd", "kd")
    else:
        metrics = ("sw2", "mmd", "energy")
    model = ck.model
    reference, floor_set = _pool_sets(name, data)

    return Problem(
        name=name,
        sde=ck.sde,
        shape=shape,
        make_model=lambda device: model.to(device),
        reference=reference,
        floor_set=floor_set,
        mixture=ds.exact,
        metrics=metrics,
        info={"kind": "checkpoint", "path": str(ck.path), "data": ck.config["data"], "shape": list(shape),
              "sde": type(ck.sde).__name__, "step": ck.state.get("step")},
    )


def _pool_sets(name: str, data: Tensor) -> tuple[Callable[[int, int], Tensor], Callable[[int, int, int], Tensor]]:
    """Reference and floor sets from a pool of samples: for seed s the pool is permuted once; the
    first n points are the reference, n-subsets of the rest the floor sets (so n <= half the pool)."""

    def perm(seed: int) -> Tensor:
        return torch.randperm(data.shape[0], generator=_gen(_REF + seed))

    def reference(n: int, seed: int) -> Tensor:
        _check_pool(name, data.shape[0], n)
        return data[perm(seed)[:n]]

    def floor_set(n: int, seed: int, r: int) -> Tensor:
        _check_pool(name, data.shape[0], n)
        rest = perm(seed)[n:]  # disjoint from the reference; repeats are random subsets of it
        return data[rest[torch.randperm(rest.numel(), generator=_gen(_FLOOR + 1000 * seed + r))[:n]]]

    return reference, floor_set


def _sampler_sets(name: str, draw: Callable) -> tuple[Callable[[int, int], Tensor], Callable[[int, int, int], Tensor]]:
    """Reference and floor sets drawn from a sampler with the fixed seeds of the exact problems."""

    def checked(n: int, g: torch.Generator) -> Tensor:
        x = draw(n, generator=g)
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] != n:
            raise ValueError(f"problem {name!r}: the reference sampler must return a tensor of n={n} samples (n, *D); "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        return x.detach().to("cpu", torch.float64)

    return (lambda n, seed: checked(n, _gen(_REF + seed)),
            lambda n, seed, r: checked(n, _gen(_FLOOR + 1000 * seed + r)))


def _entry_point_problem(name: str) -> Problem:
    """``py:MODULE:FUNCTION`` or ``py:FILE.py:FUNCTION``: FUNCTION() returns the Problem (your own code)."""
    spec = name[len("py:"):]
    target, sep, fn_name = spec.rpartition(":")
    if not sep or not target or not fn_name.isidentifier():
        raise ValueError(f"problem {name!r} must be py:MODULE:FUNCTION or py:PATH.py:FUNCTION (a function returning a "
                         "scoresde.bench.Problem)")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise FileNotFoundError(f"problem {name!r}: file {target!r} does not exist")
        mod_name = "_scoresde_problem_" + os.path.splitext(os.path.basename(target))[0]
        mspec = importlib.util.spec_from_file_location(mod_name, target)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        mspec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as python -m does: modules of the current folder
        module = importlib.import_module(target)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"problem {name!r}: {target} has no function {fn_name!r}")
    problem = fn()
    if not isinstance(problem, Problem):
        raise TypeError(f"problem {name!r}: {target}:{fn_name}() must return a scoresde.bench.Problem "
                        f"(e.g. Problem.from_model(...)); got {type(problem).__name__}")
    return problem


def _check_pool(name: str, size: int, n: int) -> None:
    if 2 * n > size:
        raise ValueError(f"problem {name!r}: n={n} needs 2n={2 * n} data points (a reference and disjoint floor sets); "
                         f"the data set has {size} (use n <= {size // 2})")


def get_problem(name: str) -> Problem:
    """Build the problem ``name``: ``gmm2d-vp`` ... ``gmm64d-edm``, a bare mixture name, ``ckpt:PATH``,
    or ``py:MODULE:FUNCTION`` (your function returning a Problem; a sweep names its cells by the
    string given, so that a rerun of the same command resumes them)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"problem must be a non-empty string; got {name!r}")
    if name.startswith("ckpt:"):
        return _checkpoint_problem(name)
    if name.startswith("py:"):
        return _entry_point_problem(name)
    return _mixture_problem(name)
