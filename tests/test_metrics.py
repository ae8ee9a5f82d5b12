"""Metrics against closed forms (Gaussian Frechet, RBF-MMD and energy of Gaussians, 1-D Wasserstein),
their noise floors, mode weights, and the digits classifier."""

import math

import numpy as np
import pytest
import torch

from scoresde import Gaussian, GaussianMixture
from scoresde import metrics as M


def _normal(n, d, seed, mean=0.0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, d, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ sliced Wasserstein
def test_sliced_wasserstein_1d_is_exact_wasserstein():
    from scipy.stats import wasserstein_distance

    x, y = _normal(300, 1, 0), _normal(170, 1, 1, 0.3, 1.5)
    # In 1-D every direction is +-1, so SW_p = W_p; scipy's W1 handles unequal sizes exactly.
    assert abs(M.sliced_wasserstein(x, y, p=1) - wasserstein_distance(x[:, 0], y[:, 0])) < 1e-12
    # A shift by c moves every quantile by c: W2 = |c| for equal sizes.
    assert abs(M.sliced_wasserstein(x, x + 0.7) - 0.7) < 1e-12
    # Duplicating every point does not change the empirical measure (unequal sizes, 300 vs 600).
    assert M.sliced_wasserstein(x, torch.cat([x, x])) < 1e-12


def test_sliced_wasserstein_floor_shift_and_scale():
    n = 800
    floor = M.noise_floor(M.sliced_wasserstein, lambda k, generator: torch.randn(k, 2, generator=generator), n)
    assert M.sliced_wasserstein(_normal(n, 2, 0), _normal(n, 2, 1)) < 3 * floor.rms  # same law: at the floor
    # Shift c: E_theta (theta.c)^2 = |c|^2 / D = 0.5, so SW2 ~ sqrt(0.5 + floor^2); the direction average over 256
    # projections has relative s.d. ~0.35/16 = 2%; allow 3 floors on top.
    sw = M.sliced_wasserstein(_normal(n, 2, 0), _normal(n, 2, 1) + torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert abs(sw**2 - 0.5) < 0.05 + 3 * floor.rms**2
    # Scale by 2: every projection is N(0, 1) vs N(0, 4), W2 = |1 - 2| = 1.
    sw = M.sliced_wasserstein(_normal(n, 2, 0), 2 * _normal(n, 2, 1))
    assert abs(sw - 1.0) < 3 * floor.rms


# ------------------------------------------------------------------ MMD
def _rbf_mean(m1, c1, m2, c2, h):
    """E exp(-|X - Y|^2 / (2 h^2)) for independent X ~ N(m1, C1), Y ~ N(m2, C2) (Gaussian integral)."""
    d = len(m1)
    S = c1 + c2
    det = torch.linalg.det(torch.eye(d, dtype=torch.float64) + S / h**2)
    dm = m1 - m2
    quad = dm @ torch.linalg.solve(h**2 * torch.eye(d, dtype=torch.float64) + S, dm)
    return float(det ** -0.5 * torch.exp(-0.5 * quad))


def test_mmd_matches_closed_form_for_gaussians():
    d, h, n, reps = 2, 1.5, 300, 10
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.tensor([0.5, -0.3], dtype=torch.float64)
    c1, c2 = torch.eye(d, dtype=torch.float64), torch.diag(torch.tensor([1.5, 0.6], dtype=torch.float64))
    exact = _rbf_mean(m1, c1, m1, c1, h) + _rbf_mean(m2, c2, m2, c2, h) - 2 * _rbf_mean(m1, c1, m2, c2, h)
    A = torch.linalg.cholesky(c2)
    vals = torch.tensor([M.mmd(_normal(n, d, 2 * i), m2 + _normal(n, d, 2 * i + 1) @ A.T, bandwidth=h) for i in range(reps)])
    se = float(vals.std()) / math.sqrt(reps)
    # Unbiased estimator: the mean of 10 repeats is within 4 standard errors of the exact MMD^2.
    assert abs(float(vals.mean()) - exact) < 4 * se
    assert exact > 10 * se  # and the test can tell the distributions apart


def test_mmd_symmetric_multiscale_median_and_null_mean():
    x, y = _normal(200, 3, 0), _normal(150, 3, 1, 0.2)
    assert abs(M.mmd(x, y) - M.mmd(y, x)) < 1e-12
    assert abs(M.mmd(x, y, bandwidth=[0.5, 2.0]) - M.mmd(x, y, bandwidth=0.5) - M.mmd(x, y, bandwidth=2.0)) < 1e-12
    from scipy.spatial.distance import pdist

    assert abs(M.median_bandwidth(x, y) - float(np.median(pdist(torch.cat([x, y]).numpy())))) < 1e-12
    # Unbiased under the null: mean of repeats within 4 s.e. of 0 (a biased V-statistic would sit above 0).
    null = torch.tensor([M.mmd(_normal(100, 3, 10 + 2 * i), _normal(100, 3, 11 + 2 * i), bandwidth=1.0) for i in range(20)])
    assert abs(float(null.mean())) < 4 * float(null.std()) / math.sqrt(20)
    with pytest.raises(ValueError, match="bandwidth"):
        M.mmd(x, y, bandwidth=-1.0)
    with pytest.raises(ValueError, match="kernel='laplace'"):
        M.mmd(x, y, kernel="laplace")


# ------------------------------------------------------------------ energy distance
def _abs_normal_mean(mu, s):
    """E|N(mu, s^2)| = s sqrt(2/pi) exp(-mu^2 / (2 s^2)) + mu (1 - 2 Phi(-mu/s))."""
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * 0.5 * math.erfc(mu / (s * math.sqrt(2))))


def test_energy_distance_closed_form_and_scipy():
    from scipy.stats import energy_distance as scipy_energy

    x, y = _normal(120, 1, 0), _normal(90, 1, 1, 0.8)
    # scipy gives sqrt of the V-statistic; ours is the U-statistic: E_V = E_U + dxx_U / n + dyy_U / m.
    dxx = torch.cdist(x, x).sum() / (120 * 119)
    dyy = torch.cdist(y, y).sum() / (90 * 89)
    e_v = M.energy_distance(x, y) + float(dxx) / 120 + float(dyy) / 90
    assert abs(e_v - scipy_energy(x[:, 0], y[:, 0]) ** 2) < 1e-10
    assert abs(M.energy_distance(x, y) - M.energy_distance(y, x)) < 1e-12
    # N(0, 1) vs N(m, 1): E = 2 E|N(m, 2)| - 2 E|N(0, 2)|; unbiased, so the mean of repeats matches within 4 s.e.
    m, reps = 0.8, 10
    exact = 2 * _abs_normal_mean(m, math.sqrt(2)) - 2 * _abs_normal_mean(0.0, math.sqrt(2))
    vals = torch.tensor([M.energy_distance(_normal(200, 1, 2 * i), _normal(200, 1, 2 * i + 1, m)) for i in range(reps)])
    assert abs(float(vals.mean()) - exact) < 4 * float(vals.std()) / math.sqrt(reps)
    null = torch.tensor([M.energy_distance(_normal(100, 2, 50 + 2 * i), _normal(100, 2, 51 + 2 * i)) for i in range(20)])
    assert abs(float(null.mean())) < 4 * float(null.std()) / math.sqrt(20)  # unbiased: ~0 under the null


# ------------------------------------------------------------------ Frechet
def test_frechet_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert abs(M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) - (4 + 1)) < 1e-12
    # Commuting (diagonal) covariances: |dm|^2 + sum (s1_i - s2_i)^2.
    s1, s2 = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    dm = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    assert abs(M.frechet_distance(dm, s1**2, torch.zeros(3), s2**2) - (6 + 4 + 1)) < 1e-12
    # Full covariances: against scipy's sqrtm(C1 C2) form.
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    c1, c2 = A @ A.T, B @ B.T + 0.1 * torch.eye(5, dtype=torch.float64)
    ref = float(np.trace(c1.numpy() + c2.numpy() - 2 * sqrtm(c1.numpy() @ c2.numpy()).real))
    assert abs(M.frechet_distance(torch.zeros(5), c1, torch.zeros(5), c2) - ref) < 1e-8 * abs(ref)
    assert abs(M.frechet_distance(torch.zeros(5), c1, torch.zeros(5), c1)) < 1e-10 * float(torch.trace(c1))
    # Rank-deficient covariance (a flat direction): finite, and equal to the diagonal closed form.
    assert abs(M.frechet_distance([0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [4.0, 1.0]) - (1 + 1)) < 1e-12


def test_frechet_from_samples_and_floor():
    x, y = _normal(4000, 2, 0), _normal(4000, 2, 1, 0.0, 2.0)
    fd = M.frechet_distance_from_samples(x, y)
    assert abs(fd - M.frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))) < 1e-12
    # N(0, I) vs N(0, 4I) in 2-D: sum (1 - 2)^2 = 2; estimation error ~ sqrt(2/n) relative on each variance.
    assert abs(fd - 2.0) < 0.15
    floor = M.noise_floor(M.frechet_distance_from_samples, lambda k, generator: torch.randn(k, 2, generator=generator), 4000)
    assert M.frechet_distance_from_samples(x, _normal(4000, 2, 2)) < 4 * floor.rms


