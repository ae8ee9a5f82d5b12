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
import sys
from typing import Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "NoiseSource", "IndexedNoise", "PerSampleNoise", "GeneratorNoise", "TensorNoise", "philox_normal",
    "philox_normal_reference", "make_seeds", "draw_indexed", "stream_position", "advance_stream", "NOISE_KERNELS",
]

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

    ``draws`` is the index of the next draw (assignable, e.g. to skip past draws made elsewhere).
    Draws are generated a block at a time (up to ``prefetch`` draws of the same shape and dtype,
    within about 2^15 Philox blocks per call) and served in order; the values are those of
    :func:`philox_normal_reference`, bit for bit, whatever the block.
    """

    #: at most this many (sample, 4-element block) counters per generating call
    BLOCK_BUDGET = 1 << 15

    def __init__(self, seeds: Tensor, start: int = 0, *, prefetch: int = 64, kernel: str = "torch"):
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be a positive integer (draws generated per call); got {prefetch!r}")
        if kernel not in NOISE_KERNELS:
            raise ValueError(f"kernel={kernel!r} is not one of the accepted values: {', '.join(map(repr, NOISE_KERNELS))}")
        self._seeds = seeds
        self.draws = start
        self.prefetch = prefetch
        #: how the Philox rounds run: "torch" (vectorised eager ops) or "compiled" (one torch.compile-d
        #: integer kernel; the first call per block shape compiles, tens of seconds on a small CPU)
        self.kernel = kernel
        self._keys: dict[torch.device, Tensor] = {}
        self._buf: tuple | None = None  # (key, first draw, (L, B, n) normals)

    @property
    def seeds(self) -> Tensor:
        return self._seeds

    @seeds.setter
    def seeds(self, value: Tensor) -> None:
        self._seeds, self._keys, self._buf = value, {}, None

    def round_keys(self, device: torch.device) -> Tensor:
        """The per-round Philox keys of the seeds on ``device`` (computed once per device)."""
        keys = self._keys.get(device)
        if keys is None:
            keys = self._keys[device] = _round_keys(self._seeds.to(device))
        return keys

    def __call__(self, like: Tensor) -> Tensor:
        # The block in hand serves the next draw when shape, dtype and device match (one tuple compare).
        key = (like.shape, like.dtype, like.device)
        k = self.draws
        buf = self._buf
        if buf is None or buf[0] != key or not buf[1] <= k < buf[1] + len(buf[2]):
            buf = self._buf = self._block(like, key, k)
        self.draws = k + 1
        return buf[2][k - buf[1]]

    def _block(self, like: Tensor, key: tuple, k: int) -> tuple:
        """Generate the block of draws k, k+1, ... for ``like``: (key, first draw, list of draws)."""
        B = like.shape[0] if like.ndim else 0
        if B != self._seeds.shape[0]:
            raise ValueError(f"noise asked for a batch of {B}, but there are {self._seeds.shape[0]} seeds")
        n = like[0].numel()
        dtype = like.dtype if like.is_floating_point() else torch.float32
        L = max(1, min(self.prefetch, self.BLOCK_BUDGET // (B * ((n + 3) // 4))))
        draws = torch.arange(k, k + L, device=like.device, dtype=torch.int64)[:, None, None]
        z = _normals(self.round_keys(like.device), draws, n, dtype, self.kernel)
        return key, k, list(z.reshape(L, *like.shape).unbind(0))

    def draw_per_sample(self, like: Tensor, counters: Tensor) -> Tensor:
        """Noise for sample i at its own draw index counters[i] (int64 tensor, (B,))."""
        n = like[0].numel()
        cnt = counters.to(device=like.device, dtype=torch.int64)[None, :, None]
        return _normals(self.round_keys(like.device), cnt, n, like.dtype, self.kernel)[0].reshape(like.shape)


def philox_normal_counters(seeds: Tensor, counters: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """Like :func:`philox_normal` but with a per-sample draw index ``counters`` (B,)."""
    keys = _round_keys(seeds.to(torch.int64))
    cnt = counters.to(device=seeds.device, dtype=torch.int64)
    return _normals(keys, cnt[None, :, None], n, dtype)[0]


# ------------------------------------------------------------------ the fast path (eager torch)
# The same Philox4x32-10 words and the same Box-Muller arithmetic as the reference below, with
# far fewer tensor operations: the round keys depend on the seeds only and are computed once per
# noise source; the two multiplications of a round run as one product of a stacked (2, ...)
# tensor, with the 64-bit product taken modulo 2^64 (int64 multiplication wraps) and split by a
# shift and masks; Box-Muller runs on the stacked words. Several draws are generated per call
# (PerSampleNoise prefetches a block), so the per-operation cost is shared between draws.
_ROUNDS = 10
_MULT = (_M0, _M1)
_LITTLE_ENDIAN = sys.byteorder == "little"  # the int32 views of int64 products below assume it


def _as_i32(v: Tensor) -> Tensor:
    """int64 values in [0, 2^32) -> int32 with the same 32 bits."""
    return torch.where(v >= 2**31, v - 2**32, v).to(torch.int32)


def _round_keys(seeds: Tensor) -> Tensor:
    """(10, 2, 1, B, 1) int32: the Philox key (k0, k1) of every round for every seed (as 32-bit patterns)."""
    s = seeds.to(torch.int64)
    k = torch.stack([s & _MASK32, (s >> 32) & _MASK32])  # (2, B)
    bumps = torch.tensor([[r * _W0, r * _W1] for r in range(_ROUNDS)], dtype=torch.int64, device=s.device)
    return _as_i32((k[None] + bumps[:, :, None]) & _MASK32)[:, :, None, :, None]


_MULT_CACHE: dict[torch.device, Tensor] = {}


def _multipliers(device: torch.device) -> Tensor:
    """(2,) int64 Philox multipliers on ``device``, made once per device (so that a draw inside a
    CUDA graph capture makes no host-to-device copy)."""
    M = _MULT_CACHE.get(device)
    if M is None:
        M = _MULT_CACHE[device] = torch.tensor(_MULT, dtype=torch.int64, device=device)
    return M


def _philox_words(keys: Tensor, draws: Tensor, nb: int) -> Tensor:
    """(4, L, B, nb) int64 words for counters (block j, draw lo, draw hi, 0x5C0E5DE).

    ``draws`` is (L, 1, 1) (the same draw for every sample) or (1, B, 1) (a draw per sample).
    The state is held as int32 bit patterns; each round widens the two multiplicands to int64
    (zero high words, one stack), multiplies (both factors < 2^32, so the product modulo 2^64 is
    exact), and reads the products' low and high words back as an int32 view (little-endian).
    """
    dev, i32 = keys.device, torch.int32
    shape = (draws.shape[0], keys.shape[3], nb)
    # c0 = block j and c2 = draw hi are multiplied; c1 = draw lo and c3 = 0x5C0E5DE are xor-ed in.
    c0 = torch.arange(nb, device=dev, dtype=i32)[None, None, :].expand(shape).contiguous()
    c2 = ((draws >> 32) & _MASK32).to(i32).expand(shape).contiguous()
    c1 = _as_i32(draws & _MASK32).expand(shape)
    c3 = torch.full(shape, 0x5C0E5DE, device=dev, dtype=i32)
    zero = torch.zeros(shape, dtype=i32, device=dev)
    M = _multipliers(dev)
    for r in range(_ROUNDS):
        # (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0) with (hi0, lo0) = M0 c0, (hi1, lo1) = M1 c2.
        wide = torch.stack([c0, zero, c2, zero], dim=-1).view(torch.int64)  # (L, B, nb, 2): c0, c2 as unsigned int64
        p = (wide * M).view(torch.int32)  # (L, B, nb, 4): lo0, hi0, lo1, hi1
        c0, c1, c2, c3 = p[..., 3] ^ c1 ^ keys[r, 0], p[..., 2], p[..., 1] ^ c3 ^ keys[r, 1], p[..., 0]
    # back to unsigned values in int64
    return torch.stack([c0, c1, c2, c3]).to(torch.int64) & _MASK32


def _philox_words_portable(keys: Tensor, draws: Tensor, nb: int) -> Tensor:
    """:func:`_philox_words` without int32 views (for big-endian hosts): shifts and masks."""
    L, B = draws.shape[0], keys.shape[3]
    dw = draws.expand(L, B, nb).reshape(-1)
    j = torch.arange(nb, device=keys.device, dtype=torch.int64).repeat(L * B)
    s = keys[0].to(torch.int64) & _MASK32  # round-0 keys (2, 1, B, 1)
    k0, k1 = (v.expand(L, B, nb).reshape(-1) for v in s)
    c3 = torch.full_like(j, 0x5C0E5DE)
    w = philox4x32(j, dw & _MASK32, (dw >> 32) & _MASK32, c3, k0, k1)
    return torch.stack([v.reshape(L, B, nb) for v in w])


# ------------------------------------------------------------------ the compiled kernel (opt-in)
# The Philox rounds as exact int64 arithmetic (the reference's 16-bit split multiplication: every
# product < 2^48, no overflow anywhere), written for torch.compile: inductor fuses the ten rounds
# into one loop, so a block of draws costs one pass instead of ~60 tensor operations. Integer
# arithmetic, so the words are those of the reference bit for bit on every backend. Box-Muller stays
# in eager float64 (compiled transcendentals may differ from ATen's in the last bit).
NOISE_KERNELS = ("torch", "compiled")
_COMPILED_WORDS: list = []


def _philox_words_int64(k0: Tensor, k1: Tensor, draws: Tensor, nb: int) -> Tensor:
    """(4, L, B, nb) int64 words; k0, k1 (1, B, 1) int64 round-0 keys in [0, 2^32), draws (L, 1, 1) or (1, B, 1)."""
    j = torch.arange(nb, device=k0.device, dtype=torch.int64)[None, None, :]
    zero = 0 * draws + 0 * k0 + 0 * j  # (L, B, nb)
    c0, c1, c2 = j + zero, (draws & _MASK32) + zero, ((draws >> 32) & _MASK32) + zero
    c3 = zero + 0x5C0E5DE
    return torch.stack(philox4x32(c0, c1, c2, c3, k0 + zero, k1 + zero, _ROUNDS))


def _compiled_words() -> object:
    if not _COMPILED_WORDS:
        _COMPILED_WORDS.append(torch.compile(_philox_words_int64, dynamic=True, fullgraph=True))
    return _COMPILED_WORDS[0]


def _normals(keys: Tensor, draws: Tensor, n: int, dtype: torch.dtype, kernel: str = "torch") -> Tensor:
    """(L, B, n) standard normals of the given draws (Box-Muller exactly as the reference)."""
    nb = (n + 3) // 4
    if kernel == "compiled":
        k = keys[0].to(torch.int64) & _MASK32  # round-0 keys (2, 1, B, 1) as unsigned values
        w = _compiled_words()(k[0], k[1], draws, nb)
    elif _LITTLE_ENDIAN:
        w = _philox_words(keys, draws, nb)
    else:
        w = _philox_words_portable(keys, draws, nb)
    pairs = 1 if n <= 2 else 2  # n <= 2: only the first word pair of the one block is used
    u = (w[: 2 * pairs].to(torch.float64) + 0.5) * (1.0 / 4294967296.0)
    rad = torch.sqrt(-2.0 * torch.log(u[0::2]))  # from words 0 and 2
    ang = 2 * math.pi * u[1::2]  # from words 1 and 3
    # (rad0 cos, rad0 sin, rad1 cos, rad1 sin): element 4 j + q of a sample is pair q // 2
    z = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], dim=1)  # (pairs, cos/sin, L, B, nb)
    L, B = z.shape[2], z.shape[3]
    z = z.reshape(2 * pairs, L, B, nb).permute(1, 2, 3, 0).reshape(L, B, nb * 2 * pairs)
    return z[..., :n].to(dtype).contiguous()


# ------------------------------------------------------------------ the reference (readable) path
def philox_normal_reference(seeds: Tensor, counters: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """The definition of the stream: (B, n) normals, draw ``counters[i]`` of sample i.

    Philox4x32-10 on counters ``(j, draw lo, draw hi, 0x5C0E5DE)`` with key ``(seed lo, seed hi)``
    gives 4 words per block j; Box-Muller on words (0, 1) and (2, 3) gives elements 4j .. 4j+3.
    The fast path (:func:`philox_normal_counters`, :class:`PerSampleNoise`) equals this bit for bit.
    """
    dev = seeds.device
    nb = (n + 3) // 4
    s = seeds.to(torch.int64)
    B = len(s)
    k0 = (s & _MASK32)[:, None].expand(B, nb)
    k1 = ((s >> 32) & _MASK32)[:, None].expand(B, nb)
    c0 = torch.arange(nb, device=dev, dtype=torch.int64)[None, :].expand(B, nb)
    cnt = counters.to(device=dev, dtype=torch.int64)
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
