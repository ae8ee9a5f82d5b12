"""ScoreModel refuses what it cannot honestly compute: complex outputs, non-float x, zero denominators."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.model import ScoreModel
from scoresde.sde import EDMSDE, VPSDE, LinearSDE

PARAMS = ["eps", "x0", "v", "denoiser", "edm"]


def _net(dtype=None):
    def net(x, c):
        return torch.zeros_like(x) if dtype is None else torch.zeros(x.shape, dtype=dtype)

    return net


@pytest.mark.parametrize("param", ["score", *PARAMS])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_non_float_network_output_is_an_error(param, dtype):
    m = ScoreModel(_net(dtype), VPSDE(), param)
    with pytest.raises(ValueError, match=f"must return real floating-point values; it returned dtype {dtype}"):
        m(torch.zeros(3, 2), 0.5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.complex64, torch.bool])
def test_non_float_x_is_an_error(dtype):
    m = ScoreModel(_net(), VPSDE(), "eps")
    with pytest.raises(ValueError, match=f"x must be a real floating-point tensor; got dtype {dtype}"):
        m(torch.zeros(3, 2, dtype=dtype), 0.5)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("sde", [VPSDE(), EDMSDE()], ids=["vp", "edm"])
def test_zero_sigma_is_an_error_naming_t(param, sde):
    # sigma(0) = 0 for VP and EDM: the eps -> score conversion (and edm's log sigma) is undefined there.
    assert float(sde.sigma(torch.zeros((), dtype=torch.float64))) == 0.0
    m = ScoreModel(_net(), sde, param)
    t = torch.tensor([0.5, 0.0, 0.3], dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"parameterization='{param}' is undefined at t=0, where sigma\(t\) = 0"):
        m(torch.zeros(3, 2), t)
    assert m.nfe == 0  # refused before the network call
    pred = m(torch.zeros(3, 2), t.clamp_min(sde.t_min))  # the same call at t >= t_min is fine and finite
    assert torch.isfinite(pred.score).all() and torch.isfinite(pred.x0).all()


class _Bridge(LinearSDE):
    """alpha(t) = 1 - t, sigma(t) = t on [0, 1] (rectified-flow interpolation): alpha(1) = 0."""

    def log_alpha(self, t):
        return torch.log1p(-t)

    def sigma(self, t):
        return t


@pytest.mark.parametrize("param", PARAMS)
def test_zero_alpha_is_an_error_naming_t(param):
    sde = _Bridge(T=1.0, t_min=1e-3)
    m = ScoreModel(_net(), sde, param)
    with pytest.raises(ValueError, match=r"is undefined at t=1, where alpha\(t\) = 0"):
        m(torch.zeros(2, 2), 1.0)
    assert math.isfinite(float(m(torch.zeros(2, 2), 0.5).x0.sum()))


def test_a_score_model_at_t_zero_is_allowed():
    # a score function (e.g. an exact mixture's) is defined at t = 0: nothing divides by sigma
    m = ScoreModel(lambda x, t: -x, VPSDE(), "score")
    assert torch.equal(m(torch.ones(2, 2), 0.0).score, -torch.ones(2, 2))


# ------------------------------------------------------------------------------ the right thing blamed
def _huge_below_half(x, t):
    """A finite score that makes the PF-ODE drift overflow float32 for t < 0.5 (the solver's failure)."""
    t = torch.as_tensor(t).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.where(t < 0.5, torch.full_like(x, 3e38), -x)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_a_failed_ode_solve_names_the_solver_not_the_model(method):
    import scoresde

    with pytest.raises(RuntimeError) as info:
        scoresde.sample(_huge_below_half, VPSDE(), (4, 2), "ode", method=method, generator=torch.Generator().manual_seed(0))
    msg = str(info.value)
    assert f"sampler 'ode': torchdiffeq's '{method}' solver failed between t=1 and t=0.001" in msg, msg
    assert "nan" not in msg.lower() and "model" not in msg, msg


def test_a_failed_likelihood_solve_names_the_solver():
    from scoresde.likelihood import log_likelihood

    def jump(x, t):  # finite outputs, but a 1e30 jump in the score at t = 0.5: the step size underflows
        t = torch.as_tensor(t).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(t < 0.5, x * 1e30, -x)

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    with pytest.raises(RuntimeError, match=r"log_likelihood: torchdiffeq's 'dopri5' solver failed between t=0.001 and t=1 "
                                           r"\(underflow in dt"):
        log_likelihood(jump, VPSDE(), x)


def test_a_nan_time_blames_the_solver_and_a_nan_input_the_state():
    from scoresde.model import NonFiniteError

    m = ScoreModel(lambda x, t: x * torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1), VPSDE(), "score")
    with pytest.raises(NonFiniteError, match=r"was asked for at t = nan \(not a time\).*the model is not what failed"):
        m(torch.ones(2, 2), float("nan"))
    with pytest.raises(NonFiniteError, match=r"the model's input x was already NaN or Inf .*t in \[0.5, 0.5\]"):
        m(torch.tensor([[1.0, float("inf")], [0.0, 0.0]]), 0.5)
    bad = ScoreModel(lambda x, t: x * float("inf"), VPSDE(), "score")  # finite input, finite t: the model's fault
    with pytest.raises(NonFiniteError, match=r"^the model returned NaN or Inf at network evaluation #1"):
        bad(torch.ones(2, 2), 0.5)


def test_nan_in_likelihood_data_is_named_as_the_data():
    import numpy as np

    from scoresde.commands.likelihood import evaluate
    from scoresde.likelihood import log_likelihood

    x = torch.zeros(5, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x \(the data\) contains NaN or Inf in 1 of 5 samples \(first: sample 3\)"):
        log_likelihood(lambda x, t: -x, VPSDE(), x)
    with pytest.raises(ValueError, match=r"the data contain NaN or Inf in 1 of 5 samples \(first: sample 3\)"):
        evaluate(None, VPSDE(), None, x.numpy())  # refused before the model is touched
    with pytest.raises(ValueError, match="the data must be a real numeric array"):
        evaluate(None, VPSDE(), None, np.zeros((3, 2), dtype=np.complex64))
