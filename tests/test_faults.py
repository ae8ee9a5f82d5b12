"""The fault suite: real processes killed and interrupted, concurrent writers, a full disk, foreign files.

Each promise of docs/reliability.md that concerns files is checked here by doing the damage:

* SIGKILL / SIGINT during training (checkpoints every step, so kills land inside checkpoint writes),
  during ``scoresde sample`` and during a bench sweep; then resume: the same weights / samples / records;
* two sweeps started at once in two processes on one folder: every cell exactly once;
* a full disk (a write patched to fail half-way, and a real per-process file-size limit): one clear line,
  no torn file, the previous file intact;
* output folders holding foreign files: every one byte-identical afterwards.

Kills are triggered by file events (a checkpoint, a result line, a progress bar appearing), so the
tests do not depend on the machine's speed; where exactly a kill lands varies between runs, and the
property (identical results) must hold wherever it lands.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde import _utils
from scoresde.checkpoint import MODEL_FILE, OPTIM_FILE, load_checkpoint
from scoresde.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 120  # seconds for any one subprocess event (generous: 2 shared cores)


def _cli(*args) -> int:
    try:
        return main([str(a) for a in args])
    finally:
        torch.set_num_threads(1)


def _spawn(*args, log: Path | None = None) -> subprocess.Popen:
    """``python -m scoresde ARGS`` in a new process; stderr to a pipe, or to the file ``log`` (to watch it)."""
    err = open(log, "wb") if log is not None else subprocess.PIPE  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "scoresde", *map(str, args)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=err)
    proc.log = log
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    return proc.log.read_text(errors="replace") if proc.log is not None else proc.stderr.read().decode()


def _wait_for(proc: subprocess.Popen, cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {_stderr(proc)[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT} s"
        time.sleep(0.005)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, _stderr(proc)


def _tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _plant_foreign(folder: Path) -> dict[str, str]:
    """The user's own files in an output folder, named like ours where that is possible without colliding."""
    files = {"notes.txt": b"mine", ".tmp-mine": b"t", ".old-step-0000001-x/inner": b"o", "step-12/data.bin": b"\x00\x01",
             "sub/results.jsonl": b"not ours\n", ".scoresde-lockfile": b"x", "plots/my-figure.png": b"\x89PNG mine"}
    for rel, data in files.items():
        f = folder / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def _foreign_intact(folder: Path, planted: dict[str, str]) -> None:
    now = _tree(folder)
    for rel, digest in planted.items():
        assert now.get(rel) == digest, f"foreign file {rel} was touched"


# ------------------------------------------------------------------------------------------ training
TRAIN = ["train", "--data", "moons", "--n-data", 512, "--net-kwargs", '{"hidden": 16, "depth": 1}', "--steps", 150,
         "--batch-size", 32, "--ckpt-every", 1, "--keep", 2, "--log-every", 7, "--seed", 3, "--quiet", "--no-progress",
         "--threads", 1]


def _latest_step(run: Path) -> int:
    """The step the run's 'latest' pointer names (read alone: the writer may be pruning older folders)."""
    try:
        return int((run / "latest").read_text().strip().split("-")[1])
    except (OSError, IndexError, ValueError):
        return -1


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    ck = load_checkpoint(run, ema=False)
    return {**load_file(str(ck.path / MODEL_FILE)), **load_file(str(ck.path / OPTIM_FILE))}, ck


def test_training_killed_repeatedly_inside_checkpoint_writes_resumes_identically(tmp_path):
    """SIGKILL twice and SIGINT once at different points of a checkpoint period (a checkpoint every step, so
    the signal often lands inside a write; test_checkpoint.py kills at every write point in-process), resuming
    each time: the end is bit-identical to an uninterrupted run, the folder loads after every kill, and the
    user's files in it are untouched."""
    assert _cli(*TRAIN, "--out", tmp_path / "full") == 0
    run = tmp_path / "killed"
    run.mkdir()
    planted = _plant_foreign(run)
    steps_seen = []
    for i, sig in enumerate([signal.SIGKILL, signal.SIGKILL, signal.SIGINT]):
        before = load_checkpoint(run).step if (run / "latest").exists() else 0
        proc = _spawn(*TRAIN, "--out", run, *(["--resume"] if i else []))
        _wait_for(proc, lambda b=before: _latest_step(run) >= b + 5, "five more checkpoints")
        # Land the signal somewhere inside the next checkpoint period (most of which is the checkpoint's write):
        # a third, two thirds and all of one period after a checkpoint appeared.
        t0, s0 = time.monotonic(), _latest_step(run)
        _wait_for(proc, lambda s=s0: _latest_step(run) > s, "the next checkpoint")
        period = time.monotonic() - t0
        time.sleep(period * (i + 1) / 3)
        code, err = _stop(proc, sig)
        if sig == signal.SIGINT:
            assert code == 130 and "Traceback" not in err and "saved a checkpoint" in err, (code, err)
        else:
            assert code == -signal.SIGKILL
        step = load_checkpoint(run).step  # loads after every kill: never a torn checkpoint or pointer
        assert before < step < 150
        steps_seen.append(step)
    assert _cli(*TRAIN, "--out", run, "--resume") == 0
    (want, full), (got, res) = _weights(tmp_path / "full"), _weights(run)
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert full.state["loss_history"] == res.state["loss_history"] and res.step == 150
    _foreign_intact(run, planted)
    assert steps_seen == sorted(steps_seen)


