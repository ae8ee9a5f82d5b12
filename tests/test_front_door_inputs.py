"""Bad input at the front door: each gets a ValueError/TypeError naming the argument, before any network
call, and nothing is silently coerced (issue 14's examples)."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde
from scoresde import VPSDE, GaussianMixture

F64 = torch.float64
SDE = VPSDE()
GM = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.25)


class Counting:
    def __init__(self):
        self.calls, self.fn = 0, GM.score_fn(SDE)

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize("kwargs,error,needle", [
    (dict(shape="42"), ValueError, "shape must be (B, *D)"),
    (dict(shape=(4.7, 2)), ValueError, "shape must be (B, *D)"),
    (dict(shape=(True, 2)), ValueError, "shape must be (B, *D)"),
    (dict(shape=(4,)), ValueError, "shape must be (B, *D)"),
    (dict(steps=True), ValueError, "steps=True is not accepted"),
    (dict(steps=2.5), ValueError, "steps=2.5 is not accepted"),
    (dict(steps=0), ValueError, "steps=0 is not accepted"),
    (dict(seeds=[1.7, 2, 3, 4]), ValueError, "seeds must be non-negative integers; got 1.7"),
    (dict(seeds=[True, 2, 3, 4]), ValueError, "seeds must be non-negative integers; got True"),
    (dict(seeds=torch.tensor([1.0, 2, 3, 4])), ValueError, "seeds must be integers"),
    (dict(seeds=[1, 2, 3]), ValueError, "seeds must be a 1-D sequence of 4 integers"),
    (dict(schedule=[[1.0, 0.5], [0.2, 0.1]]), ValueError, "an explicit schedule must be a 1-D sequence"),
    (dict(x_T=torch.full((4, 2), math.nan)), ValueError, "x_T contains NaN or Inf"),
    (dict(x_T=torch.ones(4, 2, dtype=torch.int64)), ValueError, "x_T must be a real floating-point tensor"),
    (dict(x_T=torch.ones(4, 3)), ValueError, "x_T must have shape (4, 2)"),
    (dict(noise=lambda like: torch.full_like(like, math.inf)), ValueError, "returned NaN or Inf"),
    (dict(noise=lambda like: torch.zeros(3)), ValueError, "must return a tensor of shape (4, 2)"),
    (dict(denoise=1), ValueError, "denoise=1 is not accepted; accepted: True, False"),
    (dict(generator=0), TypeError, "generator must be a torch.Generator"),
    (dict(dtype="float32"), TypeError, "dtype must be a torch.dtype"),
    (dict(dtype=torch.int32), ValueError, "dtype must be a floating-point dtype"),
    (dict(cond=[1]), TypeError, "cond must be a dict"),
    (dict(sampler="ddim", eta=float("nan")), ValueError, "eta=nan is not accepted"),
    (dict(sampler="pc", n_corrector_steps=1.0), ValueError, "n_corrector_steps=1.0 is not accepted"),
])
def test_bad_input_is_refused_by_name_before_any_network_call(kwargs, error, needle):
    model = Counting()
    args = dict(shape=(4, 2), sampler="euler_maruyama", steps=3)
    args.update(kwargs)
    with pytest.raises(error) as info:
        scoresde.sample(model, SDE, args.pop("shape"), args.pop("sampler"), args.pop("steps"), **args)
    assert needle in str(info.value)
    assert model.calls == 0


def test_bad_noise_is_not_blamed_on_the_model():
    # NaN noise drawn after x_T (at the first step): named as the noise source, not as the model.
    draws = iter([torch.zeros(4, 2), torch.full((4, 2), math.nan)])
    with pytest.raises(ValueError, match="noise source .* at draw 1 returned NaN or Inf"):
        scoresde.sample(GM.score_fn(SDE), SDE, (4, 2), "euler_maruyama", 3, noise=lambda like: next(draws))


def test_non_finite_samples_say_whether_the_model_was_checked():
    # With check_finite=False nothing claims the model outputs were finite.
    def exploding(x, c):
        return torch.full_like(x, math.inf)

    model = scoresde.ScoreModel(exploding, SDE, "eps", check_finite=False)
    with pytest.raises(scoresde.NonFiniteError, match="not checked: check_finite=False"):
        scoresde.sample(model, SDE, (4, 2), "euler_maruyama", 3, seeds=range(4))


def test_denoise_rules_are_the_final_steps_of_scoresde_samplers_final():
    from scoresde.samplers.final import final_step

    x_T = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    base = scoresde.sample(GM.score_fn(SDE), SDE, (6, 2), "ddim", 8, x_T=x_T, denoise=False, dtype=F64)
    model = scoresde.ScoreModel(GM.score_fn(SDE), SDE)
    for rule in ("tweedie", "ode"):
        res = scoresde.sample(GM.score_fn(SDE), SDE, (6, 2), "ddim", 8, x_T=x_T, denoise=rule, dtype=F64)
        assert res.nfe == 9
        torch.testing.assert_close(res.x, final_step(model, base.x, base.ts[-1], rule), rtol=0, atol=0)
    same = scoresde.sample(GM.score_fn(SDE), SDE, (6, 2), "ddim", 8, x_T=x_T, denoise=True, dtype=F64)
    assert torch.equal(same.x, scoresde.sample(GM.score_fn(SDE), SDE, (6, 2), "ddim", 8, x_T=x_T, denoise="tweedie",
                                               dtype=F64).x)
    with pytest.raises(ValueError, match="denoise='mean' is not accepted"):
        scoresde.sample(GM.score_fn(SDE), SDE, (6, 2), "ddim", 8, denoise="mean")


@pytest.mark.parametrize("name", ["euler_maruyama", "dpmpp_2m", "pc", "adaptive_sde", "ald"])
def test_max_batch_equals_one_big_batch(name):
    # Per-sample seeds: sample i depends only on its seed, so chunks of 3 give the same samples as one
    # batch of 8, bit for bit; NFE counts every chunk's calls; per-sample extras are joined.
    kw = dict(generator=torch.Generator().manual_seed(3), dtype=F64, return_trajectory=name != "adaptive_sde")
    steps = 4
    one = scoresde.sample(GM.score_fn(SDE), SDE, (8, 2), name, steps, **kw)
    kw["generator"] = torch.Generator().manual_seed(3)
    parts = scoresde.sample(GM.score_fn(SDE), SDE, (8, 2), name, steps, max_batch=3, **kw)
    assert torch.equal(one.x, parts.x) and torch.equal(one.seeds, parts.seeds)
    if name != "adaptive_sde":  # adaptive: one trajectory entry per attempt, which differs by chunk (refused)
        assert torch.equal(one.trajectory, parts.trajectory)
        assert parts.nfe == 3 * one.nfe  # three chunks, each as many batch calls as the single batch
    else:
        assert torch.equal(one.extra["accepted"], parts.extra["accepted"])


def test_max_batch_splits_cond_and_x_T_and_refuses_what_it_cannot_split():
    x_T = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    seen = []

    def labelled(x, t, y):
        seen.append(y.clone())
        return GM.score_fn(SDE)(x, t)

    model = scoresde.ScoreModel(lambda x, c, y: labelled(x, c, y), SDE)
    y = torch.arange(5)
    a = scoresde.sample(model, SDE, (5, 2), "ddim", 3, x_T=x_T, cond={"y": y}, dtype=F64)
    seen.clear()
    b = scoresde.sample(model, SDE, (5, 2), "ddim", 3, x_T=x_T, cond={"y": y}, dtype=F64, max_batch=2)
    assert torch.equal(a.x, b.x) and [s.tolist() for s in seen[:1]] == [[0, 1]]
    with pytest.raises(ValueError, match="max_batch=2 splits the request by per-sample seeds"):
        scoresde.sample(GM.score_fn(SDE), SDE, (5, 2), "ddim", 3, noise=torch.Generator(), max_batch=2)
    with pytest.raises(ValueError, match="return_trajectory with max_batch needs a fixed-grid sampler"):
        scoresde.sample(GM.score_fn(SDE), SDE, (5, 2), "adaptive_sde", max_batch=2, return_trajectory=True)
    with pytest.raises(ValueError, match="max_batch=0 is not accepted"):
        scoresde.sample(GM.score_fn(SDE), SDE, (5, 2), "ddim", 3, max_batch=0)


def test_a_bf16_network_runs_with_a_float32_state():
    # Mixed precision: the network's parameters decide its dtype (inputs cast to it, its output cast
    # back); the state and the float64 coefficients stay in the sample dtype. Exact eps as a bf16
    # "network": the result differs from float32 by bf16 rounding (measured 0.036 rms on gmm16d, see
    # docs/data/mixed_precision.md; here 2-D, 20 steps), and the state stays float32.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from mixed_precision import LowPrecisionEps

    out = {}
    for dt in (torch.float32, torch.bfloat16):
        model = scoresde.ScoreModel(LowPrecisionEps(GM, SDE, dt), SDE, "eps")
        out[dt] = scoresde.sample(model, SDE, (64, 2), "dpmpp_2m", 20, seeds=range(64), dtype=torch.float32).x
    assert out[torch.bfloat16].dtype == torch.float32
    rms = float((out[torch.bfloat16] - out[torch.float32]).pow(2).mean().sqrt())
    assert 1e-4 < rms < 0.2, rms  # visibly rounded (bf16 has 8 bits of mantissa), not broken
