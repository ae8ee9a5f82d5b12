"""Datasets: 2-D toy sets from a seed, scikit-learn's 8x8 digits, user arrays and image folders.

Nothing is downloaded. Every dataset is returned in *model space* (float32) together with the
affine :class:`Scaler` that maps it there from data space:

* points (N, D): standardised (per-feature mean 0, std 1);
* images (N, C, H, W): the pixel range mapped to [-1, 1] (digits: [0, 16]; 8-bit images: [0, 255]).

The scaler is stored with a trained model (``scaler.config()``) so samples can be mapped back
with ``scaler.from_model``. Toy sets use a fixed scaler per set (exact moments for the Gaussian
mixtures, a fixed reference sample otherwise), so the model space does not depend on ``n`` or
``seed``, and the Gaussian-mixture sets expose their exact model-space distribution as
``Dataset.exact`` (a :class:`scoresde.GaussianMixture`).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ._utils import check_choice
from .exact import Gaussian, GaussianMixture
from .registry import Bool, Choice, Real, Registry

__all__ = [
    "Scaler",
    "Dataset",
    "load_dataset",
    "dataset_from_config",
    "toy_mixture",
    "DATASETS",
    "TOY_SETS",
    "MIXTURES",
    "ARRAY_EXTENSIONS",
    "IMAGE_EXTENSIONS",
]

ARRAY_EXTENSIONS = (".npy", ".npz")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SCALINGS = ("auto", "standard", "range", "none")


# ---------------------------------------------------------------------- scaling
class Scaler:
    """Affine map between data space and model space: ``to_model(x) = (x - loc) / scale``.

    ``loc`` and ``scale`` are floats (global) or arrays broadcastable against one sample (per
    feature, e.g. shape (D,) for points or (C, 1, 1) for per-channel images).
    """

    def __init__(self, loc: Any = 0.0, scale: Any = 1.0):
        loc_a = np.asarray(loc, dtype=np.float64)
        scale_a = np.asarray(scale, dtype=np.float64)
        if not (np.isfinite(loc_a).all() and np.isfinite(scale_a).all()):
            raise ValueError(f"Scaler loc and scale must be finite; got loc={loc!r}, scale={scale!r}")
        if (scale_a <= 0).any():
            raise ValueError(f"Scaler scale must be positive; got scale={scale!r}")
        try:
            np.broadcast_shapes(loc_a.shape, scale_a.shape)
        except ValueError:
            raise ValueError(f"Scaler loc {loc_a.shape} and scale {scale_a.shape} shapes do not broadcast") from None
        self.loc, self.scale = loc_a, scale_a

    @classmethod
    def standard(cls, x: np.ndarray | Tensor, per_feature: bool = True) -> "Scaler":
        """Mean 0, std 1 per feature (``per_feature``), or one global mean and std over all values."""
        a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if not per_feature:
            if a.std() <= 0:
                raise ValueError("cannot standardise constant data (zero standard deviation)")
            return cls(float(a.mean()), float(a.std()))
        std = a.std(0)
        if (std <= 0).any():
            raise ValueError("cannot standardise data with a constant feature (zero standard deviation)")
        shape = np.shape(x)[1:]
        return cls(a.mean(0).reshape(shape), std.reshape(shape))

    @classmethod
    def from_range(cls, lo: float, hi: float) -> "Scaler":
        """Map the data range [lo, hi] onto [-1, 1]."""
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"data_range must be two finite numbers lo < hi; got ({lo!r}, {hi!r})")
        return cls(0.5 * (lo + hi), 0.5 * (hi - lo))

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc = torch.as_tensor(self.loc, dtype=x.dtype, device=x.device)
        scale = torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
        try:
            torch.broadcast_shapes(loc.shape, scale.shape, x.shape[1:])
        except RuntimeError:
            raise ValueError(
                f"this Scaler (loc {tuple(loc.shape)}, scale {tuple(scale.shape)}) does not fit samples of shape "
                f"{tuple(x.shape[1:])}"
            ) from None
        return loc, scale

    def to_model(self, x: Tensor) -> Tensor:
        """Data space -> model space (x: (N, *D) tensor)."""
        loc, scale = self._params(x)
        return (x - loc) / scale

    def from_model(self, x: Tensor) -> Tensor:
        """Model space -> data space."""
        loc, scale = self._params(x)
        return x * scale + loc

    def config(self) -> dict:
        """Plain JSON data; :meth:`from_config` rebuilds the scaler."""
        return {"loc": self.loc.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_config(cls, cfg: dict) -> "Scaler":
        if not isinstance(cfg, dict) or set(cfg) != {"loc", "scale"}:
            raise ValueError(f"a Scaler config must be a dict with keys 'loc' and 'scale'; got {cfg!r}")
        return cls(cfg["loc"], cfg["scale"])

    def __repr__(self) -> str:
        return f"Scaler(loc={self.loc.tolist()}, scale={self.scale.tolist()})"


def _mixture_to_model(gm: GaussianMixture, scaler: Scaler) -> GaussianMixture:
    """The image of a mixture under the affine map x -> (x - loc) / scale (per-feature scaler)."""
    D = gm.dim
    loc = torch.as_tensor(np.broadcast_to(scaler.loc, (D,)).copy(), dtype=torch.float64)
    inv = 1.0 / torch.as_tensor(np.broadcast_to(scaler.scale, (D,)).copy(), dtype=torch.float64)
    means = (gm.means - loc) * inv
    covs = gm.covariances * inv[:, None] * inv[None, :]
    return GaussianMixture(gm.weights, means, covs)


# ---------------------------------------------------------------------- the dataset record
@dataclass
class Dataset:
    """A dataset in model space.

    Attributes:
        x: float32 tensor (N, D) (``kind="points"``) or (N, C, H, W) (``kind="images"``).
        y: int64 labels (N,) or None.
        scaler: the data -> model map (``scaler.from_model(x)`` is the data).
        name: the built-in name or the path it was loaded from.
        kind: ``"points"`` or ``"images"``.
        exact: the exact model-space distribution (Gaussian-mixture toy sets), else None.
    """

    x: Tensor
    y: Tensor | None
    scaler: Scaler
    name: str
    kind: str
    exact: GaussianMixture | None = None
    _config: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int | None:
        return None if self.y is None else int(self.y.max()) + 1

    def config(self) -> dict:
        """Plain data; :func:`dataset_from_config` rebuilds the same dataset."""
        return {"name": self._config["name"], "n": self._config["n"], "seed": self._config["seed"],
                "kwargs": dict(self._config["kwargs"])}


# ---------------------------------------------------------------------- toy sets (2-D)
@functools.lru_cache(maxsize=None)
def _mixtures() -> dict[str, GaussianMixture]:
    gmm = GaussianMixture(
        weights=[0.35, 0.25, 0.2, 0.12, 0.08],
        means=[[-2.5, -1.5], [2.5, -2.0], [0.0, 2.5], [-3.0, 2.5], [3.0, 2.0]],
        covariances=[
            [[0.6, 0.25], [0.25, 0.4]],
            [[0.3, 0.0], [0.0, 0.8]],
            [[0.5, -0.2], [-0.2, 0.3]],
            [[0.15, 0.0], [0.0, 0.15]],
            [[0.1, 0.05], [0.05, 0.2]],
        ],
    )
    return {
        "gmm": gmm,
        "ring8": GaussianMixture.ring(8, radius=4.0, std=0.5),
        "gaussian": Gaussian([1.0, -1.0], [[1.0, 0.3], [0.3, 0.5]]),
    }


MIXTURES = ("gmm", "ring8", "gaussian")


def toy_mixture(name: str) -> GaussianMixture:
    """The data-space GaussianMixture of a mixture toy set (``gmm``, ``ring8``, ``gaussian``)."""
    check_choice("name", name, MIXTURES)
    return _mixtures()[name]


def _moons(n: int, rng: np.random.Generator, noise: float = 0.05):
    y = (rng.random(n) < 0.5).astype(np.int64)
    th = np.pi * rng.random(n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(th), np.sin(th)], 1),
                 np.stack([1.0 - np.cos(th), 0.5 - np.sin(th)], 1))
    return x + noise * rng.standard_normal((n, 2)), y


def _swissroll(n: int, rng: np.random.Generator, noise: float = 0.05):
    u = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([u * np.cos(u), u * np.sin(u)], 1) / 5.0
    return x + noise * rng.standard_normal((n, 2)), None


def _checkerboard(n: int, rng: np.random.Generator, noise: float = 0.0):
    # FFJORD's checkerboard (Grathwohl et al. 2019): 8 unit squares of a 4x4 board on [-4, 4]^2 (scaled by 2).
    x1 = 4.0 * rng.random(n) - 2.0
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    x = 2.0 * np.stack([x1, x2], 1)
    return x + noise * rng.standard_normal((n, 2)), None


def _rings(n: int, rng: np.random.Generator, noise: float = 0.05):
    y = rng.integers(0, 3, n)
    r = (y + 1.0)[:, None]
    th = 2 * np.pi * rng.random(n)
    x = r * np.stack([np.cos(th), np.sin(th)], 1)
    return x + noise * rng.standard_normal((n, 2)), y.astype(np.int64)


_SHAPES: dict[str, Callable] = {"moons": _moons, "swissroll": _swissroll, "checkerboard": _checkerboard, "rings": _rings}
TOY_SETS = MIXTURES + tuple(_SHAPES)

#: the sources of data by name, with their options (``scaler``, accepted by every source, is handled
#: by load_dataset): the built-in sets, and ``arrays`` / ``folder`` for a user's file or image folder.
#: Iterating over it gives the built-in data set names.
SOURCES = Registry("dataset", skip=("n", "rng", "seed", "path", "folder", "scaler"), error=ValueError)
for _name in MIXTURES:
    SOURCES.add(_name, lambda n, rng: None, kind="mixture")
for _name, _fn in _SHAPES.items():
    SOURCES.add(_name, _fn, kind="shape", params={"noise": Real(ge=0)})


_REF_N, _REF_SEED = 65536, 20240601  # the fixed reference sample that fixes a shape set's scaler


@functools.lru_cache(maxsize=None)
def _shape_scaler(name: str, options: tuple) -> Scaler:
    x, _ = _SHAPES[name](_REF_N, np.random.default_rng(_REF_SEED), **dict(options))
    return Scaler.standard(x)


def _mixture_scaler(gm: GaussianMixture) -> Scaler:
    return Scaler(gm.mean().numpy(), torch.sqrt(torch.diagonal(gm.covariance())).numpy())


def _load_toy(name: str, n: int | None, seed: int, scaler: Any = None, **options) -> Dataset:
    n = 10000 if n is None else n
    options = SOURCES.get(name).validate(options, fill=False, extra_valid=("scaler",))
    if name in MIXTURES:
        gm = toy_mixture(name)
        x, y = gm.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, return_labels=True)
        sc = _mixture_scaler(gm) if scaler is None else _as_scaler(scaler)
        exact = _mixture_to_model(gm, sc)
        y = y if gm.n_components > 1 else None  # component labels; none for a single Gaussian
    else:
        xa, ya = _SHAPES[name](n, np.random.default_rng(seed), **options)
        x, y = torch.from_numpy(xa), None if ya is None else torch.from_numpy(ya)
        sc = _shape_scaler(name, tuple(sorted(options.items()))) if scaler is None else _as_scaler(scaler)
        exact = None
    return Dataset(sc.to_model(x).float(), y, sc, name, "points", exact)


# ---------------------------------------------------------------------- digits
def _load_digits(n: int | None, seed: int, scaler: Any = None) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float64)).reshape(-1, 1, 8, 8)  # values 0..16
    y = torch.from_numpy(d.target.astype(np.int64))
    x, y = _subset(x, y, n, seed, "digits")
    sc = Scaler.from_range(0.0, 16.0) if scaler is None else _as_scaler(scaler)
    return Dataset(sc.to_model(x).float(), y, sc, "digits", "images")


SOURCES.add("digits", _load_digits, kind="images")
#: the built-in data set names
DATASETS = tuple(SOURCES.names())


# ---------------------------------------------------------------------- user data
def _check_array(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"{where}: data must be a real numeric array; got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{where}: data must have shape (N, D), (N, H, W) or (N, C, H, W); got shape {a.shape}")
    if a.shape[0] == 0 or a[0].size == 0:
        raise ValueError(f"{where}: data is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).reshape(len(a), -1).any(1).sum())
        raise ValueError(f"{where}: data contains NaN or Inf ({bad} of {len(a)} samples)")
    return a


def _read_arrays(path: str, key: str | None, label_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    if path.lower().endswith(".npy"):
        if key is not None or label_key is not None:
            raise ValueError(f"key and label_key apply to .npz files only; {path!r} is a .npy file")
        return np.load(path, allow_pickle=False), None
    with np.load(path, allow_pickle=False) as z:
        names = list(z.files)
        if key is None:
            key = next((k for k in ("x", "data", "images", "arr_0") if k in names), None)
            if key is None and len(names) == 1:
                key = names[0]
            if key is None:
                raise ValueError(f"{path}: cannot tell which array holds the data among {names}; pass key=")
        elif key not in names:
            raise ValueError(f"{path}: key={key!r} is not in the file; it holds {names}")
        if label_key is None:
            label_key = next((k for k in ("y", "labels", "targets") if k in names), None)
        elif label_key not in names:
            raise ValueError(f"{path}: label_key={label_key!r} is not in the file; it holds {names}")
        return z[key], (None if label_key is None else z[label_key])


def _check_labels(y: np.ndarray | None, n: int, where: str) -> Tensor | None:
    if y is None:
        return None
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError(f"{where}: labels must be non-negative integers of shape ({n},); got dtype {y.dtype}, shape {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def _image_scaler(a: np.ndarray, data_range, where: str) -> Scaler:
    if data_range is not None:
        if len(data_range) != 2:
            raise ValueError(f"data_range must be (lo, hi); got {data_range!r}")
        lo, hi = data_range
    elif a.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    elif a.min() >= 0.0 and a.max() <= 1.0:
        lo, hi = 0.0, 1.0
    else:
        raise ValueError(
            f"{where}: image values lie in [{a.min():g}, {a.max():g}], not in [0, 1] and not uint8; "
            "pass data_range=(lo, hi) (mapped to [-1, 1]) or scaling='standard'"
        )
    if a.min() < lo or a.max() > hi:
        raise ValueError(f"{where}: values in [{a.min():g}, {a.max():g}] fall outside data_range=({lo}, {hi})")
    return Scaler.from_range(lo, hi)


def _fit_scaler(a: np.ndarray, kind: str, scaling: str, data_range, where: str) -> Scaler:
    check_choice("scaling", scaling, SCALINGS)
    if scaling == "none":
        return Scaler()
    if scaling == "standard" or (scaling == "auto" and kind == "points"):
        if data_range is not None:
            raise ValueError("data_range applies to scaling='range' (the default for images) only")
        return Scaler.standard(a, per_feature=kind == "points")
    return _image_scaler(a, data_range, where)


def _as_images(a: np.ndarray, channels_last: bool, where: str) -> np.ndarray:
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        return np.moveaxis(a, -1, 1) if channels_last else a
    raise ValueError(f"{where}: data must have shape (N, D), (N, H, W) or (N, C, H, W); got shape {a.shape}")


def _load_arrays(path: str, n, seed, scaler=None, scaling="auto", data_range=None, channels_last=False,
                 key=None, label_key=None) -> Dataset:
    a, y = _read_arrays(path, key, label_key)
    a = _check_array(a, path)
    kind = "points" if a.ndim == 2 else "images"
    if kind == "images":
        a = _as_images(a, channels_last, path)
    elif channels_last:
        raise ValueError(f"channels_last applies to image arrays; {path} holds points of shape {a.shape}")
    yt = _check_labels(y, len(a), path)
    sc = _fit_scaler(a, kind, scaling, data_range, path) if scaler is None else _as_scaler(scaler)
    x = torch.from_numpy(a.astype(np.float64))
    x, yt = _subset(x, yt, n, seed, path)
    return Dataset(sc.to_model(x).float(), yt, sc, path, kind)


def _image_files(folder: str) -> tuple[list[str], list[int] | None]:
    """Image files directly in ``folder``, or in its class subfolders (labels = sorted subfolder index)."""
    def images_in(d):
        return sorted(os.path.join(d, f) for f in os.listdir(d)
                      if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(d, f)))

    files = images_in(folder)
    if files:
        return files, None
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    files, labels = [], []
    for i, c in enumerate(classes):
        f = images_in(os.path.join(folder, c))
        files += f
        labels += [i] * len(f)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder or its subfolders")
    return files, labels


def _read_image(path: str, channels: int, size) -> np.ndarray:
    try:
        from PIL import Image  # a dependency of matplotlib
    except ImportError as err:  # pragma: no cover - matplotlib requires pillow
        raise ImportError("reading image folders needs Pillow (pip install pillow)") from err
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None:
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else np.moveaxis(a, -1, 0)


def _load_folder(folder: str, n, seed, scaler=None, channels=None, size=None) -> Dataset:
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r} is not one of the accepted values: None (auto), 1, 3")
    if size is not None:
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"size must be an int or (H, W) of positive integers; got {size!r}")
        size = (int(size[0]), int(size[1]))
    files, labels = _image_files(folder)
    if channels is None:
        from PIL import Image

        def is_gray(f):
            with Image.open(f) as im:
                return im.mode in ("1", "L", "I", "I;16", "F")

        channels = 1 if all(is_gray(f) for f in files) else 3
    imgs = [_read_image(f, channels, size) for f in files]
    shapes = sorted({im.shape for im in imgs})
    if len(shapes) > 1:
        raise ValueError(f"{folder}: images have different sizes {[s[1:] for s in shapes][:4]}; pass size=(H, W) to resize")
    x = torch.from_numpy(np.stack(imgs).astype(np.float64))
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    x, y = _subset(x, y, n, seed, folder)
    sc = Scaler.from_range(0.0, 255.0) if scaler is None else _as_scaler(scaler)
    return Dataset(sc.to_model(x).float(), y, sc, folder, "images")


# ---------------------------------------------------------------------- front door
SOURCES.add("arrays", _load_arrays, kind="file", params={"scaling": Choice(SCALINGS), "channels_last": Bool()})
SOURCES.add("folder", _load_folder, kind="folder")


def _as_scaler(s: Any) -> Scaler:
    if isinstance(s, Scaler):
        return s
    if isinstance(s, dict):
        return Scaler.from_config(s)
    raise TypeError(f"scaler must be a Scaler or its config dict; got {type(s).__name__}")


def _subset(x: Tensor, y: Tensor | None, n: int | None, seed: int, where: str):
    """A seeded random subset of n samples (all of them, in order, when n is None)."""
    if n is None:
        return x, y
    if n > len(x):
        raise ValueError(f"n={n} exceeds the {len(x)} samples of {where}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], None if y is None else y[idx]


def load_dataset(name_or_path: str | os.PathLike, *, n: int | None = None, seed: int = 0, **kwargs: Any) -> Dataset:
    """Load a built-in dataset (:data:`DATASETS`) or user data, in model space.

    Args:
        name_or_path: a built-in name, a ``.npy`` / ``.npz`` file of shape (N, D) (points),
            (N, H, W) or (N, C, H, W) (images), or a folder of PNG/JPEG images (optionally in
            class subfolders, which give the labels).
        n: number of samples: generated for toy sets (default 10000); a seeded random subset
            otherwise (default all, in file order).
        seed: the seed of the toy-set generator / of the subset.
        kwargs: ``scaler`` (a Scaler or its config: use this scaling instead of fitting one) and
            per-source options: toy sets ``noise``; arrays ``scaling`` (auto/standard/range/none),
            ``data_range``, ``channels_last``, ``key``, ``label_key``; folders ``channels``, ``size``.
    """
    if isinstance(n, bool) or (n is not None and (int(n) != n or n < 1)):
        raise ValueError(f"n must be a positive integer or None; got {n!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    n = None if n is None else int(n)
    seed = int(seed)
    name = os.fspath(name_or_path)
    cfg_kwargs = {k: (v.config() if isinstance(v, Scaler) else v) for k, v in kwargs.items()}
    if name in TOY_SETS:
        ds = _load_toy(name, n, seed, **kwargs)
    elif name == "digits":
        _check_source("digits", kwargs)
        ds = _load_digits(n, seed, **kwargs)
    elif os.path.isdir(name):
        _check_source("folder", kwargs)
        ds = _load_folder(name, n, seed, **kwargs)
    elif name.lower().endswith(ARRAY_EXTENSIONS):
        if os.path.exists(name) and not os.path.isfile(name):
            raise ValueError(f"data file {name!r} is not a regular file (a device, pipe or socket): data are read from "
                             "regular .npy/.npz files only")
        if not os.path.isfile(name):
            raise FileNotFoundError(f"no such data file: {name!r}")
        _check_source("arrays", kwargs)
        ds = _load_arrays(name, n, seed, **kwargs)
    elif os.path.exists(name):
        raise ValueError(
            f"cannot read {name!r}: data files must end in {', '.join(ARRAY_EXTENSIONS)}, or be a folder of "
            f"{', '.join(IMAGE_EXTENSIONS)} images"
        )
    else:
        raise ValueError(
            f"dataset {name!r} is neither a built-in dataset ({', '.join(DATASETS)}) nor an existing "
            f"{'/'.join(ARRAY_EXTENSIONS)} file or image folder"
        )
    # a path is recorded absolute: a checkpoint resumed from another directory reads the same file (or fails)
    stored = name if name in DATASETS else os.path.abspath(name)
    ds._config = {"name": stored, "n": n, "seed": seed, "kwargs": cfg_kwargs}
    return ds


def _check_source(name: str, kwargs: dict) -> None:
    """Unknown options or bad values of a source raise, naming them (``scaler`` is every source's)."""
    SOURCES.get(name).validate({k: v for k, v in kwargs.items() if k != "scaler"}, fill=False, extra_valid=("scaler",))


def dataset_from_config(cfg: dict) -> Dataset:
    """Rebuild a dataset from :meth:`Dataset.config` (e.g. a checkpoint's, on resume).

    A stored config is untrusted: it must have the shape :meth:`Dataset.config` writes, and a path in it is
    only ever READ as data (``np.load(allow_pickle=False)`` or Pillow), and only when it is an existing
    regular .npy/.npz file or a folder (after following symlinks); a device, pipe, socket, missing path or
    other file is refused, naming the path. Paths are stored absolute (:func:`load_dataset`), so a resume
    from another directory reads the same file or fails, never a namesake.
    """
    from .registry import Int

    ok = (isinstance(cfg, dict) and isinstance(cfg.get("name"), str) and cfg["name"]
          and set(cfg) <= {"name", "n", "seed", "kwargs"}
          and (cfg.get("n") is None or Int(ge=1).accepts(cfg["n"])) and Int(ge=0).accepts(cfg.get("seed", 0))
          and isinstance(cfg.get("kwargs", {}), dict))
    if not ok:
        raise ValueError(f"a dataset config must be {{'name': str, 'n': None or int >= 1, 'seed': int >= 0, 'kwargs': "
                         f"{{...}}}}; got {cfg!r}"[:400])
    name = cfg["name"]
    if name not in DATASETS:
        real = os.path.realpath(name)
        if not (os.path.isdir(real) or (os.path.isfile(real) and real.lower().endswith(ARRAY_EXTENSIONS))):
            what = "does not exist" if not os.path.exists(real) else "is not a regular .npy/.npz file or a folder"
            raise ValueError(f"the stored data path {name!r} {what} (resolved: {real!r}); stored data are read only from "
                             "regular .npy/.npz files and image folders: pass the data explicitly (Trainer.resume(data=...))")
    return load_dataset(name, n=cfg.get("n"), seed=cfg.get("seed", 0), **cfg.get("kwargs", {}))
