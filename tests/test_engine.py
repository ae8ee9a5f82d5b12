"""Engines (scoresde/engine): every engine agrees with the eager sampler and the reference table runner.

Oracles: the eager sampler functions and ``run_stages`` (themselves equal to round-off,
tests/test_tables_stages.py), the same per-sample noise stream (PerSampleNoise, and the reference
Philox definition for the in-kernel draws), counted network calls, and hand-made NaN outputs.
The fused Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1, CPU); the compiled
engine is exercised once (one small inductor graph, tens of seconds on CI cores); CUDA graphs need
a GPU and are tested here only for their errors and for the static-buffer reuse they rely on.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, GaussianMixture, NonFiniteError, ScoreModel
from scoresde.engine import ENGINES, available, run
from scoresde.engine.core import Run, TorchExecutor
from scoresde.engine.graph import _GraphTorchExecutor
from scoresde.engine.plan import Call, lower
from scoresde.model import PARAMETERIZATIONS
from scoresde.nets import MLP
from scoresde.random import PerSampleNoise, TensorNoise
from scoresde.samplers import get
from scoresde.schedules import make_grid

F64, F32 = torch.float64, torch.float32
MIX = GaussianMixture([0.7, 0.3], [[1.0, 0.0], [-1.5, 1.0]], [0.2, 0.05])
SDES = [VPSDE(), VESDE(), EDMSDE()]
SDE_IDS = [type(s).__name__ for s in SDES]
CASES = [
    ("ddim", {}), ("ddim", {"eta": 0.7}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_3m", {"first_step": "midpoint"}),
    ("dpmpp_2m_sde", {}), ("euler_ancestral", {}), ("unipc", {}), ("unipc", {"order": 3}), ("heun", {}),
    ("edm_sde", {"S_churn": 40.0, "S_noise": 1.003}), ("euler_maruyama", {}), ("reverse_diffusion", {}),
    ("ancestral", {}), ("pc", {"corrector": "ald", "n_corrector_steps": 2}), ("ald", {"n_steps_each": 2, "eps": 1e-9}),
]
IDS = [f"{n}{''.join(f'-{k}={v}' for k, v in o.items())}" for n, o in CASES]
# float64: the engines compute the same weights as the table in another association (x0 folded into
# one launch, Python-float vs tensor coefficients): measured <= 5e-15 relative; 1e-12 leaves margin.
TOL64 = 1e-12
# float32: 9 steps of float32 updates, each with a different rounding than the eager loop's (up to
# 1/alpha(T) ~ 150 amplification of a conversion on VP and sigma ~ 80 on EDM): measured <= 5e-6
# relative to the largest sample; 1e-4 leaves margin and is far below any sampler difference.
TOL32 = 1e-4


def _close(a, b, tol):
    return torch.allclose(a, b, rtol=0, atol=tol * float(b.abs().max()))


def _setup(sde, name, opts, steps=9, batch=6, dtype=F64):
    spec = get(name)
    ts = make_grid(sde, steps, spec.default_schedule)
    x_T = (torch.randn(batch, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) * sde.prior_std()).to(dtype)
    return spec, ts, x_T, spec.coefficients(sde, ts, **opts)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_torch_engine_matches_eager_sampler(sde, name, opts):
    model = ScoreModel(MIX.score_fn(sde), sde)
    for dtype, tol in ((F64, TOL64), (F32, TOL32)):
        spec, ts, x_T, table = _setup(sde, name, opts, dtype=dtype)
        traj_e, traj_g = [], []
        noise_e, noise_g = PerSampleNoise(torch.arange(6)), PerSampleNoise(torch.arange(6))
        model.reset_nfe()
        eager = spec.fn(model, sde, x_T, ts, noise=noise_e, callback=lambda i, x, t=traj_e: (t.append((i, x.clone())), x)[1],
                        **opts)
        nfe_eager = model.nfe
        model.reset_nfe()
        got = run("torch", model, sde, x_T, ts, table, noise_g, lambda i, x, t=traj_g: t.append((i, x.clone())))
        assert model.nfe == nfe_eager == table.nfe
        assert noise_g.draws == noise_e.draws  # the stream continues where the eager loop's does
        assert [i for i, _ in traj_g] == [i for i, _ in traj_e] == list(range(len(ts) - 1))
        # The tolerance is relative to the largest state along the path (intermediate states on
        # VE/EDM are ~sigma_max, the end states ~1).
        scale = max(float(v.abs().max()) for _, v in traj_e)
        for (_, a), (_, b) in zip(traj_g, traj_e, strict=True):
            assert torch.allclose(a, b, rtol=0, atol=tol * scale), (name, opts, dtype)
        assert _close(got, eager, tol * scale / float(eager.abs().max()))
        assert got.dtype == dtype


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_every_parameterization_through_the_engine(parameterization):
    # The engine calls the raw network and converts with ScoreModel.linear_io (input scaling for
    # denoiser/edm, x0 from eps/score/v/F): a random MLP in float64 against the eager sampler.
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1).double()
    for sde in (VPSDE(), EDMSDE()):
        model = ScoreModel(net, sde, parameterization, noise_input="log_sigma" if parameterization == "eps" else "t")
        for name in ("dpmpp_2m", "heun", "euler_ancestral"):
            spec, ts, x_T, table = _setup(sde, name, {})
            with torch.no_grad():
                eager = spec.fn(model, sde, x_T, ts, noise=PerSampleNoise(torch.arange(6)), callback=lambda i, x: x)
                got = run("torch", model, sde, x_T, ts, table, PerSampleNoise(torch.arange(6)))
            assert _close(got, eager, TOL64), (parameterization, type(sde).__name__, name)


def test_plan_has_one_launch_per_call_for_one_call_steps():
    sde = VPSDE()
    model = ScoreModel(MIX.score_fn(sde), sde)
    for name in ("ddim", "dpmpp_3m", "euler_ancestral", "unipc"):
        _, ts, _, table = _setup(sde, name, {}, steps=20)
        plan = lower(table, model)
        calls = [op for op in plan.ops if isinstance(op, Call)]
        # UniPC's last step makes no call: its update is a launch of its own (after step N-2's callback).
        assert len(calls) == table.nfe and len(plan.launches) == len(calls) + (name == "unipc"), name
        assert all(op.src == 0 for op in calls) == (name != "unipc")  # UniPC calls at its predicted point


def _nan_net(bad_call: int):
    calls = []

    def net(x, c):
        calls.append(1)
        out = -x
        if len(calls) == bad_call:
            out = out.clone()
            out[0, 0] = float("nan")
        return out

    return net


@pytest.mark.parametrize("deferred", [False, True])
def test_non_finite_output_names_the_call_and_t(deferred):
    sde = VPSDE()
    _, ts, x_T, table = _setup(sde, "dpmpp_2m", {}, steps=6)
    model = ScoreModel(_nan_net(4), sde, "eps")
    plan = lower(table, model)
    r = Run(TorchExecutor(), model, plan, x_T, None, deferred=deferred)
    with pytest.raises(NonFiniteError, match=rf"network evaluation #4 \(t in \[{float(ts[3]):.6g}, {float(ts[3]):.6g}\]\)"):
        r.finish(r.loop(x_T, None, {}), 0)
    assert model.nfe == (6 if deferred else 4)  # deferred: the loop runs to the end, then raises
    model = ScoreModel(_nan_net(2), sde, "eps")
    with pytest.raises(NonFiniteError, match="network evaluation #2"):
        run("torch", model, sde, x_T, ts, table)


def test_graph_executor_noise_and_buffer_reuse_on_cpu():
    # What a captured graph relies on: one Run reused for new inputs (the registers, the ring and
    # the static seed keys and draw index reloaded) gives what fresh runs give; the static-key
    # Philox draws equal PerSampleNoise's.
    sde = VPSDE()
    model = ScoreModel(MIX.score_fn(sde), sde)
    _, ts, x_T, table = _setup(sde, "dpmpp_2m_sde", {}, steps=7)
    plan = lower(table, model)
    r = Run(_GraphTorchExecutor(), model, plan, x_T, PerSampleNoise(torch.arange(6)))
    for seeds, start, x0 in ((torch.arange(6), 0, x_T), (torch.arange(10, 16), 5, 2 * x_T)):
        noise = PerSampleNoise(seeds, start=start)
        r.executor.load_noise(noise)
        r.loop(x0, None, {})
        fresh = run("torch", model, sde, x0, ts, table, PerSampleNoise(seeds, start=start))
        assert torch.equal(r.R[0], fresh)  # same ops, same draws bit for bit


def test_engine_errors_name_the_alternatives():
    sde = VPSDE()
    model = ScoreModel(MIX.score_fn(sde), sde)
    _, ts, x_T, table = _setup(sde, "ddim", {})
    with pytest.raises(ValueError, match="engine='nope' is not one of the accepted values: 'torch', 'compiled', 'fused'"):
        run("nope", model, sde, x_T, ts, table)
    with pytest.raises(ValueError, match="engine='graph' cannot run here: CUDA graphs need a CUDA device; got cpu; "
                                         "use engine='fused' \\(CUDA\\), 'compiled' or 'torch'"):
        run("graph", model, sde, x_T, ts, table)
    with pytest.raises(ValueError, match="another grid"):
        run("torch", model, sde, x_T, make_grid(sde, 9, "karras"), table)
    _, ts2, _, sto = _setup(sde, "euler_ancestral", {})
    with pytest.raises(TypeError, match="draws noise: pass a noise source"):
        run("torch", model, sde, x_T, ts2, sto)
    assert available("cpu")[:2] == ["torch", "compiled"] and set(available("cpu")) <= set(ENGINES)


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@needs_triton
def test_fused_philox_kernel_equals_the_reference_stream(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from scoresde.engine.fused import philox_normal_triton, philox_words_triton
    from scoresde.random import _philox_words, _round_keys, philox_normal_reference

    seeds = torch.randint(0, 2**62, (37,), generator=torch.Generator().manual_seed(0))
    seeds[:2] = torch.tensor([0, 2**63 - 1])
    for draw in (0, 7, 2**32 + 3):
        words = philox_words_triton(seeds, draw, 9)
        ref = _philox_words(_round_keys(seeds), torch.tensor([draw])[:, None, None], 3)[:, 0]  # (4, B, blocks)
        assert torch.equal(words, ref.permute(1, 2, 0)[:, torch.arange(9) // 4, :])  # integer path: bit for bit
        z = philox_normal_triton(seeds, draw, torch.zeros(37, 9, dtype=F64))
        zr = philox_normal_reference(seeds, torch.full((37,), draw), 9, F64)
        # float64 log/cos/sin from numpy (interpreter) vs torch: measured <= 2.3e-16 relative (1 ulp); 4 ulps.
        assert torch.allclose(z, zr, rtol=4 * torch.finfo(F64).eps, atol=0)
        assert torch.equal(philox_normal_triton(seeds, draw, torch.zeros(37, 9)), zr.float())


@needs_triton
@pytest.mark.parametrize("name,opts", [c for c in CASES if c[0] in ("ddim", "dpmpp_3m", "heun", "unipc", "edm_sde",
                                                                     "euler_ancestral", "pc")],
                         ids=[i for i, c in zip(IDS, CASES, strict=True) if c[0] in ("ddim", "dpmpp_3m", "heun", "unipc",
                                                                                     "edm_sde", "euler_ancestral", "pc")])
def test_fused_kernels_match_the_torch_engine(monkeypatch, name, opts):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from scoresde.engine.fused import FusedExecutor

    sde = VESDE() if name == "pc" else VPSDE()
    model = ScoreModel(MIX.score_fn(sde), sde)
    for dtype, tol in ((F64, TOL64), (F32, TOL32)):
        _, ts, x_T, table = _setup(sde, name, opts, dtype=dtype)
        noise_t, noise_f = PerSampleNoise(torch.arange(6)), PerSampleNoise(torch.arange(6))
        ref = run("torch", model, sde, x_T, ts, table, noise_t)
        steps = []
        got = run("fused", model, sde, x_T, ts, table, noise_f, lambda i, x, s=steps: s.append(i))
        assert _close(got, ref, tol) and steps == list(range(len(ts) - 1))
        assert noise_f.draws == noise_t.draws
    # A noise source other than PerSampleNoise: the driver draws, the kernel loads z.
    if table.stochastic:
        draws = [torch.randn(6, 2, dtype=F32, generator=torch.Generator().manual_seed(k)) for k in range(table.draws)]
        ref = run("torch", model, sde, x_T, ts, table, TensorNoise(draws))
        assert _close(run("fused", model, sde, x_T, ts, table, TensorNoise(draws)), ref, TOL32)
    # The kernel's own NaN/Inf count (deferred: one check at the end).
    bad = ScoreModel(_nan_net(3), sde, "eps")
    r = Run(FusedExecutor(), bad, lower(table, bad), x_T, PerSampleNoise(torch.arange(6)), deferred=True)
    with pytest.raises(NonFiniteError, match="network evaluation #3"):
        r.finish(r.loop(x_T, None, {}), 0)


def test_compiled_engine_matches_the_torch_engine():
    # ddim and euler_ancestral share one launch pattern (push from x, update x): one inductor graph.
    sde = VPSDE()
    model = ScoreModel(MIX.score_fn(sde), sde)
    for name in ("ddim", "euler_ancestral"):
        _, ts, x_T, table = _setup(sde, name, {}, dtype=F32)
        ref = run("torch", model, sde, x_T, ts, table, PerSampleNoise(torch.arange(6)))
        got = run("compiled", model, sde, x_T, ts, table, PerSampleNoise(torch.arange(6)))
        # inductor may fuse multiply-adds differently from eager float32: same tolerance as eager vs engine.
        assert _close(got, ref, TOL32), name


def test_sample_with_the_compiled_engine_draws_through_the_compiled_noise_kernel(monkeypatch):
    """sample(engine="compiled"): the default per-sample noise goes through the compiled Philox kernel
    (the same values, so the same samples as engine="torch" to float tolerance)."""
    import scoresde
    import scoresde.random as rnd

    kernels = []
    real = rnd._normals
    monkeypatch.setattr(rnd, "_normals", lambda *a, **k: kernels.append(a[4] if len(a) > 4 else k.get("kernel")) or real(*a, **k))
    sde = VPSDE()
    mix = GaussianMixture([0.5, 0.5], [[1.0] * 6, [-1.0] * 6], [0.3, 0.3])  # 6-D: 2 Philox blocks per sample
    kw = dict(sampler="euler_ancestral", steps=6, shape=(5, 6), seeds=range(5), dtype=torch.float32)
    ref = scoresde.sample(mix.score_fn(sde), sde, engine="torch", **kw).x
    got = scoresde.sample(mix.score_fn(sde), sde, engine="compiled", **kw).x
    assert "compiled" in kernels and "torch" in kernels
    assert _close(got, ref, TOL32)


def test_tables_and_plans_are_cached_by_contents_and_never_shared_across_sdes_or_call_maps():
    from scoresde.engine.plan import lower, lower_cached

    spec = get("dpmpp_2m_sde")
    sde, other = VPSDE(), VPSDE(beta_max=15.0)
    ts = make_grid(sde, 7, spec.default_schedule)
    t1 = spec.table(sde, ts)
    assert spec.table(sde, ts.clone()) is t1  # same grid contents: built once
    assert spec.table(sde, ts, solver_type="taylor") is not t1
    assert spec.table(other, ts) is not t1 and not torch.equal(spec.table(other, ts).a, t1.a)
    assert spec.table(sde, make_grid(sde, 8, spec.default_schedule)) is not t1
    eps, x0 = ScoreModel(MIX.score_fn(sde), sde, "eps"), ScoreModel(MIX.score_fn(sde), sde, "x0")
    p = lower_cached(t1, eps)
    assert lower_cached(t1, ScoreModel(MIX.score_fn(sde), sde, "eps")) is p  # the same call maps
    q = lower_cached(t1, x0)
    assert q is not p and q.fingerprint() == lower(t1, x0).fingerprint() and p.fingerprint() == lower(t1, eps).fingerprint()
