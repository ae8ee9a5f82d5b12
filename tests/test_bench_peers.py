"""``scoresde bench --peers``: k-diffusion's and diffusers' samplers in a sweep, on the same model,
seeds and NFE counting as scoresde's, and a missing peer as a row that says so.

The plumbing is checked against scoresde's own samplers, which the cross-check tests
(test_crosscheck_*.py) show equal to the peers' on the same grid and x_T: here a peer row run
through the bench must give scoresde's samples from the sweep's x_T on the grid the peer row
records, so a wrong x_T mapping, table, seed stream or output scale fails.
"""

from __future__ import annotations

import os

import pytest
import torch
from _peers import k_diffusion_sampling, require

import scoresde
from scoresde.bench import Entry, Sweep, get_problem, markdown_table, per_sample_seeds, read_jsonl, run_sweep
from scoresde.bench import peers as bench_peers
from scoresde.bench.peers import run_peer
from scoresde.cli import main

F64 = torch.float64
FAST = dict(floor_repeats=2, min_time=0.0, warmup=False, metrics=["sw2"])
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def K():
    return k_diffusion_sampling()


@pytest.fixture(scope="module")
def diffusers():
    return require("diffusers")


def _problem(name="gmm2d-vp"):
    p = get_problem(name)
    return p, p.make_model("cpu")


@pytest.mark.parametrize("problem", ["gmm2d-vp", "gmm2d-ve"])
@pytest.mark.parametrize("peer,ours,opts", [
    ("kdiff:heun", "heun", {}),
    ("kdiff:dpmpp_2m", "dpmpp_2m", {"lower_order_final": False}),
    ("kdiff:euler_ancestral", "euler_ancestral", {}),  # stochastic: the same per-sample noise streams
])
def test_k_diffusion_rows_are_scoresde_samples_on_the_recorded_grid(K, problem, peer, ours, opts):
    p, model = _problem(problem)
    seeds = per_sample_seeds(0, 64)
    r = run_peer(peer, model, p.sde, (64, 2), 6, seeds=seeds, device="cpu", dtype=F64)
    assert len(r.ts) == 7  # 6 intervals of positive levels (k-diffusion's 7 sigmas), then the jump to 0
    ref = scoresde.sample(model, p.sde, (64, 2), ours, schedule=r.ts, denoise=True, seeds=seeds, dtype=F64, **opts)
    # float64 throughout, the same operations in another order (measured <= 4.4e-14 at data scale ~6):
    # a wrong x_T, alpha scaling or noise stream shows at 1e-2 or more.
    assert float((r.x - ref.x).abs().max()) < 1e-10 * max(1.0, float(ref.x.abs().max()))
    assert r.nfe == ref.nfe  # counted by the model wrapper on both sides


@pytest.mark.parametrize("problem", ["gmm2d-vp", "gmm2d-ve"])
@pytest.mark.parametrize("peer,peer_opts,ours,opts", [
    ("diffusers:DPMSolverMultistep", {}, "dpmpp_2m", {"lower_order_final": False}),
    ("diffusers:UniPCMultistep", {}, "unipc", {"lower_order_final": False}),
    ("diffusers:DDIM", {"timestep_spacing": "trailing"}, "ddim", {}),
    ("diffusers:EulerDiscrete", {"timestep_spacing": "trailing"}, "ddim", {}),  # Euler in sigma~ is DDIM; x~ state
])
def test_diffusers_rows_are_scoresde_samples_on_the_recorded_grid(diffusers, problem, peer, peer_opts, ours, opts):
    p, model = _problem(problem)
    seeds = per_sample_seeds(1, 64)
    r = run_peer(peer, model, p.sde, (64, 2), 8, seeds=seeds, device="cpu", dtype=F64, options=peer_opts)
    assert len(r.ts) == 8  # the scheduler's 8 timesteps; its last step jumps to sigma = 0 (scoresde's denoise)
    # The same x_T: the peer starts at timestep N-1, whose time on the problem's SDE is T to float32 round-off
    # of diffusers' table, so scoresde starts from the sweep's x_T at r.ts[0].
    x_T = scoresde.random.PerSampleNoise(seeds)(torch.empty(64, 2, dtype=F64)) * p.sde.prior_std()
    ref = scoresde.sample(model, p.sde, (64, 2), ours, schedule=r.ts, x_T=x_T, dtype=F64, **opts)
    # diffusers' float32 table (trained_betas and their cumprod) and step arithmetic: measured 7e-7 .. 8.6e-6
    # at data scale ~5 (relative <= 1.8e-6); a wrong table, start scale or output scale shows at 1e-2 or more.
    assert float((r.x - ref.x).abs().max()) < 2e-5 * max(1.0, float(ref.x.abs().max()))
    assert r.nfe == ref.nfe == 8  # diffusers' 8 steps, the last the jump to 0: scoresde's 7 intervals + denoise


