"""A residual MLP score network for low-dimensional data (the toy-data network of score-SDE demos)."""

from __future__ import annotations

import math

import einops
from torch import Tensor, nn

from .embeddings import LabelEmbedding, conditioning, make_act, make_embedding

__all__ = ["MLP"]


def _pos_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


class _Block(nn.Module):
    """Pre-norm residual block: h + W2 act(W1 act(LN h) + E emb)."""

    def __init__(self, hidden: int, act: str, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = make_act(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(self.act(r)))


class MLP(nn.Module):
    """Residual MLP ``net(x, c_noise, y=None)`` for data of shape (B, dim) (or (B, *D) with dim elements).

    Args:
        dim: number of data features.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        emb_dim: size of the noise embedding (even), mapped to ``hidden`` by a 2-layer MLP.
        num_classes: labels 0..num_classes-1 (embedding added to the noise embedding); None: unconditional.
        act: ``silu``, ``gelu``, ``relu`` or ``tanh``.
        embedding: ``fourier`` (Gaussian Fourier features) or ``sinusoidal``.
        emb_scale: frequency scale of the embedding (16 for Fourier, 1000 for sinusoidal suits c_noise = t in [0, 1]).
        dropout: dropout rate inside the blocks.
    """

    name = "mlp"

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 128,
        num_classes: int | None = None,
        act: str = "silu",
        embedding: str = "fourier",
        emb_scale: float = 16.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        dim, hidden, depth = _pos_int("dim", dim), _pos_int("hidden", hidden), _pos_int("depth", depth)
        if not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout must lie in [0, 1); got {dropout!r}")
        if not math.isfinite(float(emb_scale)) or emb_scale <= 0:
            raise ValueError(f"emb_scale must be a positive number; got {emb_scale!r}")
        self._config = {
            "dim": dim, "hidden": hidden, "depth": depth, "emb_dim": int(emb_dim),
            "num_classes": None if num_classes is None else int(num_classes), "act": act,
            "embedding": embedding, "emb_scale": float(emb_scale), "dropout": float(dropout),
        }
        self.dim = dim
        self.embed = make_embedding(embedding, emb_dim, emb_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), make_act(act), nn.Linear(hidden, hidden))
        self.label = None if num_classes is None else LabelEmbedding(num_classes, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, act, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), make_act(act), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (B, dim) or (B, *D) with dim elements; c_noise: (B,) or scalar; y: (B,) labels or None."""
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) needs x of shape (B, {self.dim}) (or (B, *D) with {self.dim} elements); "
                             f"got {tuple(x.shape)}")
        emb = conditioning(self, c_noise, y, x)
        h = self.inp(einops.rearrange(x, "b ... -> b (...)"))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)

    def config(self) -> dict:
        """Constructor keyword arguments (plain JSON data): ``build_net("mlp", **net.config())`` rebuilds it."""
        return dict(self._config)
