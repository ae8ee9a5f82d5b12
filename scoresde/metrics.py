"""Distances between sample sets, each with its noise floor."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein"]


def _flat64(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"{name} must be a tensor of shape (N, *D); got {getattr(x, 'shape', type(x).__name__)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, n_projections: int = 256, generator: torch.Generator | None = None, p: int = 2
) -> float:
    """Sliced Wasserstein-p distance between two equal-size sample sets (N, *D).

    Averages W_p^p of the 1-D projections on ``n_projections`` random unit directions (drawn from
    ``generator``, default seed 0 for reproducibility) and returns its p-th root.
    """
    a, b = _flat64(x, "x"), _flat64(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same shape (N, D); got {tuple(a.shape)} and {tuple(b.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dirs = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    dirs = dirs.to(a.device)
    pa = torch.sort(a @ dirs, dim=0).values
    pb = torch.sort(b @ dirs, dim=0).values
    return float((pa - pb).abs().pow(p).mean()) ** (1.0 / p)
