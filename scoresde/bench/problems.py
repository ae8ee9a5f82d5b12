"""Benchmark problems: an SDE, a model, and the data the samples are compared with.

Built-in problems are exact Gaussian mixtures (the model is the closed-form noised score, so
every difference between samplers is the sampler's own error):

* ``gmm2d``: 5 modes in 2-D with unequal weights (0.05 to 0.35) and unequal, some tilted, covariances;
* ``gmm16d``: 6 modes in 16-D with random full covariances (``GaussianMixture.random(6, 16, seed=16, spread=1.5)``);
* ``gmm64d``: 8 modes in 64-D (``GaussianMixture.random(8, 64, seed=64, spread=1.0)``).

Each is paired with an SDE by a suffix: ``-vp``, ``-subvp``, ``-ve``, ``-edm`` (default ``-vp``),
e.g. ``gmm16d-ve``. A trained checkpoint is ``ckpt:PATH`` (``scoresde.checkpoint.load_model``);
its samples are compared with held-out data of the set it was trained on.

Reference and floor sets are drawn with fixed seeds that depend on the sweep seed only, so every
sampler of a sweep is compared with the same reference.
"""

from __future__ import annotations

import os
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


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _mixture_problem(name: str) -> Problem:
    base, _, sde_name = name.partition("-")
    sde_name = sde_name or "vp"
    if base not in MIXTURES or sde_name not in SDES:
        raise ValueError(
            f"problem {name!r} is not one of the accepted values: {', '.join(builtin_problem_names())}, "
            "a bare mixture name (VP SDE), or ckpt:PATH"
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
        metrics = ("sw2", "fd")
    else:
        metrics = ("sw2", "mmd", "energy")
    model = ck.model

    def perm(seed: int) -> Tensor:
        return torch.randperm(data.shape[0], generator=_gen(_REF + seed))

    def reference(n: int, seed: int) -> Tensor:
        _check_pool(name, data.shape[0], n)
        return data[perm(seed)[:n]]

    def floor_set(n: int, seed: int, r: int) -> Tensor:
        _check_pool(name, data.shape[0], n)
        rest = perm(seed)[n:]  # disjoint from the reference; repeats are random subsets of it
        return data[rest[torch.randperm(rest.numel(), generator=_gen(_FLOOR + 1000 * seed + r))[:n]]]

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


def _check_pool(name: str, size: int, n: int) -> None:
    if 2 * n > size:
        raise ValueError(f"problem {name!r}: n={n} needs 2n={2 * n} data points (a reference and disjoint floor sets); "
                         f"the data set has {size} (use n <= {size // 2})")


def get_problem(name: str) -> Problem:
    """Build the problem ``name``: ``gmm2d-vp`` ... ``gmm64d-edm``, a bare mixture name, or ``ckpt:PATH``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"problem must be a non-empty string; got {name!r}")
    if name.startswith("ckpt:"):
        return _checkpoint_problem(name)
    return _mixture_problem(name)
