"""Randomness with one seed per sample.

Sample ``i`` of a request must not depend on the batch it was drawn in, nor on how a request is
split over batches or processes. :class:`PerSampleNoise` gives that guarantee with a
counter-based generator (Philox4x32-10, Salmon et al. 2011, the generator of cuRAND and JAX):
the k-th normal draw for sample i, element j is a pure function of ``(seed_i, k, j)``, computed
for the whole batch with vectorised integer arithmetic on any device, with no per-sample loop
and no host synchronisation.

Any object with ``__call__(like: Tensor) -> Tensor`` (standard normal noise of ``like``'s
shape, dtype and device) is a noise source; :class:`GeneratorNoise` wraps one
``torch.Generator`` (fast, but batch-dependent) and :class:`TensorNoise` replays given draws.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

__all__ = ["NoiseSource", "IndexedNoise", "PerSampleNoise", "GeneratorNoise", "TensorNoise", "philox_normal", "make_seeds",
           "draw_indexed", "stream_position", "advance_stream"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


class NoiseSource(Protocol):
    def __call__(self, like: Tensor) -> Tensor:  # standard normal noise shaped like ``like``
        ...


@runtime_checkable
class IndexedNoise(Protocol):
    """A noise source whose draws are indexed per sample (counter-based, e.g. :class:`PerSampleNoise`).

    ``draws`` is the index of the next batch-wide draw; ``draw_per_sample(like, counters)`` gives
    sample i its draw number ``counters[i]``, so samples that advance at their own pace (adaptive
    steps) still get a noise stream that does not depend on the batch.
    """

    draws: int

    def __call__(self, like: Tensor) -> Tensor: ...

    def draw_per_sample(self, like: Tensor, counters: Tensor) -> Tensor: ...


def stream_position(noise: NoiseSource) -> int:
    """The next draw index of an indexed source (0 for any other source)."""
    return int(noise.draws) if isinstance(noise, IndexedNoise) else 0


def draw_indexed(noise: NoiseSource, like: Tensor, counters: Tensor) -> Tensor:
    """Sample i's draw number ``counters[i]`` from an indexed source; the next batch draw from any other."""
    return noise.draw_per_sample(like, counters) if isinstance(noise, IndexedNoise) else noise(like)


