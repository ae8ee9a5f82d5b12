"""KID (Binkowski et al. 2018): the unbiased polynomial-kernel MMD^2 of ``metrics.kernel_distance`` and
the digits version ``kd``, against direct computations and exact expectations."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import metrics as M

F64 = torch.float64


def _sets(n=12, m=9, d=3, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randn(m, d, generator=g, dtype=F64) + shift


def _direct(x, y, degree=3, gamma=None, coef0=1.0):
    """The unbiased estimator written out pair by pair (Binkowski et al. 2018, Eq. 4 with k polynomial)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k = lambda a, b: (g * float(a @ b) + coef0) ** degree  # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("degree,gamma,coef0", [(3, None, 1.0), (2, 0.5, 0.3), (1, 1.0, 0.0)])
def test_kernel_distance_equals_the_pairwise_sums(degree, gamma, coef0):
    x, y = _sets(shift=0.4)
    got = M.kernel_distance(x, y, degree=degree, gamma=gamma, coef0=coef0)
    assert got == pytest.approx(_direct(x, y, degree, gamma, coef0), rel=1e-12)  # float64, other summation order


def test_blocked_sums_equal_one_block(monkeypatch):
    x, y = _sets(n=23, m=17, d=4, seed=1, shift=0.2)
    whole = M.kernel_distance(x, y)
    monkeypatch.setattr(M, "_BLOCK", 5)  # 5 x 5 blocks, the diagonal blocks of uneven size at the end
    assert M.kernel_distance(x, y) == pytest.approx(whole, rel=1e-12)


def test_linear_kernel_is_the_unbiased_squared_mean_difference():
    # degree 1, gamma 1, coef0 0: k(a, b) = a.b, and the U-statistic is
    # |mean x - mean y|^2 - tr(S_x)/n - tr(S_y)/m with the unbiased covariances S.
    x, y = _sets(n=40, m=30, d=5, seed=2, shift=0.3)
    closed = float((x.mean(0) - y.mean(0)).pow(2).sum() - torch.cov(x.T).trace() / 40 - torch.cov(y.T).trace() / 30)
    assert M.kernel_distance(x, y, degree=1, gamma=1.0, coef0=0.0) == pytest.approx(closed, rel=1e-10)


def test_unbiased_expectation_is_the_squared_mean_shift():
    # With the linear kernel E[MMD_u^2] = |mu_x - mu_y|^2 exactly (for any n): 0 for one law, 0.5
    # for a shift of 0.5 in 2-D. The mean of 400 estimates at n = 50 must lie within 4 standard
    # errors of it (a biased V-statistic would be off by tr(C)/n + tr(C)/m = 0.08, about 20 SE).
    for shift, expected in ((0.0, 0.0), (0.5, 0.5)):
        vals = torch.tensor([M.kernel_distance(*_sets(50, 50, 2, seed=100 + r, shift=shift), degree=1, gamma=1.0,
                                               coef0=0.0) for r in range(400)])
        se = float(vals.std()) / math.sqrt(len(vals))
        assert abs(float(vals.mean()) - expected) < 4 * se


def test_subsets_are_the_mean_of_direct_estimates_on_the_same_subsets():
    x, y = _sets(n=30, m=25, d=3, seed=3, shift=0.3)
    got = M.kernel_distance(x, y, subset_size=10, subsets=4, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    want = []
    for _ in range(4):  # the documented draw order: a subset of x, then one of y, per repeat
        ix, iy = torch.randperm(30, generator=g)[:10], torch.randperm(25, generator=g)[:10]
        want.append(_direct(x[ix], y[iy]))
    assert got == pytest.approx(sum(want) / 4, rel=1e-12)
    with pytest.raises(ValueError, match=r"subset_size must be an integer in \[2, min\(N, M\) = 25\] or None; got 26"):
        M.kernel_distance(x, y, subset_size=26)
    with pytest.raises(ValueError, match="degree must be a positive integer; got 0"):
        M.kernel_distance(x, y, degree=0)


def test_kid_is_registered_with_its_noise_floor():
    gm_like = lambda n, generator: torch.randn(n, 3, generator=generator, dtype=F64)  # noqa: E731
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    res = M.compare(x, gm_like, metrics=("kid",), repeats=5)["kid"]
    # Exact samples: an unbiased estimate scatters around 0 with the floor's spread (measured ratio 0.22).
    assert res["floor"] > 0 and abs(res["ratio"]) < 4
    far = M.compare(x + 1.0, gm_like, metrics=("kid",), repeats=5)["kid"]
    assert far["ratio"] > 30  # a unit shift in every coordinate (measured ratio 273)
    assert M.METRICS.get("kernel_distance").name == "kid" and M.METRICS.get("kid").meta["kind"] == "distance"


def test_digits_kid_is_the_kernel_distance_of_the_classifier_features():
    from scoresde import features as F

    x_tr, y_tr, x_te, _ = F.load_digits_split()
    n = 300
    held_out = F.kernel_digits_distance(x_te[:n], x_tr[:n])
    direct = M.kernel_distance(F.digits_features(x_te[:n]), F.digits_features(x_tr[:n]))
    assert held_out == direct  # the same computation
    low = x_tr[y_tr < 5][:n]  # only the digits 0-4: a different distribution
    # measured: KD 1278 for the digits 0-4 against all digits, 17 for held-out digits (the floor's rms at
    # n = 350 is 40: an unbiased estimate scatters around 0), so a factor 20 separates them with room.
    assert F.kernel_digits_distance(low, x_tr[-n:]) > 20 * abs(held_out)
    assert M.METRICS.get("kid_digits").name == "kd"
    bound = M.bind("kd", x_tr[:n])
    assert bound(x_te[:n]) == held_out