@pytest.mark.parametrize("peer", ["kdiff:euler_ancestral", "diffusers:EulerAncestralDiscrete"])
def test_stochastic_peer_rows_are_per_sample(K, diffusers, peer):
    # Sample i depends on its seed only, not on the batch (the sweep's --batch): the first 3 of a
    # batch of 6 equal a batch of those 3 (bitwise: the same per-sample streams and operations).
    p, model = _problem()
    seeds = per_sample_seeds(0, 6)
    six = run_peer(peer, model, p.sde, (6, 2), 5, seeds=seeds, device="cpu", dtype=torch.float32)
    three = run_peer(peer, model, p.sde, (3, 2), 5, seeds=seeds[:3], device="cpu", dtype=torch.float32)
    other = run_peer(peer, model, p.sde, (3, 2), 5, seeds=seeds[3:], device="cpu", dtype=torch.float32)
    assert torch.allclose(six.x[:3], three.x, rtol=0, atol=1e-6)  # float32 ops on other batch shapes
    assert float((six.x[:3] - other.x).abs().max()) > 0.1  # other seeds, other samples


def test_peers_quick_cli_prints_one_table_with_scoresde_and_peer_rows(K, diffusers, tmp_path, capsys):
    out = str(tmp_path)
    argv = ["bench", "--quick", "--peers", "--samplers", "heun,ddim", "--steps", "4", "-n", "200", "--floor-repeats", "2",
            "--metrics", "sw2", "--min-time", "0", "--no-warmup", "--no-progress", "--device", "cpu", "--out", out]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "10 new cell(s) run, 0 already done, of 10" in printed  # 2 scoresde + the 8 quick peers
    table = printed[printed.index("### gmm2d-vp"):]
    assert table.count("### ") == 1  # one table
    for label in ("heun", "ddim", *bench_peers.QUICK_PEERS):
        assert f"| {label} | 4 |" in table, label
    recs = {r["label"]: r for r in read_jsonl(os.path.join(out, "results.jsonl"))[0]}
    assert all(r["status"] == "ok" for r in recs.values())
    # kdiff:heun is scoresde's heun on the same grid and x_T: the same samples, float32 round-off apart.
    assert recs["kdiff:heun"]["sw2"] == pytest.approx(recs["heun"]["sw2"], rel=1e-5)
    assert recs["kdiff:heun"]["nfe"] == recs["heun"]["nfe"] == 9


