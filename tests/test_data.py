"""Datasets: toy-set geometry and scaling, exact mixtures, determinism, digits, user arrays and image
folders (written to temp files), the Scaler, configs and errors."""

import json
import math

import numpy as np
import pytest
import torch

from scoresde.data import (
    DATASETS,
    MIXTURES,
    TOY_SETS,
    Scaler,
    dataset_from_config,
    load_dataset,
    toy_mixture,
)

N = 4000


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_shape_dtype_and_standardised_scale(name):
    ds = load_dataset(name, n=N, seed=3)
    assert ds.x.shape == (N, 2) and ds.x.dtype == torch.float32 and ds.kind == "points" and ds.name == name
    assert torch.isfinite(ds.x).all()
    # The scaler is fixed per set (exact moments, or a 65536-point reference sample), so a fresh sample has
    # mean ~ 0 and std ~ 1 up to sampling error: SE of the mean 1/sqrt(N) = 0.016, of the std < 0.03 for these
    # light-tailed sets; 0.1 is > 3 SE of either.
    assert ds.x.mean(0).abs().max() < 0.1
    assert (ds.x.std(0) - 1).abs().max() < 0.1


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_deterministic_by_seed(name):
    a, b, c = load_dataset(name, n=100, seed=1), load_dataset(name, n=100, seed=1), load_dataset(name, n=100, seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.scaler.config() == c.scaler.config()  # the model space does not depend on the seed or n


def _data(ds):
    return ds.scaler.from_model(ds.x.double()).numpy()


def test_toy_geometry_in_data_space():
    moons = load_dataset("moons", n=N, seed=0, noise=0.0)
    x, y = _data(moons), moons.y.numpy()
    centres = np.where(y[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    assert np.allclose(np.linalg.norm(x - centres, axis=1), 1.0, atol=1e-5)  # unit half-circles; float32 storage
    assert np.all(np.where(y == 0, x[:, 1] >= -1e-5, x[:, 1] <= 0.5 + 1e-5))  # upper / lower half
    rings = load_dataset("rings", n=N, seed=0, noise=0.0)
    assert np.allclose(np.linalg.norm(_data(rings), axis=1), rings.y.numpy() + 1.0, atol=1e-5)
    board = _data(load_dataset("checkerboard", n=N, seed=0))
    assert np.all(np.abs(board) <= 4 + 1e-5)
    cells = np.floor(board / 2 + 1e-9).astype(int)  # FFJORD board: the squares with even (i + j)
    assert np.all((cells.sum(1) % 2) == 0)
    roll = _data(load_dataset("swissroll", n=N, seed=0, noise=0.0))
    u = 5 * np.linalg.norm(roll, axis=1)  # x = u (cos u, sin u) / 5, u in [1.5 pi, 4.5 pi]
    assert np.all((u > 1.5 * np.pi - 1e-4) & (u < 4.5 * np.pi + 1e-4))
    assert np.allclose(np.cos(u), roll[:, 0] * 5 / u, atol=1e-4)


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_sets_expose_their_exact_model_space_distribution(name):
    ds = load_dataset(name, n=N, seed=0)
    gm = toy_mixture(name)
    x_model = torch.randn(50, 2, dtype=torch.float64)
    x_data = ds.scaler.from_model(x_model)
    # Change of variables under x_model = (x_data - loc) / scale: log p_model = log p_data + sum log scale.
    want = gm.log_prob(x_data) + float(np.log(ds.scaler.scale).sum())
    assert torch.allclose(ds.exact.log_prob(x_model), want, rtol=1e-12, atol=1e-12)  # float64 affine algebra
    # The model-space samples have the exact mixture's moments: mean 0 and unit variances by construction.
    assert torch.allclose(ds.exact.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.diagonal(ds.exact.covariance()), torch.ones(2, dtype=torch.float64), atol=1e-12)
    # Sample mean within 4 standard errors (unit variance per coordinate).
    assert ds.x.double().mean(0).abs().max() < 4 / math.sqrt(N)


def test_gmm_has_unequal_modes_and_labels_match_components():
    gm = toy_mixture("gmm")
    assert gm.n_components >= 4 and float(gm.weights.max() / gm.weights.min()) > 2
    ds = load_dataset("gmm", n=20000, seed=0)
    freq = np.bincount(ds.y.numpy(), minlength=gm.n_components) / 20000
    w = gm.weights.numpy()
    assert np.all(np.abs(freq - w) < 5 * np.sqrt(w * (1 - w) / 20000))  # binomial, 5 standard deviations


def test_digits_range_shape_labels():
    from sklearn.datasets import load_digits

    ds = load_digits_ds = load_dataset("digits")
    raw = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.kind == "images" and ds.x.dtype == torch.float32
    assert float(ds.x.min()) == -1.0 and float(ds.x.max()) == 1.0  # pixel values 0 and 16 both occur
    assert torch.equal(ds.y, torch.from_numpy(raw.target).long()) and set(ds.y.tolist()) == set(range(10))
    back = load_digits_ds.scaler.from_model(ds.x.double()).numpy()
    assert np.allclose(back.reshape(-1, 64), raw.data, atol=1e-5)  # (x - 8) / 8 in float32 and back
    sub = load_dataset("digits", n=100, seed=5)
    assert sub.x.shape == (100, 1, 8, 8)
    assert torch.equal(sub.x, load_dataset("digits", n=100, seed=5).x)


def test_npy_points_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3)) * [1.0, 5.0, 0.1] + [3.0, -2.0, 0.0]
    np.save(tmp_path / "pts.npy", a)
    ds = load_dataset(tmp_path / "pts.npy")
    assert ds.kind == "points" and ds.x.shape == (500, 3) and ds.y is None
    assert torch.allclose(ds.x.double().mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6)  # fitted: float32
    assert torch.allclose(ds.x.double().std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert np.allclose(_data(ds), a, rtol=1e-6, atol=1e-6 * np.abs(a).max())  # float32 storage


def test_npz_images_with_labels_channels_last_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=20)
    np.savez(tmp_path / "imgs.npz", images=imgs, labels=labels)
    ds = load_dataset(tmp_path / "imgs.npz", channels_last=True)
    assert ds.x.shape == (20, 3, 6, 6) and ds.kind == "images"
    assert float(ds.x.min()) >= -1 and float(ds.x.max()) <= 1
    assert np.array_equal(np.rint(_data(ds)).astype(np.uint8), np.moveaxis(imgs, -1, 1))
    assert torch.equal(ds.y, torch.from_numpy(labels).long())
    gray = rng.random((10, 4, 4))  # float in [0, 1]: the range [0, 1] -> [-1, 1]
    np.save(tmp_path / "gray.npy", gray)
    g = load_dataset(tmp_path / "gray.npy")
    assert g.x.shape == (10, 1, 4, 4) and torch.allclose(g.x.double(), torch.from_numpy(2 * gray - 1)[:, None], atol=1e-6)


def _write_png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_image_folder_round_trip_flat_and_class_subfolders(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, im in enumerate(gray):
        _write_png(flat / f"{i:02d}.png", im)
    (flat / "notes.txt").write_text("ignored")
    ds = load_dataset(flat)
    assert ds.x.shape == (5, 1, 8, 8) and ds.y is None and ds.kind == "images"
    assert np.array_equal(np.rint(_data(ds)).astype(np.uint8)[:, 0], gray)  # PNG is lossless
    rgb = rng.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    classes = tmp_path / "classes"
    for i, im in enumerate(rgb):
        d = classes / ("cat" if i < 3 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        _write_png(d / f"{i}.png", im)
    ds2 = load_dataset(classes)
    assert ds2.x.shape == (4, 3, 6, 6) and ds2.y.tolist() == [0, 0, 0, 1]
    assert np.array_equal(np.rint(_data(ds2)).astype(np.uint8), np.moveaxis(rgb, -1, 1))
    ds3 = load_dataset(classes, size=4, channels=1)
    assert ds3.x.shape == (4, 1, 4, 4)


def test_scaler_round_trip_and_config():
    x = torch.randn(7, 3, 4, 4, dtype=torch.float64)
    for sc in (Scaler(0.5, 2.0), Scaler([[[1.0]], [[2.0]], [[3.0]]], [[[0.5]], [[1.0]], [[4.0]]]),
               Scaler.from_range(0, 255)):
        # float64: subtracting and re-adding loc (up to 127.5) loses ~ |loc| * 2e-16 absolute.
        assert torch.allclose(sc.from_model(sc.to_model(x)), x, rtol=0, atol=1e-12)
        again = Scaler.from_config(json.loads(json.dumps(sc.config())))
        assert torch.equal(again.to_model(x), sc.to_model(x))
    sc = Scaler.from_range(0, 255)
    assert torch.equal(sc.to_model(torch.tensor([[0.0, 127.5, 255.0]])), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_dataset_config_rebuilds_the_same_data(tmp_path):
    for name, kw in (("moons", {"noise": 0.1}), ("gmm", {}), ("digits", {})):
        ds = load_dataset(name, n=200, seed=4, **kw)
        again = dataset_from_config(json.loads(json.dumps(ds.config())))
        assert torch.equal(again.x, ds.x) and again.scaler.config() == ds.scaler.config()
    # A stored scaler is reused (e.g. evaluation data scaled like the training data).
    a = np.random.default_rng(3).normal(size=(50, 2))
    np.save(tmp_path / "a.npy", a)
    train = load_dataset("moons", n=100)
    ds = load_dataset(tmp_path / "a.npy", scaler=train.scaler)
    assert ds.scaler.config() == train.scaler.config()
    assert json.dumps(ds.config())  # the Scaler object is stored as its config
    assert torch.equal(dataset_from_config(json.loads(json.dumps(ds.config()))).x, ds.x)


def test_datasets_lists_the_built_ins():
    assert set(TOY_SETS) < set(DATASETS) and "digits" in DATASETS
    for name in DATASETS:
        assert load_dataset(name, n=10).x.shape[0] == 10


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="'nope' is neither a built-in dataset.*moons"):
        load_dataset("nope")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"must end in \.npy, \.npz"):
        load_dataset(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.npy")
    bad = np.ones((10, 2))
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"NaN or Inf \(1 of 10 samples\)"):
        load_dataset(tmp_path / "nan.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match="empty"):
        load_dataset(tmp_path / "empty.npy")
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(ValueError, match=r"shape \(N, D\).*got shape \(10,\)"):
        load_dataset(tmp_path / "flat.npy")
    np.save(tmp_path / "big.npy", np.full((4, 5, 5), 3.0))
    with pytest.raises(ValueError, match="data_range"):
        load_dataset(tmp_path / "big.npy")
    np.savez(tmp_path / "two.npz", a=np.ones((3, 2)), b=np.ones((3, 2)))
    with pytest.raises(ValueError, match="pass key="):
        load_dataset(tmp_path / "two.npz")
    np.savez(tmp_path / "lab.npz", x=np.random.rand(3, 2), y=np.ones(4, dtype=int))
    with pytest.raises(ValueError, match=r"labels must be non-negative integers of shape \(3,\)"):
        load_dataset(tmp_path / "lab.npz")
    with pytest.raises(ValueError, match="unknown option.*'noise' for dataset 'gmm'; valid options: scaler"):
        load_dataset("gmm", noise=0.1)
    with pytest.raises(ValueError, match="unknown option.*'sigma' for dataset 'moons'; valid options: noise, scaler"):
        load_dataset("moons", sigma=0.1)
    with pytest.raises(ValueError, match="dataset 'moons': noise=-0.1 is not accepted; accepted: a finite number >= 0"):
        load_dataset("moons", noise=-0.1)
    with pytest.raises(ValueError, match="unknown option.*'noise' for dataset 'arrays'"):
        load_dataset(tmp_path / "lab.npz", noise=0.1)
    with pytest.raises(ValueError, match="n=5000 exceeds the 1797 samples of digits"):
        load_dataset("digits", n=5000)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_dataset("moons", n=0)
    empty = tmp_path / "noimg"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no image files \(\.png, \.jpg, \.jpeg\)"):
        load_dataset(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write_png(mixed / "a.png", np.zeros((4, 4), np.uint8))
    _write_png(mixed / "b.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"different sizes.*size=\(H, W\)"):
        load_dataset(mixed)
    with pytest.raises(ValueError, match="scale must be positive"):
        Scaler(0.0, 0.0)
    with pytest.raises(ValueError, match="name='moons'.*'gmm', 'ring8', 'gaussian'"):
        toy_mixture("moons")
    with pytest.raises(ValueError, match="does not fit samples"):
        Scaler([0.0, 0.0, 0.0], 1.0).to_model(torch.zeros(2, 2))
