"""A DDPM-style U-Net score network (Ho et al. 2020; Song et al. 2021's DDPM++ without its extras).

Residual blocks (GroupNorm, SiLU, 3x3 convolutions; the noise embedding enters as a per-channel
scale and shift after the second GroupNorm, the "scale-shift norm" of Dhariwal & Nichol 2021, which
a GroupNorm cannot cancel the way it cancels DDPM's additive per-channel bias), self-attention at
the chosen resolutions and in the middle, strided-convolution downsampling, nearest-neighbour +
convolution upsampling, skip connections from every down-path stage. Class labels are embedded and
added to the noise embedding.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, conditioning, make_act, make_embedding

__all__ = ["UNet"]


def _groups(ch: int) -> int:
    """The largest group count <= 32 that divides ch with at least 4 channels per group (else 1)."""
    return next((g for g in (32, 16, 8, 4, 2) if ch % g == 0 and ch // g >= 4), 1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block: h = conv(act(GN x)); h = conv(drop(act(GN(h) (1 + s) + b))); x' = skip(x) + h,
    with (s, b) = E emb per channel (scale-shift norm, Dhariwal & Nichol 2021)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, act: str, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.act, self.drop = make_act(act), nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = einops.rearrange(self.emb(emb), "b (n c) -> n b c 1 1", n=2)
        h = self.conv2(self.drop(self.act(self.norm2(h) * (1 + scale) + shift)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, num_heads: int):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {ch} of every attention layer")
        self.heads = num_heads
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        H, W = x.shape[-2:]
        q, k, v = einops.rearrange(self.qkv(self.norm(x)), "b (n h d) x y -> n b h (x y) d", n=3, h=self.heads)
        o = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(einops.rearrange(o, "b h (x y) d -> b (h d) x y", x=H, y=W))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """A residual block followed, at attention resolutions, by self-attention."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, act: str, dropout: float, attn: bool, num_heads: int):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, act, dropout)
        self.attn = AttnBlock(c_out, num_heads) if attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


def _int_tuple(name: str, v, *, allow_empty: bool) -> tuple[int, ...]:
    try:
        out = tuple(int(u) for u in v)
        ok = all(int(u) == u and u >= 1 for u in v) and (allow_empty or out)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive integers; got {v!r}")
    return out


class UNet(nn.Module):
    """U-Net ``net(x, c_noise, y=None)`` for images (B, in_channels, resolution, resolution).

    Args:
        in_channels: image channels (output has the same).
        channels: base width; level i has ``channels * channel_mult[i]`` channels.
        channel_mult: width multipliers, one per resolution level (len L: L-1 downsamplings, so
            ``resolution`` must be divisible by 2^(L-1)).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (side lengths) with self-attention after each block; the
            middle block always has attention.
        dropout: dropout in the residual blocks.
        num_classes: labels 0..num_classes-1 (embedding added to the noise embedding); None: unconditional.
        resolution: input side length (8 for digits, 32 for CIFAR-like data).
        num_heads: attention heads.
        act: activation (``silu`` default).
        embedding, emb_scale: noise embedding (``sinusoidal`` with scale 1000 = DDPM's timestep
            embedding of ``c_noise = t`` in [0, 1]; ``fourier`` with scale 16 = NCSN++'s for log sigma).
    """

    name = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mult=(1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions=(8,),
        dropout: float = 0.0,
        num_classes: int | None = None,
        resolution: int = 8,
        num_heads: int = 1,
        act: str = "silu",
        embedding: str = "sinusoidal",
        emb_scale: float = 1000.0,
    ):
        super().__init__()
        ints = {"in_channels": in_channels, "channels": channels, "num_res_blocks": num_res_blocks,
                "resolution": resolution, "num_heads": num_heads}
        for k, v in ints.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
                raise ValueError(f"{k} must be a positive integer; got {v!r}")
        mult = _int_tuple("channel_mult", channel_mult, allow_empty=False)
        attn_res = _int_tuple("attn_resolutions", attn_resolutions, allow_empty=True)
        levels = [int(resolution) // 2**i for i in range(len(mult))]
        if int(resolution) % 2 ** (len(mult) - 1):
            raise ValueError(f"resolution={resolution} must be divisible by 2^(len(channel_mult) - 1) = "
                             f"{2 ** (len(mult) - 1)} for channel_mult={mult}")
        bad = [r for r in attn_res if r not in levels]
        if bad:
            raise ValueError(f"attn_resolutions={attn_res} has {bad} which the U-Net never reaches; its resolutions are {levels}")
        if not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout must lie in [0, 1); got {dropout!r}")
        if not math.isfinite(float(emb_scale)) or emb_scale <= 0:
            raise ValueError(f"emb_scale must be a positive number; got {emb_scale!r}")
        ch0, L, nrb, nh = int(channels), len(mult), int(num_res_blocks), int(num_heads)
        self._config = {
            "in_channels": int(in_channels), "channels": ch0, "channel_mult": list(mult), "num_res_blocks": nrb,
            "attn_resolutions": list(attn_res), "dropout": float(dropout),
            "num_classes": None if num_classes is None else int(num_classes), "resolution": int(resolution),
            "num_heads": nh, "act": act, "embedding": embedding, "emb_scale": float(emb_scale),
        }
        self.in_channels, self.resolution = int(in_channels), int(resolution)
        emb_dim = 4 * ch0
        self.embed = make_embedding(embedding, ch0 if ch0 % 2 == 0 else ch0 + 1, emb_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(self.embed.dim, emb_dim), make_act(act), nn.Linear(emb_dim, emb_dim))
        self.label = None if num_classes is None else LabelEmbedding(num_classes, emb_dim)
        self.conv_in = nn.Conv2d(self.in_channels, ch0, 3, padding=1)

        def stage(c_in, c_out, res):
            return _Stage(c_in, c_out, emb_dim, act, dropout, res in attn_res, nh)

        # Down path: every unit's output is kept as a skip connection.
        self.down = nn.ModuleList()
        skips, ch = [ch0], ch0
        for i, m in enumerate(mult):
            for _ in range(nrb):
                self.down.append(stage(ch, ch0 * m, levels[i]))
                ch = ch0 * m
                skips.append(ch)
            if i < L - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, act, dropout), AttnBlock(ch, nh),
                                  ResBlock(ch, ch, emb_dim, act, dropout)])
        # Up path: each residual unit consumes one skip (concatenated on channels).
        self.up = nn.ModuleList()
        for i in reversed(range(L)):
            for _ in range(nrb + 1):
                self.up.append(stage(ch + skips.pop(), ch0 * mult[i], levels[i]))
                ch = ch0 * mult[i]
            if i > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(_norm(ch), make_act(act), nn.Conv2d(ch, self.in_channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, resolution, resolution); c_noise: (B,) or scalar; y: (B,) labels or None."""
        want = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"UNet needs x of shape (B, {', '.join(map(str, want))}); got {tuple(x.shape)}")
        emb = conditioning(self, c_noise, y, x)
        h = self.conv_in(x)
        hs = [h]
        for unit in self.down:
            h = unit(h, emb)
            hs.append(h)
        for unit in self.mid:
            h = unit(h, emb)
        for unit in self.up:
            h = unit(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(unit, _Stage) else unit(h, emb)
        return self.out(h)

    def config(self) -> dict:
        """Constructor keyword arguments (plain JSON data): ``build_net("unet", **net.config())`` rebuilds it."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}
