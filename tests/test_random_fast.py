"""The fast per-sample noise equals the reference Philox stream bit for bit.

The reference (:func:`philox_normal_reference`) is the readable definition, checked against the
Random123 known-answer vectors in test_random.py; the fast path (stacked rounds, int32 views of
wrapped int64 products, round keys cached per seed, draws generated a block at a time) must give
identical bits for every seed, draw index, shape, dtype and block boundary.
"""

from __future__ import annotations

import pytest
import torch

from scoresde.random import (
    PerSampleNoise,
    _philox_words,
    _philox_words_portable,
    _round_keys,
    philox4x32,
    philox_normal,
    philox_normal_counters,
    philox_normal_reference,
)

EDGE_SEEDS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**62 - 1, 2**63 - 1]


def _seeds(n: int, gen_seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(gen_seed)
    s = torch.randint(0, 2**62, (n,), generator=g, dtype=torch.int64)
    s[: len(EDGE_SEEDS)] = torch.tensor(EDGE_SEEDS[:n])
    return s


def _reference(seeds: torch.Tensor, draw: int, like: torch.Tensor) -> torch.Tensor:
    dtype = like.dtype if like.is_floating_point() else torch.float32
    cnt = torch.full(seeds.shape, draw, dtype=torch.int64)
    return philox_normal_reference(seeds, cnt, like[0].numel(), dtype).reshape(like.shape)


def test_fast_words_equal_philox4x32_words():
    seeds = _seeds(40, 0)
    keys = _round_keys(seeds)
    # Draw indices on both sides of 2^31 and 2^32 (the high counter word) and a large one.
    draws = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 17, 2**62 - 1])[:, None, None]
    nb = 3
    w = _philox_words(keys, draws, nb)
    B, L = len(seeds), len(draws)
    d = draws.expand(L, B, nb)
    s = seeds[None, :, None].expand(L, B, nb)
    j = torch.arange(nb)[None, None, :].expand(L, B, nb)
    M = 0xFFFFFFFF
    ref = philox4x32(j, d & M, (d >> 32) & M, torch.full_like(j, 0x5C0E5DE), s & M, (s >> 32) & M)
    for q in range(4):
        assert torch.equal(w[q], ref[q]), q
    assert torch.equal(_philox_words_portable(keys, draws, nb), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("tail", [(1,), (2,), (3,), (4,), (5,), (7, 3), (3, 4, 4)])
def test_per_sample_noise_equals_reference_bit_for_bit(dtype, tail):
    for gen_seed, batch in ((1, 9), (2, 33)):
        seeds = _seeds(batch, gen_seed)
        like = torch.zeros((batch, *tail), dtype=dtype)
        for prefetch in (1, 3, 64):
            noise = PerSampleNoise(seeds, start=5, prefetch=prefetch)
            for k in range(5, 5 + 8):
                z = noise(like)
                ref = _reference(seeds, k, like)
                assert z.dtype == ref.dtype and z.shape == like.shape
                assert torch.equal(z, ref), (dtype, tail, prefetch, k)
            assert noise.draws == 13


def test_blocks_follow_draws_shapes_and_assignments():
    seeds = _seeds(12, 3)
    noise = PerSampleNoise(seeds, prefetch=4)
    a, b = torch.zeros(12, 2), torch.zeros(12, 3, 2, 2, dtype=torch.float64)
    # Interleaved shapes and dtypes, a backwards jump, and a jump past 2^32 (adaptive samplers assign draws).
    plan = [(a, None), (a, None), (b, None), (a, None), (a, 1), (a, None), (b, 2**32 - 2), (b, None), (b, None), (a, 0)]
    for like, jump in plan:
        if jump is not None:
            noise.draws = jump
        k = noise.draws
        assert torch.equal(noise(like), _reference(seeds, k, like)), (tuple(like.shape), k)


def test_large_batch_uses_short_blocks_and_stays_exact():
    seeds = _seeds(3000, 4)
    like = torch.zeros(3000, 50)  # 13 blocks per sample: BLOCK_BUDGET allows no more than 1 draw per call
    noise = PerSampleNoise(seeds)
    for k in range(3):
        assert torch.equal(noise(like), _reference(seeds, k, like))
    assert len(noise._buf[2]) == 1


def test_draw_per_sample_and_functions_equal_reference():
    seeds = _seeds(20, 5)
    counters = torch.randint(0, 2**40, (20,), generator=torch.Generator().manual_seed(6))
    like = torch.zeros(20, 3, 3, dtype=torch.float64)
    ref = philox_normal_reference(seeds, counters, 9, torch.float64).reshape(like.shape)
    assert torch.equal(PerSampleNoise(seeds).draw_per_sample(like, counters), ref)
    assert torch.equal(philox_normal_counters(seeds, counters, 9, torch.float64), ref.reshape(20, 9))
    full = torch.full((20,), 7, dtype=torch.int64)
    assert torch.equal(philox_normal(seeds, 7, 6), philox_normal_reference(seeds, full, 6, torch.float32))


def test_seeds_assignment_resets_the_cached_keys():
    noise = PerSampleNoise(_seeds(4, 7))
    like = torch.zeros(4, 2)
    noise(like)
    other = _seeds(4, 8)
    noise.seeds = other
    assert torch.equal(noise(like), _reference(other, 1, like))


def test_prefetch_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="prefetch must be a positive integer"):
        PerSampleNoise(torch.arange(3), prefetch=0)


def test_int64_kernel_words_equal_the_fast_words():
    """The formulation that kernel="compiled" compiles, run eagerly: the same words for edge seeds and draws."""
    from scoresde.random import _MASK32, _philox_words_int64

    seeds = _seeds(40, 1)
    keys = _round_keys(seeds)
    k = keys[0].to(torch.int64) & _MASK32
    draws = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 17, 2**62 - 1])[:, None, None]
    assert torch.equal(_philox_words_int64(k[0], k[1], draws, 3), _philox_words(keys, draws, 3))
    per_sample = torch.arange(40, dtype=torch.int64)[None, :, None] * (2**33 + 5)  # (1, B, 1): a draw per sample
    assert torch.equal(_philox_words_int64(k[0], k[1], per_sample, 2), _philox_words(keys, per_sample, 2))


def test_compiled_noise_kernel_equals_the_reference_bit_for_bit():
    """kernel="compiled" (torch.compile, inductor on CPU; one compilation, a few seconds to tens): the
    reference stream across block boundaries, and the stream position advances as with kernel="torch"."""
    seeds = _seeds(24, 2)
    like = torch.empty(24, 6)  # 2 Philox blocks per sample
    fast = PerSampleNoise(seeds, start=2**32 - 2, prefetch=2, kernel="compiled")
    for i in range(5):  # blocks of 2 draws: 3 generating calls, across the 2^32 counter carry
        got = fast(like)
        assert torch.equal(got, _reference(seeds, 2**32 - 2 + i, like)), i
    assert fast.draws == 2**32 + 3


def test_noise_kernel_is_validated():
    with pytest.raises(ValueError, match="kernel='cuda' is not one of the accepted values: 'torch', 'compiled'"):
        PerSampleNoise(torch.arange(3), kernel="cuda")
