"""The benchmark harness: files, resume, determinism, floors, shards, CLI.

Sweeps here are tiny (2-D exact mixture, a few hundred samples, a few steps); no test looks at a
timing value, only at the presence and plumbing of timing fields.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import scoresde
from scoresde.bench import (
    Entry,
    Sweep,
    get_problem,
    markdown_table,
    merge_shards,
    mixture,
    parse_entries,
    per_sample_seeds,
    read_jsonl,
    run_sweep,
    shard,
)
from scoresde.cli import main
from scoresde.metrics import sliced_wasserstein

FAST = dict(problems=["gmm2d-vp"], floor_repeats=2, min_time=0.0, warmup=False)


def _oracle(model, sde, x, ts, *, noise, callback):
    """A perfect sampler for the tests: exact draws of the 2-D mixture built from the per-sample noise."""
    gm = mixture("gmm2d")
    model(x, ts[-1])  # one counted network call
    z = noise(x).double()
    u = 0.5 * (1 + torch.erf(noise(x)[:, 0].double() / math.sqrt(2)))  # uniform per sample
    k = torch.searchsorted(torch.cumsum(gm.weights, 0), u).clamp_max(gm.n_components - 1)
    L = torch.linalg.cholesky(gm.covariances)[k]
    return (gm.means[k] + torch.einsum("bij,bj->bi", L, z)).to(x.dtype)


def _nan(model, sde, x, ts, *, noise, callback):
    """A sampler that diverges (returns NaN) for the error-recording test."""
    model(x, ts[0])
    return x * float("nan")


@pytest.fixture(scope="module", autouse=True)
def _test_samplers():
    scoresde.samplers.register_sampler("bench_oracle", _oracle, kind="sde", order=None, stochastic=True, overwrite=True)
    scoresde.samplers.register_sampler("bench_nan", _nan, kind="sde", order=None, stochastic=True, overwrite=True)
    yield
    scoresde.samplers.registry.unregister("bench_oracle")
    scoresde.samplers.registry.unregister("bench_nan")


def _sweep(**kw):
    args = dict(entries=[Entry("euler_maruyama")], steps=[2, 4], seeds=[0], n=200, metrics=["sw2"], **FAST)
    args.update(kw)
    return Sweep(**args)


def test_tiny_sweep_writes_csv_jsonl_table_and_plots(tmp_path):
    out = str(tmp_path)
    sweep = _sweep(entries=[Entry("euler_maruyama"), Entry("bench_oracle", {"denoise": False}, label="oracle")],
                   metrics=None, steps=[3])
    s = run_sweep(sweep, out, progress=False, log=lambda m: None)
    assert s["ran"] == 2
    recs, bad = read_jsonl(os.path.join(out, "results.jsonl"))
    assert bad == 0 and len(recs) == 2
    with open(os.path.join(out, "results.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == [r["key"] for r in recs]
    for r in recs:
        assert r["status"] == "ok"
        for f in ("nfe", "wall_s", "samples_per_s", "net_eval_s", "overhead", "peak_mem_mb", "mem_method"):
            assert f in r, f
        for m in ("sw2", "mmd", "energy", "mode_err", "logp_gap"):  # every mixture metric with its floor
            assert {m, f"{m}_floor", f"{m}_floor_std", f"{m}_ratio"} <= set(r), m
    table = open(os.path.join(out, "table.md")).read()
    assert "| euler_maruyama | 3 |" in table and "| oracle | 3 |" in table
    for m in ("sw2", "mmd", "energy", "mode_err", "logp_gap"):
        png = os.path.join(out, "plots", f"gmm2d-vp_{m}.png")
        assert os.path.getsize(png) > 1000, png
    assert json.load(open(os.path.join(out, "sweep.json")))["n"] == 200


def test_record_matches_a_direct_computation(tmp_path):
    # The record's NFE, SW2 and SW2 floor, recomputed here by hand from the documented seeds and sets.
    s = run_sweep(_sweep(steps=[4]), str(tmp_path), progress=False, report=False)
    rec = s["records"][0]
    problem = get_problem("gmm2d-vp")
    res = scoresde.sample(problem.make_model("cpu"), problem.sde, (200, 2), "euler_maruyama", 4,
                          seeds=per_sample_seeds(0, 200))
    ref = problem.reference(200, 0)
    assert rec["nfe"] == res.nfe
    assert rec["sw2"] == pytest.approx(sliced_wasserstein(res.x, ref), rel=1e-12)  # same float64 computation
    floors = [sliced_wasserstein(problem.floor_set(200, 0, r), ref) for r in range(2)]
    assert rec["sw2_floor"] == pytest.approx(math.sqrt(sum(f * f for f in floors) / 2), rel=1e-12)
    assert rec["sw2_ratio"] == pytest.approx(rec["sw2"] / rec["sw2_floor"], rel=1e-12)


def test_floor_calibration_perfect_sampler_at_floor_coarse_sampler_above(tmp_path):
    sweep = _sweep(entries=[Entry("bench_oracle", {"denoise": False}), Entry("euler_maruyama")], steps=[2], n=500,
                   metrics=["sw2", "mmd"], floor_repeats=5)
    recs = {r["sampler"]: r for r in run_sweep(sweep, str(tmp_path), progress=False, report=False)["records"]}
    # Exact samples score like another exact set: their SW2 is one more draw of the floor's
    # distribution (measured ratios 0.9-1.5 over 8 seeds at n = 300-500), MMD^2 within a few rms of 0.
    assert 0.5 < recs["bench_oracle"]["sw2_ratio"] < 2.0
    assert abs(recs["bench_oracle"]["mmd_ratio"]) < 3.0
    # Euler-Maruyama with 2 steps is visibly wrong (measured SW2 ratios 6-11, MMD ratios 22-91).
    assert recs["euler_maruyama"]["sw2_ratio"] > 4.0
    assert recs["euler_maruyama"]["mmd_ratio"] > 10.0


def test_resume_after_interruption_runs_only_missing_cells(tmp_path):
    out = str(tmp_path)
    sweep = _sweep(steps=[2, 3, 4], seeds=[0, 1])  # 6 cells

    def stop_after_2(cell, rec, count):
        if count == 2:
            raise KeyboardInterrupt  # a Ctrl-C after the second cell was stored

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, progress=False, report=False, on_cell=stop_after_2)
    first, _ = read_jsonl(os.path.join(out, "results.jsonl"))
    assert len(first) == 2
    ran = []
    s = run_sweep(sweep, out, progress=False, report=False, on_cell=lambda c, r, k: ran.append(c.key))
    assert s["ran"] == 4 and len(ran) == 4 and s["skipped_done"] == 2
    assert not set(ran) & {r["key"] for r in first}
    # A torn last line (a crash mid-write) is dropped and only that cell runs again.
    path = os.path.join(out, "results.jsonl")
    text = open(path).read()
    last = text.rstrip("\n").split("\n")[-1]
    open(path, "w").write(text[: len(text) - len(last) // 2 - 1])
    ran.clear()
    with pytest.warns(UserWarning, match="dropped 1 unreadable line"):
        s = run_sweep(sweep, out, progress=False, report=False, on_cell=lambda c, r, k: ran.append(c.key))
    assert ran == [json.loads(last)["key"]]
    recs, bad = read_jsonl(path)
    assert bad == 0 and len(recs) == 6 and len({r["key"] for r in recs}) == 6
    # Nothing left to do.
    assert run_sweep(sweep, out, progress=False, report=False)["ran"] == 0


def test_same_seeds_same_results_any_batch(tmp_path):
    a = run_sweep(_sweep(steps=[3]), str(tmp_path / "a"), progress=False, report=False)["records"][0]
    b = run_sweep(_sweep(steps=[3], batch=37), str(tmp_path / "b"), progress=False, report=False)["records"][0]
    # Per-sample seeds: sample i is the same whatever the batch, so every quality number is equal.
    for k in ("sw2", "sw2_floor", "sw2_floor_std", "nfe"):
        assert a[k] == b[k], k
    assert a["key"] == b["key"]


def test_diverged_cell_is_recorded_and_retried_on_request(tmp_path):
    out = str(tmp_path)
    sweep = _sweep(entries=[Entry("bench_nan")], steps=[2])
    msgs = []
    rec = run_sweep(sweep, out, progress=False, report=False, log=msgs.append)["records"][0]
    assert rec["status"] == "error" and "NaN" in rec["error"]
    assert any("bench_nan" in m for m in msgs)
    assert run_sweep(sweep, out, progress=False, report=False)["ran"] == 0
    s = run_sweep(sweep, out, progress=False, report=False, retry_errors=True)
    assert s["ran"] == 1 and len(s["records"]) == 1  # the retry replaced the old record
    assert "| bench_nan (diverged) | 2 | - |" in markdown_table(s["records"])


def test_shards_partition_and_merge(tmp_path):
    sweep = _sweep(steps=[2, 3], seeds=[0, 1, 2])  # 6 cells
    cells = sweep.cells()
    parts = [shard(cells, r, 4) for r in range(4)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in cells)  # a partition
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    out = str(tmp_path / "sharded")
    for rank in (0, 1):  # what two torchrun ranks do, one after the other
        s = run_sweep(sweep, out, progress=False, report=False, shard_of=(rank, 2))
        assert s["ran"] == 3
    listing = lambda: sorted(f for f in os.listdir(out) if not f.startswith(".scoresde-lock"))  # noqa: E731
    assert listing() == ["results.rank0.jsonl", "results.rank1.jsonl", "sweep.json"]
    merged = merge_shards(out)
    assert listing() == ["results.csv", "results.jsonl", "sweep.json"]
    single = run_sweep(sweep, str(tmp_path / "single"), progress=False, report=False)["records"]
    by_key = {r["key"]: r for r in merged}
    assert sorted(by_key) == sorted(r["key"] for r in single)
    for r in single:  # the split does not change any result
        assert by_key[r["key"]]["sw2"] == r["sw2"]
    assert run_sweep(sweep, out, progress=False, report=False)["ran"] == 0


def test_torchrun_two_ranks_give_the_single_process_results(tmp_path):
    """A real 2-process torchrun sweep (gloo, CPU) through the CLI: rank 0 merges the shards, and
    every cell equals the single-process run's (per-sample seeds: the split changes nothing), so
    the comparison is exact, not within noise."""
    common = ["bench", "--samplers", "ddim,euler_maruyama", "--steps", "2,3", "-n", "100", "--seeds", "0,1",
              "--metrics", "sw2", "--floor-repeats", "2", "--min-time", "0", "--no-progress", "--device", "cpu"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(common + ["--out", one]) == 0
    sys.path.insert(0, str(Path(__file__).parent))
    from _torchrun import torchrun

    torchrun("-m", "scoresde", *common, "--out", two)
    assert not [f for f in os.listdir(two) if f.startswith("results.rank")]  # the shards were merged
    merged = {r["key"]: r for r in read_jsonl(os.path.join(two, "results.jsonl"))[0]}
    single = {r["key"]: r for r in read_jsonl(os.path.join(one, "results.jsonl"))[0]}
    assert sorted(merged) == sorted(single) and len(single) == 8
    assert sorted(r["rank"] for r in merged.values()) == [0, 0, 0, 0, 1, 1, 1, 1]
    for k, r in single.items():
        assert merged[k]["sw2"] == r["sw2"] and merged[k]["nfe"] == r["nfe"]
    assert os.path.exists(os.path.join(two, "table.md"))


def test_cli_help_and_a_small_resumable_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    assert "--samplers" in capsys.readouterr().out
    out = str(tmp_path)
    argv = ["bench", "--samplers", "euler_maruyama,bench_oracle(denoise=false)", "--steps", "2,3", "-n", "100",
            "--out", out, "--metrics", "sw2", "--floor-repeats", "2", "--min-time", "0", "--no-progress",
            "--device", "cpu"]
    assert main(argv + ["--max-cells", "1"]) == 0
    assert len(read_jsonl(os.path.join(out, "results.jsonl"))[0]) == 1
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 new cell(s) run, 1 already done, of 4" in printed
    assert "| bench_oracle(denoise=False) | 3 |" in printed
    assert main(["bench", "--out", out, "--report-only"]) == 0


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="problem 'gmm3d-vp' is not one of the accepted values: gmm2d-vp"):
        get_problem("gmm3d-vp")
    with pytest.raises(ValueError, match="unknown option.*'bogus'.*euler_maruyama"):
        run_sweep(_sweep(entries=[Entry("euler_maruyama", {"bogus": 1})]), str(tmp_path / "never"),
                  progress=False, report=False)
    # An unknown sampler beside known ones is skipped with a note (it runs once it is registered) ...
    notes = run_sweep(_sweep(entries=[Entry("no_such_sampler"), Entry("bench_oracle")]), str(tmp_path),
                      progress=False, report=False, log=lambda m: None)["notes"]
    assert "sampler 'no_such_sampler' skipped" in notes[0]
    # ... but a sweep left with no cell at all is an error, not an exit 0 with nothing done.
    with pytest.raises(ValueError, match="the sweep has no cell to run: sampler 'no_such_sampler' skipped"):
        run_sweep(_sweep(entries=[Entry("no_such_sampler")]), str(tmp_path / "none"), progress=False, report=False)
    with pytest.raises(ValueError, match="steps must be positive integers"):
        Sweep([Entry("euler_maruyama")], steps=(0,))
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        Sweep([Entry("euler_maruyama")], n=1)
    with pytest.raises(ValueError, match="unbalanced"):
        parse_entries("pc(snr=0.1")
    assert parse_entries("pc(corrector=langevin,snr=0.16),ode(method=euler)") == [
        Entry("pc", {"corrector": "langevin", "snr": 0.16}), Entry("ode", {"method": "euler"})]


def test_checkpoint_problem_compares_with_its_training_data(tmp_path):
    from scoresde.data import load_dataset
    from scoresde.nets import build_net
    from scoresde.train import TrainConfig, Trainer

    ds = load_dataset("gmm", n=400, seed=0)
    model = scoresde.ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), scoresde.VPSDE(), "eps")
    cfg = TrainConfig(steps=3, batch_size=64, ckpt_every=0, progress=False, verbose=False, device="cpu")
    Trainer(model, ds, cfg, out=str(tmp_path / "run"), net_name="mlp").fit()
    name = f"ckpt:{tmp_path / 'run'}"
    problem = get_problem(name)
    assert problem.metrics == ("sw2", "mmd", "energy", "mode_err", "logp_gap")  # the toy set's exact law is known
    ref, fl = problem.reference(150, 0), problem.floor_set(150, 0, 1)
    pool = {tuple(v) for v in ds.x.double().tolist()}
    rows_ref, rows_fl = {tuple(v) for v in ref.tolist()}, {tuple(v) for v in fl.tolist()}
    assert rows_ref <= pool and rows_fl <= pool and not rows_ref & rows_fl  # data points; floor disjoint from ref
    with pytest.raises(ValueError, match="needs 2n=402 data points"):
        problem.reference(201, 0)
    rec = run_sweep(_sweep(problems=[name], steps=[3], n=150), str(tmp_path / "out"), progress=False,
                    report=False)["records"][0]
    assert rec["status"] == "ok" and rec["problem"] == name and rec["sw2"] > 0


def test_a_second_sweep_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    # While one sweep holds the folder, another (here: the same process, as a second sweep would) gets
    # a clear error naming the holder, and no record is written twice.
    from scoresde._utils import FolderLock

    out = tmp_path / "shared"
    with FolderLock(out, ".scoresde-lock", what="bench output folder"):
        with pytest.raises(ValueError, match=r"bench output folder .* is in use by another scoresde process \(.*pid"):
            run_sweep(_sweep(entries=[Entry("bench_oracle")]), str(out), progress=False, report=False)
    assert not (out / "results.jsonl").exists()
    first = run_sweep(_sweep(entries=[Entry("bench_oracle")]), str(out), progress=False, report=False)
    again = run_sweep(_sweep(entries=[Entry("bench_oracle")]), str(out), progress=False, report=False)
    assert first["ran"] > 0 and again["ran"] == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["key"] for line in lines}) == first["ran"]


def test_tensor_peak_measures_the_live_tensor_memory_of_a_block():
    from scoresde.bench.measure import TensorPeak

    with TensorPeak() as tp:
        a = torch.zeros(1024, 256)  # 1 MiB float32
        b = torch.ones(2048, 256)  # 2 MiB: 3 MiB live at once
        del a, b
        c = torch.zeros(512, 256)  # 0.5 MiB: the peak stays 3 MiB
        del c
    assert abs(tp.mb - 3.0) < 1e-9, tp.mb
    with TensorPeak() as tp:
        for _ in range(10):
            x = torch.zeros(1024, 256)  # freed before the next: 1 MiB at most (+ the next before the old dies)
            del x
    assert abs(tp.mb - 1.0) < 1e-9, tp.mb


def test_cpu_cells_report_a_nonzero_tensor_peak(tmp_path):
    recs = run_sweep(_sweep(entries=[Entry("ddim")], **{**FAST, "warmup": True}), str(tmp_path), progress=False,
                     report=False)["records"]
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok and all(r["mem_method"] == "tensor_peak" and r["peak_mem_mb"] > 0 for r in ok)
