"""Noise-level embeddings: sinusoidal (Vaswani et al. 2017; Ho et al. 2020) and Gaussian Fourier
features (Tancik et al. 2020; Song et al. 2021, NCSN++).

Both map ``c_noise`` (B,) -- whatever scalar the model wrapper feeds the network (t, sigma, log
sigma, ...) -- to (B, dim). The networks know nothing about SDEs; ``scale`` adapts the frequencies
to the range of ``c_noise`` (DDPM feeds ``1000 t`` to a sinusoidal embedding; NCSN++ feeds
``log sigma`` to Fourier features of scale 16).
"""

from __future__ import annotations

import math

import einops
import torch
from torch import Tensor, nn

from .._utils import check_choice

__all__ = [
    "SinusoidalEmbedding",
    "FourierEmbedding",
    "LabelEmbedding",
    "make_embedding",
    "make_act",
    "EMBEDDINGS",
    "ACTIVATIONS",
]


def _check_dim(dim: int) -> int:
    if isinstance(dim, bool) or int(dim) != dim or dim < 2 or dim % 2:
        raise ValueError(f"the embedding dim must be an even integer >= 2; got {dim!r}")
    return int(dim)


def _as_batch(c_noise: Tensor, batch: int | None) -> Tensor:
    """c_noise as a floating (B,) tensor; a scalar is broadcast to ``batch`` when given."""
    if not isinstance(c_noise, Tensor):
        c_noise = torch.as_tensor(c_noise)
    c = c_noise if c_noise.is_floating_point() else c_noise.float()
    if c.ndim == 0 and batch is not None:
        return c.expand(batch)
    if c.ndim > 1 or (batch is not None and c.shape[0] != batch):
        want = f"({batch},)" if batch is not None else "(B,)"
        raise ValueError(f"c_noise must be a scalar or a tensor of shape {want}; got shape {tuple(c.shape)}")
    return c.reshape(-1)


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5; DDPM's timestep embedding).

    ``emb = [cos(scale c w_k), sin(scale c w_k)]``, ``w_k = max_period^(-k / (dim/2))``,
    k = 0..dim/2-1.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        self.dim = _check_dim(dim)
        self.scale = float(scale)
        self.max_period = float(max_period)

    def forward(self, c_noise: Tensor, batch: int | None = None) -> Tensor:  # (B,) -> (B, dim)
        c = _as_batch(c_noise, batch)
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period) / half * torch.arange(half, dtype=c.dtype, device=c.device))
        arg = einops.rearrange(self.scale * c, "b -> b 1") * freqs
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class FourierEmbedding(nn.Module):
    """Gaussian Fourier features (Tancik et al. 2020; Song et al. 2021's NCSN++ time embedding).

    ``emb = [sin(2 pi c W_k), cos(2 pi c W_k)]`` with fixed ``W ~ N(0, scale^2)`` drawn from
    ``seed`` (so a rebuilt network has the same features; W is also saved in the state dict).
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        self.dim = _check_dim(dim)
        self.scale = float(scale)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("W", torch.randn(self.dim // 2, generator=g) * self.scale)

    def forward(self, c_noise: Tensor, batch: int | None = None) -> Tensor:  # (B,) -> (B, dim)
        c = _as_batch(c_noise, batch)
        arg = 2 * math.pi * einops.rearrange(c, "b -> b 1") * self.W.to(c.dtype)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


EMBEDDINGS = {"sinusoidal": SinusoidalEmbedding, "fourier": FourierEmbedding}


def make_embedding(kind: str, dim: int, scale: float) -> nn.Module:
    check_choice("embedding", kind, EMBEDDINGS)
    return EMBEDDINGS[kind](dim, scale=scale)


class LabelEmbedding(nn.Module):
    """Class-label embedding with a null label (index ``num_classes``) for ``y=None``.

    The null label lets a network trained with label dropout serve both conditional and
    unconditional calls (classifier-free guidance, Ho & Salimans 2022).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None; got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.table = nn.Embedding(self.num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:  # -> (B, dim)
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif not isinstance(y, Tensor) or y.shape != (batch,) or y.is_floating_point() or y.is_complex():
            got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"y must be an integer tensor of shape ({batch},) with labels in [0, {self.num_classes}] "
                f"({self.num_classes} = no label); got {got}"
            )
        return self.table(y.long())


def conditioning(net: nn.Module, c_noise: Tensor, y: Tensor | None, x: Tensor) -> Tensor:
    """The (B, E) conditioning vector of a network with ``embed``, ``emb_mlp`` and ``label`` (or None):
    the noise-level embedding, plus the label embedding (the null label when y is None)."""
    B = x.shape[0]
    emb = net.emb_mlp(net.embed(c_noise, B).to(x.dtype))
    if net.label is not None:
        return emb + net.label(y, B, x.device)
    if y is not None:
        raise ValueError("y was given but the network is unconditional (num_classes=None)")
    return emb


ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def make_act(act: str) -> nn.Module:
    check_choice("act", act, ACTIVATIONS)
    return ACTIVATIONS[act]()
