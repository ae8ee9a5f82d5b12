"""Figures: sample scatters and image grids, written atomically.

Every figure the project writes goes through :func:`save_figure`: rendered to memory, then written
with :func:`scoresde._utils.atomic_write_bytes` (temp file, fsync, rename), so an interrupted run
never leaves a torn PNG. matplotlib is imported lazily with the Agg backend.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._utils import atomic_write_bytes

__all__ = ["pyplot", "save_figure", "save_sample_figure", "image_range", "image_grid_figure", "to_uint8",
           "save_image_pngs"]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def image_range(scaler: Any, shape: tuple[int, ...]) -> tuple[float, float]:
    """The data-space value range of images whose model space is [-1, 1] (the convention of
    :mod:`scoresde.data`), through ``scaler`` (None: [-1, 1])."""
    ends = torch.stack([-torch.ones(shape), torch.ones(shape)])
    if scaler is not None:
        ends = scaler.from_model(ends)
    return float(ends.min()), float(ends.max())


def save_sample_figure(x: Tensor, path: str | os.PathLike, *, title: str | None = None,
                       value_range: tuple[float, float] | None = None, cols: int | None = None) -> Path:
    """A PNG of samples in data space: scatter for (N, 2) points, a grid for (N, C, H, W) images.

    Images are shown clipped to ``value_range`` (default: the 0.5% and 99.5% quantiles of x), in
    rows of ``cols`` (default: a near-square grid).
    """
    plt = pyplot()
    x = x.detach().float().cpu()
    if x.ndim == 4:
        if value_range is None:
            q = torch.quantile(x.flatten()[:1_000_000].double(), torch.tensor([0.005, 0.995], dtype=torch.float64))
            value_range = (float(q[0]), float(q[1]))
        lo, hi = value_range
        fig = image_grid_figure(x.clamp(lo, hi), lo, max(hi, lo + 1e-12), cols=cols)
    else:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] < 2:
            flat = torch.cat([flat, torch.zeros_like(flat)], 1)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), s=2, alpha=0.5, lw=0)
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def image_grid_figure(x: Tensor, lo: float, hi: float, cols: int | None = None):
    """A figure of the images x (N, C, H, W) in rows of ``cols`` (default: a near-square grid) with grey
    separators."""
    plt = pyplot()
    n, c, h, w = x.shape
    cols = int(math.ceil(math.sqrt(n))) if cols is None else max(1, min(int(cols), n))
    rows = int(math.ceil(n / cols))
    grid = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), lo + 0.35 * (hi - lo))  # grey separators
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
    img = grid[0] if c == 1 else ((grid - lo) / (hi - lo)).permute(1, 2, 0).clamp(0, 1)
    fig, ax = plt.subplots(figsize=(max(3.0, cols * 0.7), max(3.0, rows * 0.7)))
    ax.imshow(img.numpy(), cmap="gray" if c == 1 else None, vmin=lo if c == 1 else None, vmax=hi if c == 1 else None,
              interpolation="nearest")
    ax.axis("off")
    return fig


def to_uint8(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Images x (N, C, H, W) in data space as uint8: ``value_range`` (lo, hi) maps to 0..255, rounded to
    the nearest integer (ties to even) and clipped."""
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo; got {value_range!r}")
    x = x.detach().to(device="cpu", dtype=torch.float64)
    return ((x - lo) * (255.0 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)


def save_image_pngs(x: Tensor, folder: str | os.PathLike, *, value_range: tuple[float, float],
                    names: list[str] | None = None) -> list[Path]:
    """One PNG per image of x (N, C, H, W), C = 1 (grey) or 3 (RGB), for external tools (FID): pixel
    values from :func:`to_uint8`, each file written atomically; names default to ``000000.png``, ...
    (the row index)."""
    from PIL import Image  # a dependency of matplotlib

    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"PNG export needs images of shape (N, 1 or 3, H, W); got {got}")
    names = [f"{i:06d}.png" for i in range(x.shape[0])] if names is None else names
    if len(names) != x.shape[0]:
        raise ValueError(f"names must give one file name per image ({x.shape[0]}); got {len(names)}")
    u8 = to_uint8(x, value_range)
    folder = Path(folder)
    paths = []
    for img, name in zip(u8, names, strict=True):
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).contiguous().numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="png")  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
        atomic_write_bytes(folder / name, buf.getvalue())
        paths.append(folder / name)
    return paths
