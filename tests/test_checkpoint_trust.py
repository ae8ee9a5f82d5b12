"""Untrusted checkpoints: every forged field is refused BEFORE anything is built or allocated.

Each attack edits a copy of a real checkpoint and rewrites the size/sha256 manifest in state.json,
so that the damage reaches the validation layer (a hash mismatch would catch it earlier).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from scoresde import checkpoint as ck
from scoresde.checkpoint import CheckpointError, load_checkpoint
from scoresde.data import load_dataset
from scoresde.model import ScoreModel
from scoresde.nets import build_net
from scoresde.sde import VPSDE
from scoresde.train import TrainConfig, Trainer


def _trainer(out, data=None, steps=3):
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=16)
    cfg = TrainConfig(steps=steps, batch_size=64, ckpt_every=0, warmup=2, log_every=1, progress=False, verbose=False)
    return Trainer(ScoreModel(net, VPSDE(), "eps"), data if data is not None else load_dataset("gmm", n=256), cfg, out=out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "run"
    _trainer(out).fit()
    return out


@pytest.fixture()
def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst / (dst / "latest").read_text().strip()


def _manifest(folder: Path, fname: str) -> None:
    state = json.loads((folder / "state.json").read_text())
    data = (folder / fname).read_bytes()
    state["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "state.json").write_text(json.dumps(state))


def _edit_json(folder: Path, fname: str, fn) -> None:
    obj = json.loads((folder / fname).read_text())
    fn(obj)
    (folder / fname).write_text(json.dumps(obj))
    if fname != "state.json":
        _manifest(folder, fname)


def _edit_tensors(folder: Path, fname: str, fn) -> None:
    tensors = st_load((folder / fname).read_bytes())
    (folder / fname).write_bytes(st_save(fn(tensors)))
    _manifest(folder, fname)


def _refused(path, needle: str):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, ema=False)
    assert needle in str(info.value), str(info.value)
    return str(info.value)


def test_forged_huge_net_is_refused_by_the_net_registry(copy):
    # the forgery: hidden=200000, depth=50 (6e12 weights, 24 TB) is outside the accepted widths
    _edit_json(copy, "config.json", lambda c: c["net"]["kwargs"].update(hidden=200000, depth=50))
    _refused(copy, "hidden=200000 is not accepted; accepted: an integer >= 1 and <= 65536")


def test_forged_big_net_within_range_is_refused_before_any_allocation(copy, monkeypatch):
    # hidden=60000, depth=50 is accepted by the registry but is 5.4e11 float32 weights (2 TB): the config is
    # compared with the weights file on the meta device, and the net is never built for real.
    _edit_json(copy, "config.json", lambda c: c["net"]["kwargs"].update(hidden=60000, depth=50))
    devices = []
    real = ck.build_net_from_config

    def spy(cfg, where="config.json"):
        devices.append(torch.empty(()).device.type)  # the default device at the time of the build
        return real(cfg, where)

    monkeypatch.setattr(ck, "build_net_from_config", spy)
    msg = _refused(copy, "refusing to build it")
    n = sum(p.numel() for p in build_net_meta(hidden=60000, depth=50).parameters()) + 8  # + the Fourier buffer W
    assert f"has {n:,} weights" in msg and "model.safetensors holds" in msg, msg
    assert devices == ["meta"], devices  # one build, on the meta device: nothing was allocated


def build_net_meta(**kw):
    with torch.device("meta"):
        return build_net("mlp", dim=2, emb_dim=16, **kw)


def test_absurd_structure_is_refused_by_the_net_registry(copy):
    # depth drives the number of modules (even a meta build costs time per module): bounded by NETS' params
    _edit_json(copy, "config.json", lambda c: c["net"]["kwargs"].update(depth=10**7))
    _refused(copy, "depth=10000000 is not accepted; accepted: an integer >= 1 and <= 1024")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_weights_are_refused_not_truncated(copy, dtype):
    _edit_tensors(copy, "model.safetensors", lambda t: {k: v.to(dtype) for k, v in t.items()})
    msg = _refused(copy, "wrong dtype")
    assert "is I32, not float" in msg or "is I64, not float" in msg or "is BOOL, not float" in msg, msg


def test_float64_weights_load_exactly_in_float64(copy):
    # A float64 run must not be rounded to float32 on load: the net takes the stored dtype.
    _edit_tensors(copy, "model.safetensors", lambda t: {k: v.double() + 1e-12 for k, v in t.items()})
    _edit_json(copy, "state.json", lambda s: s.pop("optimizer"))  # optimizer state of float32 params
    loaded = load_checkpoint(copy, ema=False)
    stored = st_load((copy / "model.safetensors").read_bytes())
    for k, v in loaded.model.net.state_dict().items():
        assert v.dtype == torch.float64 and torch.equal(v, stored[f"net.{k}"]), k


def test_mixed_float_dtypes_are_refused(copy):
    def mix(t):
        k = next(k for k in t if k.startswith("net."))
        return {**t, k: t[k].double()}

    _edit_tensors(copy, "model.safetensors", mix)
    _refused(copy, "mix float dtypes")


@pytest.mark.parametrize("field,value,needle", [
    ("step", -5, "step=-5 is not accepted; accepted: an integer >= 0"),
    ("step", 2.5, "step=2.5 is not accepted"),
    ("step", True, "step=True is not accepted"),
    ("world_size", 0, "world_size=0 is not accepted"),
    ("train_seconds", -1.0, "train_seconds=-1.0 is not accepted"),
    ("loss_history", [[99, 0.5]], "loss_history=[[99, 0.5]] is not accepted; accepted: a list of [step <= 3, loss]"),
    ("loss_history", "abc", "loss_history='abc'"),
    ("loss_window", [0.0, -1], "loss_window=[0.0, -1]"),
    ("rng", {"torch": [[300]]}, "rng="),
    ("rng", {"torch": [[1, 2, 3]], "loss": [[1]]}, "rng.torch"),
    ("scheduler", [1, 2], "scheduler=[1, 2]"),
])
def test_bad_state_fields_are_refused(copy, field, value, needle):
    _edit_json(copy, "state.json", lambda s: s.update({field: value}))
    msg = _refused(copy, needle)
    assert "state.json" in msg


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.update(format_version=True), "format_version True is not supported"),
    (lambda s: s["files"].update({"config.json": 5}), "the manifest entry of config.json must be"),
    (lambda s: s["files"]["config.json"].update(bytes="12"), "the manifest entry of config.json must be"),
])
def test_bad_manifest_is_refused(copy, edit, needle):
    _edit_json(copy, "state.json", edit)
    _refused(copy, needle)


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(net=["mlp"]), "net=['mlp'] is not accepted"),
    (lambda c: c["net"].update(kwargs=[1]), "net="),
    (lambda c: c.update(model=[1]), "model=[1] is not accepted"),
    (lambda c: c["model"].update(sigma_data=-1), "sigma_data=-1 is not accepted"),
    (lambda c: c["model"].update(sigma_data="0.5"), "sigma_data='0.5' is not accepted"),
    (lambda c: c["model"].update(evil=1), "unknown ScoreModel option(s) ['evil']"),
    (lambda c: c["model"].update(parameterization="complex"), "parameterization='complex'"),
    (lambda c: c.update(data_shape="ab"), "data_shape='ab' is not accepted"),
    (lambda c: c.update(data_shape=[10**9]), "data_shape=[1000000000] does not fit the net"),
    (lambda c: c.update(data_shape=[1, 8, 8]), "does not fit the net"),
    (lambda c: c.update(conditional="yes"), "conditional='yes'"),
    (lambda c: c.update(data={"name": 3}), "data={'name': 3}"),
    (lambda c: c["sde"]["kwargs"].update(beta_max=-3), "cannot rebuild the SDE"),
    (lambda c: c["net"]["kwargs"].update(act="os.system"), "act='os.system' is not accepted"),
])
def test_bad_config_sections_are_refused(copy, edit, needle):
    _edit_json(copy, "config.json", edit)
    msg = _refused(copy, needle)
    assert "config.json" in msg


def test_foreign_tensor_names_are_refused(copy):
    _edit_tensors(copy, "model.safetensors", lambda t: {**t, "evil.x": torch.zeros(2)})
    _refused(copy, "unexpected tensors ['evil.x']")


@pytest.mark.parametrize("edit,needle", [
    (lambda t: {**t, next(iter(t)): torch.zeros(7)}, "has shape (7,), but parameter"),
    (lambda t: {k: v.to(torch.int32) for k, v in t.items()}, "not a float"),
    (lambda t: {**t, "state.999.exp_avg": torch.zeros(1)}, "names no parameter of the net"),
])
def test_optimizer_state_that_does_not_fit_the_params_is_refused(copy, edit, needle):
    _edit_tensors(copy, "optimizer.safetensors", edit)
    _refused(copy, needle)


def test_a_real_checkpoint_still_loads_and_resumes_exactly(run, tmp_path):
    loaded = load_checkpoint(run)
    assert loaded.step == 3 and loaded.model.net.inp.weight.dtype == torch.float32
    tr = Trainer.resume(run, out=tmp_path / "again", steps=4)
    tr.fit()
    assert tr.step == 4


# ------------------------------------------------------------------------------------------ data paths
def _array_run(tmp_path: Path, name: str = "points.npy") -> tuple[Path, Path]:
    data = tmp_path / "data" / name
    data.parent.mkdir()
    np.save(data, np.random.default_rng(0).standard_normal((256, 2)))
    out = tmp_path / "run"
    cwd = os.getcwd()
    os.chdir(data.parent)  # trained with a RELATIVE path
    try:
        _trainer(out, load_dataset(name)).fit()
    finally:
        os.chdir(cwd)
    return out, data


def test_data_path_is_recorded_absolute_and_read_from_anywhere(tmp_path, monkeypatch):
    out, data = _array_run(tmp_path)
    folder = out / (out / "latest").read_text().strip()
    assert load_checkpoint(out).config["data"]["name"] == str(data)  # absolute, not "points.npy"
    # a namesake in the resuming process's directory is not read instead
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.save(elsewhere / "points.npy", np.zeros((256, 2)))
    monkeypatch.chdir(elsewhere)
    tr = Trainer.resume(out, steps=4)
    assert tr.data.name == str(data) and torch.equal(tr.x, load_dataset(data).x)
    assert folder.is_dir()


@pytest.mark.parametrize("kind", ["missing", "fifo", "device", "text", "symlink_to_device"])
def test_data_path_that_is_not_a_regular_array_file_is_refused_on_resume(tmp_path, kind):
    out, data = _array_run(tmp_path)
    folder = out / (out / "latest").read_text().strip()
    target = {"missing": tmp_path / "nope.npy", "device": Path("/dev/zero"), "text": tmp_path / "notes.txt",
              "fifo": tmp_path / "pipe.npy", "symlink_to_device": tmp_path / "link.npy"}[kind]
    if kind == "fifo":
        os.mkfifo(target)  # reading it would block forever
    elif kind == "text":
        target.write_text("x")
    elif kind == "symlink_to_device":
        target.symlink_to("/dev/zero")
    _edit_json(folder, "config.json", lambda c: c["data"].update(name=str(target)))
    with pytest.raises(CheckpointError) as info:
        Trainer.resume(out, steps=4)
    msg = str(info.value)
    assert f"the stored data path {str(target)!r}" in msg and "config.json" in msg, msg
    assert ("does not exist" in msg) if kind == "missing" else ("is not a regular .npy/.npz file or a folder" in msg)


def test_nan_weights_are_refused(copy):
    def poison(t):
        k = next(k for k in t if k.startswith("net."))
        v = t[k].clone()
        v.view(-1)[0] = float("nan")
        return {**t, k: v}

    _edit_tensors(copy, "model.safetensors", poison)
    _refused(copy, "hold NaN or Inf")


@pytest.mark.parametrize("edit,needle", [
    (lambda g: g.update(amsgrad=True), "does not fit AdamW"),  # no max_exp_avg_sq: step() would raise KeyError
    (lambda g: g.update(betas=[]), "betas=() is not accepted"),
    (lambda g: g.update(betas=[0.9, 1.5]), "betas=(0.9, 1.5) is not accepted"),
    (lambda g: g.update(lr=-1.0), "lr=-1.0 is not accepted"),
    (lambda g: g.update(lr=None), "lr=None is not accepted"),
    (lambda g: g.update(params=[0, 0]), "params=[0, 0] is not accepted"),
    (lambda g: g.update(evil=1), "has keys"),
])
def test_an_optimizer_state_that_would_fail_in_step_is_refused_on_resume(copy, edit, needle):
    _edit_json(copy, "state.json", lambda s: edit(s["optimizer"]["param_groups"][0]))
    with pytest.raises(CheckpointError) as info:
        Trainer.resume(copy.parent, out=copy.parent / "again", steps=4)
    assert needle in str(info.value) and "state.json" in str(info.value), str(info.value)


def test_an_rng_state_of_the_wrong_size_is_refused_on_resume(copy):
    _edit_json(copy, "state.json", lambda s: s["rng"].update(loss=[[1] * 16]))  # a CUDA generator's size, on the CPU
    with pytest.raises(CheckpointError, match="rng states unusable on cpu"):
        Trainer.resume(copy.parent, out=copy.parent / "again", steps=4)
