"""run_sweep on a user's own problem: any model with its SDE and reference data, from Python
(``Problem.from_model``) and from the CLI (``--problems py:MODULE:FUNCTION``)."""

from __future__ import annotations

import math
import os
import textwrap

import pytest
import torch
from _peers import IN_CI

import scoresde
from scoresde import VPSDE, GaussianMixture
from scoresde.bench import Entry, Problem, Sweep, get_problem, per_sample_seeds, read_jsonl, run_sweep
from scoresde.bench.problems import _FLOOR, _REF
from scoresde.cli import main
from scoresde.metrics import sliced_wasserstein

GM = GaussianMixture.ring(4, radius=2.0, std=0.3)
FAST = dict(floor_repeats=2, min_time=0.0, warmup=False, metrics=["sw2"])


def _pool(m=600, seed=5):
    return GM.sample(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_score_fn_with_a_tensor_of_reference_samples(tmp_path):
    sde, pool = VPSDE(), _pool()
    problem = Problem.from_model("ring-mine", GM.score_fn(sde), sde, pool)
    assert problem.shape == (2,) and problem.metrics == ("sw2", "mmd", "energy")
    s = run_sweep(Sweep([Entry("ddim")], steps=[5], problems=[problem], n=200, **FAST), str(tmp_path), progress=False,
                  report=False)
    rec = s["records"][0]
    assert rec["status"] == "ok" and rec["problem"] == "ring-mine"
    # Recomputed by hand from the documented rule: for seed s the pool is permuted once with seed
    # _REF + s; the first n points are the reference, n-subsets of the rest the floor sets.
    res = scoresde.sample(GM.score_fn(sde), sde, (200, 2), "ddim", 5, seeds=per_sample_seeds(0, 200))
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(_REF))
    ref, rest = pool[perm[:200]], perm[200:]
    floors = [sliced_wasserstein(pool[rest[torch.randperm(400, generator=torch.Generator().manual_seed(_FLOOR + r))[:200]]],
                                 ref) for r in range(2)]
    assert rec["nfe"] == res.nfe == 6
    assert rec["sw2"] == pytest.approx(sliced_wasserstein(res.x, ref), rel=1e-12)  # the same float64 computation
    assert rec["sw2_floor"] == pytest.approx(math.sqrt(sum(f * f for f in floors) / 2), rel=1e-12)
    with pytest.raises(ValueError, match=r"problem 'ring-mine': n=301 needs 2n=602 data points .* has 600"):
        problem.reference(301, 0)


def test_a_score_model_network_with_a_sampler_reference_and_peers(tmp_path):
    # A ScoreModel around an nn.Module (its SDE read from the model); the reference a sampler
    # (n, generator) -> samples; a scoresde and a peer sampler side by side on it.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    model = scoresde.ScoreModel(lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], 1)), VPSDE(), "eps")
    model.add_module("network", net)  # so that .to(device) and sample()'s device default see it
    draws = []

    def reference(n, generator):
        draws.append(n)
        return GM.sample(n, generator=generator)

    problem = Problem.from_model("random-net", model, reference=reference, metrics=["sw2", "kid"])
    assert problem.sde is model.sde and problem.info["reference"] == "sampler"
    entries = [Entry("heun"), Entry("kdiff:heun")]
    s = run_sweep(Sweep(entries, steps=[3], problems=[problem], n=100, floor_repeats=2, min_time=0.0, warmup=False),
                  str(tmp_path), progress=False, log=lambda m: None)
    recs = {r["label"]: r for r in s["records"]}
    assert recs["heun"]["status"] == "ok" and {"sw2", "kid", "kid_floor", "kid_ratio"} <= set(recs["heun"])
    assert recs["kdiff:heun"]["status"] == ("ok" if IN_CI else recs["kdiff:heun"]["status"])  # CI has the peers
    if recs["kdiff:heun"]["status"] == "ok":  # k-diffusion installed: the same samples as heun's
        assert recs["kdiff:heun"]["sw2"] == pytest.approx(recs["heun"]["sw2"], rel=1e-5)  # float32 round-off
    # The reference and floor sets come from the fixed seeds: the same sets when drawn again.
    assert torch.equal(problem.reference(50, 3), problem.reference(50, 3))
    assert not torch.equal(problem.floor_set(50, 3, 0), problem.floor_set(50, 3, 1))
    assert os.path.exists(tmp_path / "plots" / "random-net_kid.png")