# ------------------------------------------------------------------ modes and log-likelihood
def test_mode_weights_exact_and_reweighted():
    gm = GaussianMixture.ring(4, radius=4.0, std=0.3)  # well separated: no sample is misassigned
    x, k = gm.sample(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64, return_labels=True)
    w = M.mode_weights(x, gm)
    assert torch.equal(w, torch.bincount(k, minlength=4).double() / 4000)  # assignment = true labels
    # Multinomial noise: E TV ~ 0.5 * sum sqrt(2/pi) sqrt(w(1-w)/n) = 0.011 for K = 4, n = 4000; 4x slack.
    assert M.mode_weight_error(x, gm) < 0.045
    # Reweighted set: 400, 100, 250, 250 samples of components 0..3 -> TV to (1/4, ...) = 0.5 (0.15 + 0.15) = 0.3/2.
    parts = [x[k == j][:c] for j, c in enumerate([400, 100, 250, 250])]
    xr = torch.cat(parts)
    assert torch.allclose(M.mode_weights(xr, gm), torch.tensor([0.4, 0.1, 0.25, 0.25], dtype=torch.float64))
    assert abs(M.mode_weight_error(xr, gm) - 0.15) < 1e-12
    # Degenerate components (point masses): nearest-mean assignment.
    pm = GaussianMixture([1.0, 3.0], [[-1.0, 0.0], [1.0, 0.0]], 0.0)
    pts = torch.tensor([[-0.9, 0.2], [0.5, -3.0], [2.0, 0.0], [1.1, 0.0]], dtype=torch.float64)
    assert torch.allclose(M.mode_weights(pts, pm), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert abs(M.mode_weight_error(pts, pm)) < 1e-12


def test_mean_log_likelihood_is_minus_entropy_on_exact_samples():
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    gm = Gaussian(torch.tensor([1.0, -2.0], dtype=torch.float64), cov)
    x = gm.sample(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    neg_entropy = -0.5 * 2 * math.log(2 * math.pi * math.e) - 0.5 * float(torch.logdet(cov))
    # log p of a Gaussian sample: -const - chi2_2 / 2, s.d. sqrt(2 * 2)/2 = 1; s.e. of the mean 1/sqrt(n) = 0.007.
    assert abs(M.mean_log_likelihood(x, gm) - neg_entropy) < 4 / math.sqrt(20000)
    assert M.mean_log_likelihood(x, gm.log_prob) == M.mean_log_likelihood(x, gm)
    assert M.mean_log_likelihood(x + 1.0, gm) < neg_entropy - 0.5  # shifted samples are less likely


# ------------------------------------------------------------------ floors and compare
def test_noise_floor_sources_agree_in_kind():
    gm = GaussianMixture.ring(4, radius=3.0, std=0.5)
    n = 200
    fl = M.noise_floor(M.sliced_wasserstein, gm, n, repeats=4)
    assert len(fl.values) == 4 and fl.n == n and fl.mean > 0 and fl.std > 0
    assert abs(fl.rms - math.sqrt(sum(v * v for v in fl.values) / 4)) < 1e-12
    pool = gm.sample(2000, generator=torch.Generator().manual_seed(1))
    fl_pool = M.noise_floor(M.sliced_wasserstein, pool, n, repeats=4)
    sets = [gm.sample(n, generator=torch.Generator().manual_seed(10 + i)) for i in range(8)]
    fl_sets = M.noise_floor(M.sliced_wasserstein, sets, n)
    assert len(fl_sets.values) == 4
    # Three estimates of the same floor (4 repeats each, relative s.d. ~25%): within a factor of 2.5.
    for other in (fl_pool, fl_sets):
        assert 0.4 < other.mean / fl.mean < 2.5
    with pytest.raises(ValueError, match="2n=4000"):
        M.noise_floor(M.sliced_wasserstein, pool, 2000)


def test_compare_exact_vs_shifted_samples():
    gm = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], 0.5)
    n = 400
    names = ["sw2", "mmd", "energy", "frechet", "mode_weight_error", "mean_log_likelihood"]
    good = gm.sample(n, generator=torch.Generator().manual_seed(7))
    res = M.compare(good, gm, names, repeats=8)
    for name in ["sw2", "mmd", "energy", "frechet"]:
        # Exact samples: the value is one more draw from the floor's distribution; |ratio| < 4 is generous.
        assert abs(res[name]["ratio"]) < 4, (name, res[name])
    ll = res["mean_log_likelihood"]
    assert ll["ratio"] is None and abs(ll["gap"]) < 4 * ll["floor_std"] * math.sqrt(1 + 1)
    # Reweighted 0.8 / 0.2 and shifted across the modes' axis by 1.4 component stds: every distance well above its
    # floor (SW2^2 ~ 0.3 * 4^2 / 2 + 1 / 2 = 2.9 / 2 against a floor ~0.18^2 at n = 400).
    x, k = gm.sample(4 * n, generator=torch.Generator().manual_seed(8), return_labels=True)
    bad = torch.cat([x[k == 0][: int(0.8 * n)], x[k == 1][: int(0.2 * n)]]) + torch.tensor([0.0, 1.0])
    res = M.compare(bad, gm, names, repeats=4)
    for name in ["sw2", "mmd", "energy", "frechet", "mode_weight_error"]:
        assert res[name]["ratio"] > 5, (name, res[name])
    assert res["mean_log_likelihood"]["gap"] > 0.1
    with pytest.raises(ValueError, match="'bogus'"):
        M.compare(good, gm, ["bogus"])


