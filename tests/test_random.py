"""Per-sample Philox noise: known-answer vectors, distribution, and batch invariance."""

import torch
from scipy import stats

from scoresde.random import PerSampleNoise, make_seeds, philox4x32, philox_normal


def _words(c, k):
    T = lambda v: torch.tensor([v], dtype=torch.int64)
    return [int(o) for o in philox4x32(*(T(v) for v in c), *(T(v) for v in k))]


def test_philox_known_answers():
    # Known-answer vectors of Philox4x32-10 from Random123 (Salmon et al. 2011), kat_vectors.
    assert _words([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _words([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _words([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1,
    ]


def test_normals_are_standard_normal_and_independent():
    seeds = make_seeds(2000, generator=torch.Generator().manual_seed(0))
    z = philox_normal(seeds, 0, 25, torch.float64)
    # 50 000 draws: KS p-value below 1e-3 would be a real defect, not chance (fixed seed, so deterministic).
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    z2 = philox_normal(seeds, 1, 25, torch.float64)
    # Correlation between consecutive draws of 50 000 pairs: std 1/sqrt(5e4) = 0.0045; 5 sigma.
    r = torch.corrcoef(torch.stack([z.flatten(), z2.flatten()]))[0, 1]
    assert abs(float(r)) < 0.0225
    # Correlation between neighbouring elements within a draw.
    r2 = torch.corrcoef(torch.stack([z[:, :-1].flatten(), z[:, 1:].flatten()]))[0, 1]
    assert abs(float(r2)) < 0.0225


def test_per_sample_noise_does_not_depend_on_batch():
    seeds = make_seeds(1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(seeds[:7], make_seeds(7, generator=torch.Generator().manual_seed(3)))
    big, small = PerSampleNoise(seeds), PerSampleNoise(seeds[:7])
    like_big, like_small = torch.empty(1000, 3, 4), torch.empty(7, 3, 4)
    for _ in range(3):
        assert torch.equal(big(like_big)[:7], small(like_small))
    one = PerSampleNoise(seeds[4:5])
    big2 = PerSampleNoise(seeds)
    assert torch.equal(one(torch.empty(1, 3, 4))[0], big2(like_big)[4])


def test_seed_errors():
    import pytest

    with pytest.raises(ValueError, match="seeds must be a 1-D sequence of 3"):
        make_seeds(3, seeds=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        make_seeds(2, seeds=[1, -2])