# ------------------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    assert _cli("train", "--data", "gmm", "--n-data", 256, "--net-kwargs", '{"hidden": 16, "depth": 1}', "--steps", 5,
                "--batch-size", 64, "--warmup", 1, "--out", out, "--quiet", "--no-progress", "--threads", 1) == 0
    return out


SAMPLE = ["sample", "--sampler", "euler_maruyama", "--steps", 200, "-n", 4000, "--batch-size", 1000, "--no-png",
          "--threads", 1]


def _samples(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["samples"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_sampling_killed_leaves_the_previous_file_whole_and_a_rerun_is_identical(ckpt, tmp_path, sig):
    """An existing samples file, a second `scoresde sample` onto it killed mid-run: the file is still the
    first run's, whole; running again gives the same samples (per-sample seeds)."""
    folder = tmp_path / "o"
    out = folder / "s.npz"
    assert _cli(*SAMPLE, "--checkpoint", ckpt, "--out", out) == 0
    first = out.read_bytes()
    proc = _spawn(*SAMPLE, "--checkpoint", ckpt, "--out", out, "--progress", log=tmp_path / "stderr.txt")
    _wait_for(proc, lambda: "euler_maruyama" in _stderr(proc), "the first batch's progress bar")
    code, err = _stop(proc, sig)
    if sig == signal.SIGINT:
        assert code == 130 and "scoresde sample: interrupted" in err and "Traceback" not in err, (code, err[-500:])
    assert out.read_bytes() == first  # untouched: the write is atomic and happens last
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".tmp-")] == ["s.npz"]
    again = tmp_path / "again.npz"
    assert _cli(*SAMPLE, "--checkpoint", ckpt, "--out", again) == 0
    np.testing.assert_array_equal(_samples(again), _samples(out))


def test_a_write_that_fails_half_way_leaves_no_torn_file(ckpt, tmp_path, monkeypatch, capsys):
    """A full disk simulated in-process: the file write dies half-way with ENOSPC. The command says so in
    one line (exit 2), the target keeps its previous content, no temporary file is left."""
    out = tmp_path / "s.npz"
    out.write_bytes(b"previous content")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(_utils.os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    assert _cli("sample", "--checkpoint", ckpt, "--steps", 3, "-n", 50, "--out", out, "--no-png") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(out) in err and "nothing was replaced" in err
    assert out.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def _no_big_files():
    # a real per-process limit on file size (RLIMIT_FSIZE, no root needed): a write past it fails with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_real_write_limit_gives_one_line_and_no_torn_file(ckpt, tmp_path):
    """The operating system refuses the write (file-size limit of 64 KiB; the samples file is ~330 KiB):
    one line on stderr, exit 2, and no partial file under either name."""
    out = tmp_path / "big.npz"
    proc = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--checkpoint", str(ckpt), "--steps", "2", "-n",
                           "20000", "--out", str(out), "--no-png", "--threads", "1"], env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT, preexec_fn=_no_big_files)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "nothing was replaced" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ bench
BENCH = ["bench", "--samplers", "euler_maruyama,ddim,heun", "--steps", "2,4,8", "--n", 400, "--floor-repeats", 2,
         "--no-warmup", "--min-time", 0, "--max-timed-runs", 1, "--metrics", "sw2,mmd", "--no-progress", "--threads", 1]
TIMING = {"wall_s", "wall_min_s", "timed_runs", "loop_s", "samples_per_s", "net_eval_s", "overhead", "peak_mem_mb",
          "mem_method", "time", "rank"}


def _records(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _measured(recs: list[dict]) -> dict[str, dict]:
    """key -> the record without its timing and memory fields (as JSON); asserts every key appears once."""
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), f"duplicate cells: {sorted(k for k in keys if keys.count(k) > 1)}"
    # timings and memory vary between runs (anything in seconds or MB too); json makes NaN equal to NaN
    return {r["key"]: json.dumps({k: v for k, v in r.items() if k not in TIMING and not k.endswith(("_s", "_mb"))},
                                 sort_keys=True) for r in recs}