def advance_stream(noise: NoiseSource, position: int) -> None:
    """Move an indexed source's batch stream to ``position`` (no-op for other sources), so later draws stay
    disjoint from the per-sample draws made below it."""
    if isinstance(noise, IndexedNoise):
        noise.draws = max(int(noise.draws), int(position))


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of a * b for a 32-bit constant a and int64 tensor b in [0, 2^32)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_lo = b * a_lo  # < 2^48: exact in int64
    p_hi = b * a_hi
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor, rounds: int = 10):
    """Philox4x32 on int64 tensors holding 32-bit words (broadcasting). Returns 4 words."""
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def philox_normal(seeds: Tensor, draw: int, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normals of shape (B, n): row i is a function of (seeds[i], draw) only."""
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be 1-D; got shape {tuple(seeds.shape)}")
    counters = torch.full(seeds.shape, int(draw), dtype=torch.int64, device=seeds.device)
    return philox_normal_counters(seeds, counters, n, dtype)


def make_seeds(batch: int, *, generator: torch.Generator | None = None, seeds=None, device=None) -> Tensor:
    """Per-sample int64 seeds: given explicitly, or drawn from ``generator`` (prefix-stable:
    the first i seeds do not depend on ``batch``), or from torch's default generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if seeds is not None:
        if isinstance(seeds, Tensor):
            if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
                raise ValueError(f"seeds must be integers; got a tensor of dtype {seeds.dtype}")
        else:
            if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
                raise TypeError(f"seeds must be a 1-D sequence or tensor of {batch} integers; got {seeds!r}")
            seeds = list(seeds)
            bad = [v for v in seeds if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
            if bad:
                raise ValueError(f"seeds must be non-negative integers; got {bad[0]!r} (no rounding of non-integers)")
            big = [v for v in seeds if not 0 <= int(v) < 2**63]
            if big:
                raise ValueError(f"seeds must be non-negative integers below 2**63; got {big[0]!r}")
        s = torch.as_tensor(seeds, dtype=torch.int64)
        if s.ndim != 1 or s.shape[0] != batch:
            raise ValueError(f"seeds must be a 1-D sequence of {batch} integers (one per sample); got shape {tuple(s.shape)}")
        if bool((s < 0).any()):
            raise ValueError("seeds must be non-negative integers")
        return s.to(device)
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    # CPU draws are sequential, so seed i is the same for any batch >= i + 1.
    s = torch.randint(0, 2**62, (batch,), generator=generator, device=gen_dev, dtype=torch.int64)
    return s.to(device)


class PerSampleNoise:
    """Counter-based noise: draw k for sample i depends only on (seeds[i], k).

    ``subset(idx)`` gives the noise source of a subset of the samples that continues their
    streams (used by samplers that advance samples independently, e.g. adaptive steps).
    """

    def __init__(self, seeds: Tensor, start: int = 0):
        self.seeds = seeds
        self.draws = start

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != self.seeds.shape[0]:
            raise ValueError(f"noise asked for a batch of {like.shape[0]}, but there are {self.seeds.shape[0]} seeds")
        seeds = self.seeds.to(like.device)
        n = like[0].numel()
        z = philox_normal(seeds, self.draws, n, dtype=like.dtype if like.is_floating_point() else torch.float32)
        self.draws += 1
        return z.reshape(like.shape)

    def draw_per_sample(self, like: Tensor, counters: Tensor) -> Tensor:
        """Noise for sample i at its own draw index counters[i] (int64 tensor, (B,))."""
        n = like[0].numel()
        out = philox_normal_counters(self.seeds.to(like.device), counters.to(like.device), n, like.dtype)
        return out.reshape(like.shape)


def philox_normal_counters(seeds: Tensor, counters: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """Like :func:`philox_normal` but with a per-sample draw index ``counters`` (B,)."""
    dev = seeds.device
    nb = (n + 3) // 4
    s = seeds.to(torch.int64)
    B = len(s)
    k0 = (s & _MASK32)[:, None].expand(B, nb)
    k1 = ((s >> 32) & _MASK32)[:, None].expand(B, nb)
    c0 = torch.arange(nb, device=dev, dtype=torch.int64)[None, :].expand(B, nb)
    cnt = counters.to(torch.int64)
    c1 = (cnt & _MASK32)[:, None].expand(B, nb)
    c2 = ((cnt >> 32) & _MASK32)[:, None].expand(B, nb)
    c3 = torch.full((B, nb), 0x5C0E5DE, device=dev, dtype=torch.int64)
    r = philox4x32(c0, c1, c2, c3, k0, k1)
    u = [(w.to(torch.float64) + 0.5) * (1.0 / 4294967296.0) for w in r]
    rad0 = torch.sqrt(-2.0 * torch.log(u[0]))
    rad1 = torch.sqrt(-2.0 * torch.log(u[2]))
    z = torch.stack(
        [rad0 * torch.cos(2 * math.pi * u[1]), rad0 * torch.sin(2 * math.pi * u[1]),
         rad1 * torch.cos(2 * math.pi * u[3]), rad1 * torch.sin(2 * math.pi * u[3])],
        dim=-1,
    )
    return z.reshape(B, nb * 4)[:, :n].to(dtype)


class GeneratorNoise:
    """Noise from one ``torch.Generator`` for the whole batch (batch-dependent; fastest)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, like: Tensor) -> Tensor:
        g = self.generator
        dev = g.device if g is not None else like.device
        z = torch.randn(like.shape, generator=g, device=dev, dtype=like.dtype)
        return z.to(like.device)


class TensorNoise:
    """Replays the given draws in order (e.g. a shared Brownian path); raises when exhausted."""

    def __init__(self, draws: Iterable[Tensor] | Sequence[Tensor]):
        self._it = iter(draws)
        self.used = 0

    def __call__(self, like: Tensor) -> Tensor:
        try:
            z = next(self._it)
        except StopIteration:
            raise RuntimeError(f"TensorNoise ran out of draws after {self.used}") from None
        if z.shape != like.shape:
            raise ValueError(f"noise draw {self.used} has shape {tuple(z.shape)}, expected {tuple(like.shape)}")
        self.used += 1
        return z.to(device=like.device, dtype=like.dtype)
