"""A small CNN classifier of the 8x8 digits, for a Frechet distance ("FID") and a kernel distance ("KID") of the digits.

FID (Heusel et al. 2017) compares Gaussians fitted to the features of a pretrained classifier.
For the 8x8 digits of :func:`sklearn.datasets.load_digits` we train our own classifier: two 3x3
convolutions, a 2x2 max-pool and a 64-unit hidden layer (the features), trained reproducibly on
CPU in a few seconds (fixed seed, fixed epochs, one thread, float32). Images are (N, 1, 8, 8) in
[-1, 1] (pixel value v in 0..16 maps to v / 8 - 1).

The trained weights are cached as safetensors under ``$SCORESDE_CACHE`` (default
``$XDG_CACHE_HOME/scoresde`` or ``~/.cache/scoresde``), in a file named by a hash of the training
config; a changed config trains a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ._utils import atomic_write_bytes
from .metrics import METRICS, frechet_distance_from_samples, kernel_distance

__all__ = [
    "DigitsConfig",
    "DigitsCNN",
    "load_digits_split",
    "train_digits_classifier",
    "digits_classifier",
    "digits_features",
    "digits_logits",
    "digits_classifier_accuracy",
    "frechet_digits_distance",
    "kernel_digits_distance",
    "cache_dir",
]


@dataclass(frozen=True)
class DigitsConfig:
    """Everything that determines the trained weights (hashed into the cache file name)."""

    seed: int = 0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 4e-3
    weight_decay: float = 1e-4
    test_fraction: float = 0.2
    split_seed: int = 0
    channels: tuple[int, int] = (8, 16)
    features: int = 64
    version: int = 1  # bump when the architecture or training loop changes

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class DigitsCNN(nn.Module):
    """conv3x3(1->c1) ReLU conv3x3(c1->c2) ReLU maxpool2 -> linear(c2*16 -> F) ReLU [features] -> linear(F -> 10)."""

    def __init__(self, channels: tuple[int, int] = (8, 16), features: int = 64):
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * 16, features), nn.ReLU(),
        )
        self.head = nn.Linear(features, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def cache_dir() -> str:
    """$SCORESDE_CACHE, else $XDG_CACHE_HOME/scoresde, else ~/.cache/scoresde."""
    if os.environ.get("SCORESDE_CACHE"):
        return os.environ["SCORESDE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scoresde")


def load_digits_split(config: DigitsConfig = DigitsConfig()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The digits as (N, 1, 8, 8) float32 in [-1, 1] and int64 labels: (x_train, y_train, x_test, y_test).

    A stratified split with ``config.test_fraction`` and ``config.split_seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.as_tensor(d.target, dtype=torch.int64)
    idx_tr, idx_te = train_test_split(
        range(len(y)), test_size=config.test_fraction, random_state=config.split_seed, stratify=d.target
    )
    idx_tr, idx_te = torch.as_tensor(idx_tr), torch.as_tensor(idx_te)
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


@contextmanager
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in a fixed order: bit-reproducible training
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_digits_classifier(config: DigitsConfig = DigitsConfig()) -> DigitsCNN:
    """Train the classifier from scratch (deterministic: same config -> same weights, bit for bit)."""
    x_tr, y_tr, _, _ = load_digits_split(config)
    with _one_thread(), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(config.seed)  # parameter initialisation
        net = DigitsCNN(config.channels, config.features)
        g = torch.Generator().manual_seed(config.seed + 1)  # mini-batch order
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        net.train()
        for _ in range(config.epochs):
            perm = torch.randperm(len(y_tr), generator=g)
            for i in range(0, len(perm), config.batch_size):
                b = perm[i : i + config.batch_size]
                loss = nn.functional.cross_entropy(net(x_tr[b]), y_tr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval().requires_grad_(False)


_MEMO: dict[str, DigitsCNN] = {}


def digits_classifier(config: DigitsConfig = DigitsConfig(), *, cache: bool = True) -> DigitsCNN:
    """The trained classifier (eval mode, float32, CPU): from memory, the cache file, or trained now."""
    key = config.key()
    if key in _MEMO:
        return _MEMO[key]
    from safetensors.torch import load_file, save

    path = os.path.join(cache_dir(), f"digits_cnn-{key}.safetensors")
    if cache and os.path.isfile(path):
        net = DigitsCNN(config.channels, config.features)
        net.load_state_dict(load_file(path))
        net = net.eval().requires_grad_(False)
    else:
        net = train_digits_classifier(config)
        if cache:
            state = {k: v.contiguous() for k, v in net.state_dict().items()}
            atomic_write_bytes(path, save(state, metadata={"config": json.dumps(asdict(config), sort_keys=True)}))
    _MEMO[key] = net
    return net


def _images(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 2 or x[0].numel() != 64:
        raise ValueError(f"digits must have shape (N, 1, 8, 8) or (N, 64); got {getattr(x, 'shape', type(x).__name__)}")
    return x.reshape(x.shape[0], 1, 8, 8).to(device="cpu", dtype=torch.float32)


@torch.no_grad()
def digits_features(x: Tensor, config: DigitsConfig = DigitsConfig(), batch_size: int = 4096) -> Tensor:
    """Penultimate-layer features (N, F) float64 of digits x (N, 1, 8, 8) or (N, 64) in [-1, 1]."""
    net, x = digits_classifier(config), _images(x)
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]).double()


@torch.no_grad()
def digits_logits(x: Tensor, config: DigitsConfig = DigitsConfig(), batch_size: int = 4096) -> Tensor:
    """Class logits (N, 10) float64 of digits x."""
    net, x = digits_classifier(config), _images(x)
    return torch.cat([net(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]).double()


def digits_classifier_accuracy(config: DigitsConfig = DigitsConfig()) -> float:
    """Accuracy of the (cached) classifier on the held-out test split, computed now."""
    _, _, x_te, y_te = load_digits_split(config)
    return float((digits_logits(x_te, config).argmax(1) == y_te).double().mean())


def frechet_digits_distance(x: Tensor, y: Tensor, config: DigitsConfig = DigitsConfig()) -> float:
    """Frechet distance between Gaussians fitted to the classifier features of x and y (the digits' FID)."""
    return frechet_distance_from_samples(digits_features(x, config), digits_features(y, config))


def kernel_digits_distance(x: Tensor, y: Tensor, config: DigitsConfig = DigitsConfig()) -> float:
    """KID of the digits: :func:`~scoresde.metrics.kernel_distance` (unbiased MMD^2, cubic polynomial kernel;
    Binkowski et al. 2018) of the classifier features of x and y, on the full sets."""
    return kernel_distance(digits_features(x, config), digits_features(y, config))


METRICS.add("fd", frechet_digits_distance, label="FD", kind="distance", aliases=("frechet_digits",))
METRICS.add("kd", kernel_digits_distance, label="KD", kind="distance", aliases=("kid_digits",))