@pytest.fixture(scope="module")
def bench_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_ref")
    assert _cli(*BENCH, "--out", out) == 0
    return _measured(_records(out))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_killed_sweep_resumes_to_the_same_records(bench_reference, tmp_path, sig):
    out = tmp_path / "b"
    out.mkdir()
    planted = _plant_foreign(out)
    proc = _spawn(*BENCH, "--out", out)
    _wait_for(proc, lambda: (out / "results.jsonl").exists() and (out / "results.jsonl").read_text().count("\n") >= 2,
              "two finished cells")
    code, err = _stop(proc, sig)
    if sig == signal.SIGINT:
        assert code == 130 and "scoresde bench: interrupted" in err and "Traceback" not in err, (code, err[-500:])
    done = len(_records(out)) if sig == signal.SIGINT else None  # SIGKILL may leave a torn last line: repaired below
    assert done is None or 2 <= done < len(bench_reference)
    assert _cli(*BENCH, "--out", out) == 0  # (after SIGKILL, a torn last line is dropped with a warning)
    assert _measured(_records(out)) == bench_reference  # every cell once, each measured as in one go
    _foreign_intact(out, planted)


def test_two_concurrent_sweeps_on_one_folder_give_each_cell_once(bench_reference, tmp_path):
    """Two processes start the same sweep on one folder at once: the folder lock lets one write and refuses the
    other in one line naming the holder (or, if the first has finished, the second finds every cell done)."""
    out = tmp_path / "b"
    procs = [_spawn(*BENCH, "--out", out) for _ in range(2)]
    results = []
    for p in procs:
        p.wait(TIMEOUT * 3)
        results.append((p.returncode, p.stderr.read().decode()))
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "is in use by another scoresde process" in err and err.strip().count("\n") == 0, err
    assert _measured(_records(out)) == bench_reference
    assert _cli(*BENCH, "--out", out) == 0  # and a third run has nothing left to do
    assert _measured(_records(out)) == bench_reference


# ------------------------------------------------------------------------------------------ foreign files
def test_output_folders_with_foreign_files_are_left_alone(ckpt, tmp_path):
    """Each command writing into a folder that already holds the user's files: all of them byte-identical."""
    for name in ("train", "demo", "sample"):
        folder = tmp_path / name
        folder.mkdir()
        planted = _plant_foreign(folder)
        if name == "train":
            assert _cli("train", "--data", "moons", "--n-data", 128, "--net-kwargs", '{"hidden": 8, "depth": 1}',
                        "--steps", 4, "--batch-size", 32, "--ckpt-every", 1, "--keep", 1, "--out", folder, "--quiet",
                        "--no-progress", "--threads", 1) == 0
        elif name == "demo":
            assert _cli("demo", "--exact", "--samplers", "ddim:3", "-n", 64, "--out", folder, "--threads", 1) == 0
        else:
            assert _cli("sample", "--checkpoint", ckpt, "--steps", 3, "-n", 16, "--out", folder / "x.npz") == 0
        _foreign_intact(folder, planted)


def test_a_full_disk_while_appending_a_result_leaves_whole_records(tmp_path, monkeypatch):
    """The append of a cell's record dies half-way (ENOSPC): the partial line is taken back, the error
    names the cell and the file, and the store still reads every earlier record."""
    from scoresde.bench import store

    s = store.ResultStore(str(tmp_path))
    s.append({"key": "a", "status": "ok"})
    before = (tmp_path / "results.jsonl").read_bytes()
    real_write = os.write

    def half(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "write", half)
    with pytest.raises(OSError, match=r"cannot append the record of cell 'b' to .*results.jsonl.*No space left"):
        s.append({"key": "b", "status": "ok"})
    monkeypatch.undo()
    assert (tmp_path / "results.jsonl").read_bytes() == before
    assert [r["key"] for r in s.records()] == ["a"]


def test_written_files_take_the_umask_mode(ckpt, tmp_path):
    """Every output file has the mode an ordinary open() would give (0o666 & ~umask), not mkstemp's 0600."""
    old = os.umask(0o027)
    try:
        assert _cli("sample", "--checkpoint", ckpt, "--steps", 2, "-n", 8, "--out", tmp_path / "s.npz") == 0
        assert _cli("train", "--data", "moons", "--n-data", 64, "--net-kwargs", '{"hidden": 8, "depth": 1}', "--steps", 1,
                    "--batch-size", 32, "--out", tmp_path / "run", "--quiet", "--no-progress", "--threads", 1) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8  # the .npz, its .png, a checkpoint's five files, latest, the run manifest
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o640)}, modes
