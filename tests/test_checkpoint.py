"""Checkpoints: exact round trip, no pickle, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import scoresde
from scoresde import checkpoint as ck
from scoresde.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint, save_run_checkpoint
from scoresde.data import load_dataset
from scoresde.model import ScoreModel
from scoresde.nets import build_net
from scoresde.sde import VESDE, VPSDE
from scoresde.train import TrainConfig, Trainer


def _trainer(out, steps=6, sde=None, param="eps", noise_input="t", loss="dsm"):
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=16)
    model = ScoreModel(net, sde or VPSDE(), param, noise_input=noise_input)
    cfg = TrainConfig(steps=steps, batch_size=64, ckpt_every=3, warmup=2, log_every=3, progress=False,
                      verbose=False, loss=loss)
    return Trainer(model, load_dataset("gmm", n=512, seed=0), cfg, out=out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    tr = _trainer(out)
    tr.fit()
    return out, tr


def _x_t():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 2, generator=g), torch.rand(32, generator=g, dtype=torch.float64) * 0.99 + 0.01


def test_round_trip_is_exact(run):
    out, tr = run
    loaded = load_checkpoint(out)
    assert loaded.path.name == "step-0000006" and loaded.step == 6
    x, t = _x_t()
    with torch.no_grad():
        # Same weights, same code: the outputs agree bit for bit (safetensors keeps the exact values).
        assert torch.equal(loaded.model(x, t).eps, tr.ema_model()(x, t).eps)
        raw = load_checkpoint(out, ema=False).model
        assert torch.equal(raw(x, t).eps, ScoreModel(tr.net, tr.model.sde, "eps")(x, t).eps)
    assert not torch.equal(loaded.model(x, t).eps, raw(x, t).eps)  # EMA and raw weights differ after 6 steps
    cfg = loaded.config
    assert cfg["format"] == ck.FORMAT and cfg["scoresde_version"] == scoresde.__version__
    assert cfg["net"] == {"name": "mlp", "kwargs": tr.net.config()}
    assert cfg["sde"] == VPSDE().config() and cfg["model"] == tr.model.config()
    assert cfg["loss"] == {"name": "dsm", "kwargs": {}}
    assert cfg["data"] == {"name": "gmm", "n": 512, "seed": 0, "kwargs": {}}
    assert cfg["data_shape"] == [2] and cfg["train"]["batch_size"] == 64
    # the scaler maps back to data space exactly as the data set's does
    ds = load_dataset("gmm", n=512, seed=0)
    assert torch.equal(loaded.scaler.from_model(ds.x), ds.scaler.from_model(ds.x))
    model, sde, scaler = load_model(out / "step-0000003")
    assert isinstance(model, ScoreModel) and sde.config() == VPSDE().config() and scaler is not None


def test_optimizer_state_round_trip(run):
    out, tr = run
    got = load_checkpoint(out).optimizer_state()
    want = tr.optimizer.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert set(got["state"]) == set(want["state"])
    for pid, entry in want["state"].items():
        for key, value in entry.items():
            assert torch.equal(got["state"][pid][key], value), (pid, key)


def test_edm_parameterisation_round_trip(tmp_path):
    tr = _trainer(tmp_path / "ve", steps=2, sde=VESDE(), param="edm", noise_input="edm", loss="edm")
    tr.fit()
    loaded = load_checkpoint(tmp_path / "ve")
    assert loaded.model.config() == {"parameterization": "edm", "noise_input": "edm", "sigma_data": 0.5}
    assert loaded.sde.config() == VESDE().config()
    x, t = _x_t()
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t).x0, tr.ema_model()(x, t).x0)


def test_loading_uses_no_pickle(run, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("pickle / torch.load must not be used to load a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    out, _ = run
    load_checkpoint(out)
    Trainer.resume(out, progress=False)  # the resume path too (optimizer state, RNG states)


# ------------------------------------------------------------------------------------- atomicity
class _Killed(Exception):
    pass


def _kill_after(monkeypatch, n_files: int):
    """Make the n-th file write die half-way.

    Inside the hidden folder a checkpoint is assembled in, the partial bytes go under the file's
    final name (the worst case); elsewhere (the 'latest' pointer) they go to a temp sibling, which
    is what the atomic writer (temp file, fsync, rename) can leave when killed.
    """
    calls = {"n": 0}
    real = ck.atomic_write_bytes

    def dying(path, data):
        calls["n"] += 1
        if calls["n"] == n_files:
            path = Path(path)
            inside = path.parent.name.startswith(".tmp-")
            (path if inside else path.with_name(".tmp-killed")).write_bytes(data[: len(data) // 2])
            raise _Killed(path)
        real(path, data)

    monkeypatch.setattr(ck, "atomic_write_bytes", dying)


# Writes of a run checkpoint, in order: the owner token, the 4 files, the run manifest, the 'latest' pointer.
@pytest.mark.parametrize("n_files", [1, 2, 3, 4, 5, 6, 7])
def test_killed_save_leaves_previous_checkpoint(tmp_path, monkeypatch, n_files):
    tr = _trainer(tmp_path / "run", steps=3)
    tr.fit()  # step-0000003, complete
    before = load_checkpoint(tmp_path / "run")
    tr.config.steps = 6
    tr.train_step()
    _kill_after(monkeypatch, n_files)
    with pytest.raises(_Killed):
        save_run_checkpoint(tmp_path / "run", tr.step, model=tr.model, ema=tr.ema, optimizer=tr.optimizer,
                            config=tr.checkpoint_config(), state=tr.state())
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "run")
    if n_files <= 5:  # died while writing the folder: the old checkpoint is what loads, and no step-4 exists
        assert after.path.name == "step-0000003" and not (tmp_path / "run" / "step-0000004").exists()
    else:  # died writing the manifest or 'latest': the old pointer stands; the complete new folder is unused
        assert after.path.name == "step-0000003" and (tmp_path / "run" / "step-0000004" / "state.json").is_file()
    assert after.state == before.state
    # the next save cleans the leftovers up and works
    tr.save()
    assert load_checkpoint(tmp_path / "run").step == 4
    # The killed folder's leftovers carry the run's owner token and are removed; a half-written temp
    # file of a single-file write (manifest, 'latest') carries nothing that proves it ours, so it stays.
    left = {p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")} - {".scoresde-run.json"}
    assert left == (set() if n_files <= 5 else {".tmp-killed"})


def test_killed_overwrite_keeps_old_folder(tmp_path, monkeypatch):
    tr = _trainer(None, steps=1)
    tr.fit()
    target = tmp_path / "ckpt"
    save_checkpoint(target, tr.model, ema=tr.ema)
    old = (target / "model.safetensors").read_bytes()
    tr.train_step()
    _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        save_checkpoint(target, tr.model, ema=tr.ema)
    monkeypatch.undo()
    assert (target / "model.safetensors").read_bytes() == old
    load_checkpoint(target)


# ------------------------------------------------------------------------------------- bad files
def _rewrite_manifest(folder: Path, fname: str) -> None:
    """Update state.json's size/sha256 of ``fname`` so the damage is caught by the parser, not the hash."""
    state = json.loads((folder / "state.json").read_text())
    data = (folder / fname).read_bytes()
    state["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "state.json").write_text(json.dumps(state))


def _damage(kind: str, folder: Path, tmp: Path) -> tuple[Path, str]:
    """Damage a copy of a checkpoint; return (path to load, text the error must contain)."""
    if kind == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
        return folder, "model.safetensors"
    if kind == "flipped_byte":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (folder / "model.safetensors").write_bytes(bytes(data))
        return folder, "sha256"
    if kind == "pickle_as_safetensors":  # a torch.save file under the safetensors name
        torch.save({"net": torch.zeros(3)}, folder / "model.safetensors")
        _rewrite_manifest(folder, "model.safetensors")
        return folder, "model.safetensors: not a readable safetensors file"
    if kind == "truncated_weights_consistent_manifest":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:100])
        _rewrite_manifest(folder, "model.safetensors")
        return folder, "model.safetensors: not a readable safetensors file"
    if kind == "pt_file":
        torch.save({"state_dict": {}}, tmp / "model.pt")
        return tmp / "model.pt", "is a file"
    if kind == "foreign_json":
        (folder / "state.json").write_text(json.dumps({"step": 3}))
        return folder, "state.json: no 'scoresde-checkpoint' format tag"
    if kind == "bad_json":
        (folder / "state.json").write_bytes(b'{"format": "scoresde-checkpoint", "form')
        return folder, "state.json: not valid JSON"
    if kind == "future_version":
        state = json.loads((folder / "state.json").read_text())
        state["format_version"] = 99
        (folder / "state.json").write_text(json.dumps(state))
        return folder, "format_version 99"
    if kind == "unknown_net":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["net"]["name"] = "os.system"
        (folder / "config.json").write_text(json.dumps(cfg))
        _rewrite_manifest(folder, "config.json")
        return folder, "unknown net 'os.system'; accepted: mlp"
    if kind == "unknown_sde":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["sde"]["class"] = "Evil"
        (folder / "config.json").write_text(json.dumps(cfg))
        _rewrite_manifest(folder, "config.json")
        return folder, "unknown SDE class 'Evil'"
    if kind == "wrong_shapes":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["net"]["kwargs"]["hidden"] = 8
        (folder / "config.json").write_text(json.dumps(cfg))
        _rewrite_manifest(folder, "config.json")
        return folder, "weights do not fit the net"
    if kind == "missing_file":
        (folder / "config.json").unlink()
        return folder, "config.json: missing"
    if kind == "dangling_latest":
        run = folder.parent
        (run / "latest").write_text("step-0000999\n")
        return run, "does not exist"
    if kind == "empty_folder":
        (tmp / "empty").mkdir()
        return tmp / "empty", "not a scoresde checkpoint"
    raise AssertionError(kind)