# ------------------------------------------------------------------ Inception metrics (optional)
def test_inception_metrics_explain_what_is_missing(tmp_path):
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="pip install torch-fidelity"):
        M.fid_inception(x, x)
    with pytest.raises(FileNotFoundError, match="not a file"):
        M.inception_score(x, weights_path=tmp_path / "missing.pth")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        (tmp_path / "w.pth").write_bytes(b"")
        with pytest.raises(ImportError, match="pip install torch-fidelity"):
            M.fid_inception(x, x, weights_path=tmp_path / "w.pth")


# ------------------------------------------------------------------ digits classifier
@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    from scoresde import features

    mp = pytest.MonkeyPatch()
    mp.setenv("SCORESDE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setattr(features, "_MEMO", {})
    yield features
    mp.undo()


def test_digits_classifier_accuracy_cache_and_determinism(digits_cache):
    F = digits_cache
    import os

    acc = F.digits_classifier_accuracy()  # trains once, writes the cache file
    assert acc > 0.9  # the small CNN reaches 0.975 on the held-out 20% (measured); 0.9 leaves room for other torch builds
    path = os.path.join(F.cache_dir(), f"digits_cnn-{F.DigitsConfig().key()}.safetensors")
    assert os.path.isfile(path)
    F._MEMO.clear()
    cached = F.digits_classifier()  # loaded from the file
    again = F.train_digits_classifier()  # retrained from scratch
    for (k, a), (_, b) in zip(cached.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # bit-identical: fixed seed, fixed order, one thread


def test_frechet_digits_distance(digits_cache):
    F = digits_cache
    x_tr, y_tr, x_te, _ = F.load_digits_split()
    assert F.digits_features(x_te).shape == (len(x_te), F.DigitsConfig().features)
    n = 350
    floor = M.noise_floor(F.frechet_digits_distance, x_tr, n, repeats=4)  # disjoint training subsets
    test = F.frechet_digits_distance(x_tr[:n], x_te[:n])
    # Held-out digits come from the same law: at the floor (measured 8.3 against a floor of 10.9).
    assert test < 2 * floor.rms
    # Known shifts: only the digits 0-4 (measured ~9 floors), and Gaussian pixel noise of std 0.5 (~2.5 floors).
    assert F.frechet_digits_distance(x_te[:n], x_tr[y_tr < 5][:n]) > 5 * floor.rms
    noisy = (x_tr[n : 2 * n] + 0.5 * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert F.frechet_digits_distance(x_te[:n], noisy) > floor.mean + 3 * floor.std
    assert M.METRICS["fd"](x_tr[:n], x_te[:n]) == test  # the one registry of metrics holds it
    with pytest.warns(DeprecationWarning, match="scoresde.features"):
        assert M.frechet_digits_distance(x_tr[:n], x_te[:n]) == test  # the old name still works