def test_a_missing_peer_is_a_row_that_says_so_and_runs_once_installed(K, tmp_path, monkeypatch):
    def missing():
        raise ImportError("No module named 'k_diffusion'")

    sweep = Sweep([Entry("heun"), Entry("kdiff:heun")], steps=[3, 4], problems=["gmm2d-vp"], n=100, **FAST)
    with monkeypatch.context() as m:
        m.setitem(bench_peers.LOADERS, "kdiff", missing)
        s = run_sweep(sweep, str(tmp_path), progress=False, log=lambda msg: None)
        assert any("k-diffusion not installed" in note for note in s["notes"])
        assert s["ran"] == 2  # heun's two cells; kdiff:heun's are recorded as unavailable
        status = {(r["label"], r["steps"]): r["status"] for r in s["records"]}
        assert status == {("heun", 3): "ok", ("heun", 4): "ok", ("kdiff:heun", 3): "unavailable",
                          ("kdiff:heun", 4): "unavailable"}
        table = open(os.path.join(tmp_path, "table.md")).read()
        assert table.count("| kdiff:heun (not installed) | - |") == 1  # one row, whatever the budgets
        assert "kdiff:heun: k-diffusion not installed (No module named 'k_diffusion')" in table
        # Only a missing peer: still no crash, the row says so.
        only = run_sweep(Sweep([Entry("kdiff:heun")], steps=[3], n=100, **FAST), str(tmp_path / "only"),
                         progress=False, log=lambda msg: None)
        assert only["ran"] == 0 and only["records"][0]["status"] == "unavailable"
    s = run_sweep(sweep, str(tmp_path), progress=False, report=False)  # installed again: those cells run
    assert s["ran"] == 2
    assert {r["status"] for r in s["records"]} == {"ok"} and len(s["records"]) == 4
    assert "(not installed)" not in markdown_table(s["records"])


def test_peer_errors_name_the_sampler_and_the_option(K, diffusers, tmp_path, capsys):
    def sweep(*entries, problems=("gmm2d-vp",)):
        return run_sweep(Sweep(list(entries), steps=[3], problems=list(problems), n=100, **FAST), str(tmp_path),
                         progress=False, report=False, log=lambda msg: None)

    with pytest.raises(ValueError, match=r"'kdiff:nope' is not one of the accepted values: .*kdiff:heun"):
        sweep(Entry("kdiff:nope"))
    with pytest.raises(ValueError, match=r"'kdiff:dpm_adaptive' is not one of the accepted values \(it has no sigma list"):
        sweep(Entry("kdiff:dpm_adaptive"))
    with pytest.raises(ValueError, match=r"unknown option 'bogus' for peer sampler 'kdiff:heun'; accepted: schedule, rho"):
        sweep(Entry("kdiff:heun", {"bogus": 1}))
    with pytest.raises(ValueError, match=r"s_churn=1.0 for 'kdiff:heun': k-diffusion draws churn noise from torch's global"):
        sweep(Entry("kdiff:heun", {"s_churn": 1.0}))
    with pytest.raises(ValueError, match=r"'diffusers:Nope' is not one of the accepted values .*diffusers:DDIM"):
        sweep(Entry("diffusers:Nope"))
    with pytest.raises(ValueError, match=r"option 'beta_start' for 'diffusers:DDIM': the benchmark builds the scheduler's table"):
        sweep(Entry("diffusers:DDIM", {"beta_start": 0.1}))
    with pytest.raises(ValueError, match=r"unknown option 'bogus' for peer sampler 'diffusers:DDIM'; accepted: table, "):
        sweep(Entry("diffusers:DDIM", {"bogus": 1}))
    # A table diffusers' float32 alphas_cumprod cannot hold (sub-VP reaches sigma~ = 1e-4): skipped with a note.
    s = sweep(Entry("diffusers:DDIM"), Entry("kdiff:heun"), problems=("gmm2d-subvp",))
    assert any("diffusers:DDIM on gmm2d-subvp skipped: SubVPSDE spans sigma~ = 0.00011" in n for n in s["notes"])
    assert [r["label"] for r in s["records"]] == ["kdiff:heun"]
    capsys.readouterr()
    assert main(["bench", "--peers", "heun", "--out", str(tmp_path / "x")]) == 2
    assert "--peers: 'heun' is not a peer sampler; accepted: kdiff:NAME" in capsys.readouterr().err