BAD = ["truncated_weights", "flipped_byte", "pickle_as_safetensors", "truncated_weights_consistent_manifest",
       "pt_file", "foreign_json", "bad_json", "future_version", "unknown_net", "unknown_sde", "wrong_shapes",
       "missing_file", "dangling_latest", "empty_folder"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_checkpoints_raise_checkpoint_error(run, tmp_path, kind):
    out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path, expected = _damage(kind, copy / "step-0000006", tmp_path)
    with pytest.raises(CheckpointError, match=None) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert expected in msg, msg
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors as clean messages


def test_foreign_entries_in_a_run_folder_are_never_touched(tmp_path):
    # A run folder that already holds the user's own .tmp-*, .old-step-* and step-* entries: training
    # with pruning (keep=1) and resuming must leave every one of them byte-identical.
    run = tmp_path / "run"
    foreign = {".tmp-mine": b"t", ".old-step-0000001-x/inner": b"o", "step-0000002/notes.txt": b"s",
               "step-12/data.bin": b"\x00\x01", ".tmp-step-0000001-deadbeef/f": b"u", "step-0000001": b"a file"}
    for rel, data in foreign.items():
        f = run / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    def trainer(steps):
        tr = _trainer(run, steps=steps)
        tr.config.ckpt_every, tr.config.keep = 1, 1
        return tr

    tr = trainer(4)
    with pytest.raises(CheckpointError, match="step-0000001 exists and is not a checkpoint scoresde wrote"):
        tr.fit()  # the user's file named like our first checkpoint is refused, not replaced
    (run / "step-0000001").unlink()
    del foreign["step-0000001"]
    tr = trainer(4)
    with pytest.raises(CheckpointError, match="step-0000002 exists"):
        tr.fit()  # likewise the user's folder step-0000002
    shutil.rmtree(run / "step-0000002")
    del foreign["step-0000002/notes.txt"]
    trainer(3).fit()
    resumed = Trainer.resume(run, steps=5, ckpt_every=1, keep=1)
    resumed.fit()
    for rel, data in foreign.items():
        assert (run / rel).read_bytes() == data, rel
    ours = sorted(p.name for p in run.iterdir() if p.name.startswith("step-0"))
    assert ours == ["step-0000005"]  # keep=1 pruned only this run's own checkpoints
