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
from ..sde import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE

__all__ = ["Problem", "get_problem", "MIXTURES", "SDES", "mixture", "builtin_problem_names"]

SDES: dict[str, Callable[[], LinearSDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}

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
    path = name[len("ckpt:"):]
    if not os.path.exists(path):
        raise FileNotFoundError(f"problem {name!r}: checkpoint folder {path!r} does not exist")
    try:
        from ..checkpoint import load_model
    except ImportError as err:
        raise ValueError(f"problem {name!r} needs scoresde.checkpoint.load_model, which is not available: {err}") from None
    model, sde, scaler = load_model(path)
    data = _checkpoint_data(path, scaler)  # (N, *shape) held-out data in the model's (scaled) space
    shape = tuple(data.shape[1:])

    metrics = ("sw2", "fd") if shape == (1, 8, 8) or len(shape) == 3 else ("sw2",)

    def make_model(device):
        return model.to(device)

    # The data set is split into [reference | floor set]; seeds permute it (fixed per seed).
    def perm(seed):
        return torch.randperm(data.shape[0], generator=_gen(_REF + seed))

    return Problem(
        name=name,
        sde=sde,
        shape=shape,
        make_model=make_model,
        reference=lambda n, seed: data[perm(seed)[:n]].to(torch.float64),
        floor_set=lambda n, seed, r: _floor_subset(data, perm(seed), n, r, name),
        metrics=metrics,
        info={"kind": "checkpoint", "path": path, "shape": list(shape), "sde": type(sde).__name__, "scaler": repr(scaler)},
    )


def _floor_subset(data: Tensor, p: Tensor, n: int, r: int, name: str) -> Tensor:
    # Disjoint from the reference (the first n of the permutation); repeats rotate the rest.
    rest = p[n:]
    if rest.numel() < n:
        raise ValueError(
            f"problem {name!r}: the floor set needs n={n} held-out points beyond the reference; only "
            f"{rest.numel()} are left of {data.shape[0]} (use --n <= {data.shape[0] // 2})"
        )
    shift = (r * (rest.numel() - n)) // 3 if rest.numel() > n else 0
    return data[rest[shift:shift + n]].to(torch.float64)


def _checkpoint_data(path: str, scaler: Any) -> Tensor:
    """Held-out data for a checkpoint, in the model's space (the checkpoint's config names it)."""
    try:
        from ..data import heldout_for_checkpoint  # type: ignore[attr-defined]
    except ImportError:
        heldout_for_checkpoint = None
    if heldout_for_checkpoint is not None:
        return heldout_for_checkpoint(path)
    raise ValueError(
        f"checkpoint {path!r}: cannot find its held-out data (scoresde.data has no heldout_for_checkpoint yet)"
    )


def get_problem(name: str) -> Problem:
    """Build the problem ``name``: ``gmm2d-vp`` ... ``gmm64d-edm``, a bare mixture name, or ``ckpt:PATH``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"problem must be a non-empty string; got {name!r}")
    if name.startswith("ckpt:"):
        return _checkpoint_problem(name)
    return _mixture_problem(name)