def test_a_mixture_reference_gets_the_mixture_metrics():
    problem = Problem.from_model("gm", GM.score_fn(VPSDE()), VPSDE(), GM)
    assert problem.mixture is GM and problem.metrics == ("sw2", "mmd", "energy", "mode_err", "logp_gap")


def test_two_user_problems_of_one_name_never_share_reference_sets(tmp_path):
    # The judge (reference set, floors) is cached on the Problem object, not by name.
    sde = VPSDE()
    a = Problem.from_model("same", GM.score_fn(sde), sde, _pool(seed=1))
    b = Problem.from_model("same", GM.score_fn(sde), sde, _pool(seed=1) + 3.0)  # shifted reference data
    sa = run_sweep(Sweep([Entry("ddim")], steps=[4], problems=[a], n=100, **FAST), str(tmp_path / "a"), progress=False,
                   report=False)["records"][0]
    sb = run_sweep(Sweep([Entry("ddim")], steps=[4], problems=[b], n=100, **FAST), str(tmp_path / "b"), progress=False,
                   report=False)["records"][0]
    assert sb["sw2"] > 2.0 > 0.5 > sa["sw2"]  # measured 0.11 and 3.0
    with pytest.raises(ValueError, match="problems must have distinct names .* 'same' appears twice"):
        Sweep([Entry("ddim")], problems=[a, b])


def test_the_cli_runs_a_python_entry_point_problem(tmp_path, capsys, monkeypatch):
    code = textwrap.dedent("""
        import torch
        from scoresde import VPSDE, GaussianMixture
        from scoresde.bench import Problem

        def make():
            gm = GaussianMixture.ring(4, radius=2.0, std=0.3)
            pool = gm.sample(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            return Problem.from_model("ring-from-file", gm.score_fn(VPSDE()), VPSDE(), pool)

        def not_a_problem():
            return 3
    """)
    (tmp_path / "my_problems.py").write_text(code)
    common = ["bench", "--samplers", "ddim", "--steps", "3", "-n", "100", "--floor-repeats", "2", "--metrics", "sw2",
              "--min-time", "0", "--no-warmup", "--no-progress", "--device", "cpu"]
    spec = f"py:{tmp_path / 'my_problems.py'}:make"
    assert main(common + ["--problems", spec, "--out", str(tmp_path / "a")]) == 0
    assert f"### {spec}" in capsys.readouterr().out
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(common + ["--problems", "py:my_problems:make", "--out", str(tmp_path / "b")]) == 0
    rec = read_jsonl(str(tmp_path / "b" / "results.jsonl"))[0][0]
    assert rec["problem"] == "py:my_problems:make" and rec["status"] == "ok"
    # The same problem through a file path or a module: the same numbers.
    assert rec["sw2"] == read_jsonl(str(tmp_path / "a" / "results.jsonl"))[0][0]["sw2"]
    with pytest.raises(TypeError, match=r"my_problems:not_a_problem\(\) must return a scoresde.bench.Problem .* got int"):
        get_problem("py:my_problems:not_a_problem")
    with pytest.raises(ValueError, match="has no function 'nope'"):
        get_problem("py:my_problems:nope")
    with pytest.raises(ValueError, match="must be py:MODULE:FUNCTION or py:PATH.py:FUNCTION"):
        get_problem("py:my_problems")
    with pytest.raises(FileNotFoundError, match="file 'missing.py' does not exist"):
        get_problem("py:missing.py:make")


def test_user_problem_errors_name_the_argument():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"name must be a non-empty string without '\|'"):
        Problem.from_model("a|b", GM.score_fn(sde), sde, _pool())
    with pytest.raises(TypeError, match="sde must be a scoresde LinearSDE"):
        Problem.from_model("x", GM.score_fn(sde), None, _pool())
    with pytest.raises(TypeError, match="reference must be a tensor of samples .* got str"):
        Problem.from_model("x", GM.score_fn(sde), sde, "ref.npy")
    with pytest.raises(ValueError, match="reference must be a float tensor of samples"):
        Problem.from_model("x", GM.score_fn(sde), sde, torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown metric 'nope'; accepted: sw2"):
        Problem.from_model("x", GM.score_fn(sde), sde, _pool(), metrics=["nope"])
    with pytest.raises(ValueError, match=r"the reference sampler must return a tensor of n=2 samples"):
        Problem.from_model("x", GM.score_fn(sde), sde, lambda n, generator: torch.zeros(3, 2))
