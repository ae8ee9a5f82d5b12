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
