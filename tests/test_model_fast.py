"""The light model-call path: per-grid time terms, cheap finiteness checks, the engine's linear view.

Oracles: the uncached path (the same formulas evaluated per call) bit for bit, the Prediction's
own conversions, and hand-made non-finite outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde import EDMSDE, VESDE, VPSDE, NonFiniteError, ScoreModel, SubVPSDE
from scoresde.model import NOISE_INPUTS, PARAMETERIZATIONS

SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = [type(s).__name__ for s in SDES]


class Tiny(nn.Module):
    """A smooth net of any input shape that uses c_noise (so the time terms reach the output)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.7, -0.3], dtype=dtype))

    def forward(self, x, c):
        c = c.reshape(c.shape + (1,) * (x.ndim - 1)).to(x.dtype)
        return torch.tanh(self.w[0] * x + self.w[1] * c)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_cached_terms_equal_the_per_call_terms_bit_for_bit(sde, dtype):
    ts = torch.linspace(sde.T, sde.t_min, 9, dtype=torch.float64)
    for shape in ((5, 2), (3, 2, 2, 3)):
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
        for p in PARAMETERIZATIONS:
            for ni in NOISE_INPUTS if p not in ("denoiser", "edm") else ("t",):
                model = ScoreModel(Tiny(dtype), sde, p, noise_input=ni)
                for i in (0, 4, 8):
                    cached = model(x, ts[i])  # a view of the grid: cached terms
                    direct = model(x, ts[i].clone())  # no base: computed per call
                    for name in ("alpha", "sigma", "out", "x0", "score"):
                        a, b = getattr(cached, name), getattr(direct, name)
                        assert a.shape == b.shape and torch.equal(a, b), (p, ni, i, name)
                    assert torch.equal(cached.t, direct.t)


def test_grid_changes_and_in_place_network_edits_do_not_leak():
    sde = VPSDE()
    seen = []

    def net(x, c):
        seen.append(c.clone())
        c.mul_(0.0)  # a careless network edits its input in place
        return x

    model = ScoreModel(net, sde, "eps")
    x = torch.randn(4, 2)
    ts = torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)
    model(x, ts[1])
    model(x, ts[1])
    assert torch.equal(seen[0], seen[1]) and float(seen[0][0]) == float(ts[1].float())
    ts.mul_(0.5)  # an in-place change of the grid invalidates the cached terms
    pred = model(x, ts[1])
    assert float(seen[2][0]) == float(ts[1].float())
    assert torch.equal(pred.alpha, model(x, ts[1].clone()).alpha)


def test_net_dtype_follows_conversions_and_reloads():
    net = Tiny()
    model = ScoreModel(net, VPSDE(), "eps")
    x = torch.randn(3, 2, dtype=torch.float64)
    assert model(x, 0.5).out.dtype == torch.float64
    assert model.net_dtype(torch.float64) == torch.float32
    net.double()
    assert model.net_dtype(torch.float32) == torch.float64
    net.load_state_dict({"w": torch.zeros(2, dtype=torch.float16)}, assign=True)  # a new Parameter object
    assert model.net_dtype(torch.float32) == torch.float16
    assert ScoreModel(lambda x, c: x, VPSDE()).net_dtype(torch.bfloat16) == torch.bfloat16


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_outputs_are_caught_and_huge_finite_ones_are_not(bad):
    sde = VPSDE()
    ts = torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)
    # Finite values whose float32 sum overflows: the cheap check must fall back to the exact one.
    huge = ScoreModel(lambda x, c: torch.full_like(x, 3e38), sde, "eps")
    assert torch.isinf(torch.full((4, 2), 3e38).sum())
    huge(torch.randn(4, 2), ts[2])

    calls = []

    def net(x, c):
        calls.append(1)
        out = x.clone()
        if len(calls) == 3:
            out[1, 0] = bad
        return out

    model = ScoreModel(net, sde, "eps")
    x = torch.randn(4, 2)
    model(x, ts[0])
    model(x, ts[1])
    with pytest.raises(NonFiniteError, match=r"network evaluation #3 \(t in \[0\.500[0-9]*, 0\.500[0-9]*\]\)") as info:
        model(x, ts[2])
    assert info.value.call == 3 and info.value.t == pytest.approx(float(ts[2]))
    # Deferred: no error until the block ends; then the first bad evaluation and its t.
    calls.clear()
    model.reset_nfe()
    with pytest.raises(NonFiniteError, match=r"evaluation #3 \(t in \[0\.750[0-9]*, 0\.750[0-9]*\]\)"):
        with model.deferred_finite_check():
            for _ in range(5):
                model(x, ts[1])
    assert model.nfe == 5


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_linear_io_reproduces_the_call(sde):
    ts = torch.linspace(sde.T, sde.t_min, 7, dtype=torch.float64)
    u = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for p in PARAMETERIZATIONS:
        for ni in NOISE_INPUTS if p not in ("denoiser", "edm") else ("t",):
            model = ScoreModel(Tiny(torch.float64), sde, p, noise_input=ni, sigma_data=0.7)
            k_in, c_noise, a_u, a_out = model.linear_io(ts)
            for i in range(len(ts)):
                with torch.no_grad():
                    out = model.net(k_in[i] * u, c_noise[i].expand(6))
                    x0 = a_u[i] * u + a_out[i] * out
                    ref = model(u, ts[i]).x0
                # Same formulas re-associated (1/alpha factored out of a sum, sigma^2/alpha, ...):
                # a few float64 ulps of the largest term; VE's sigma = 50 makes terms ~50 |out|.
                scale = float(ref.abs().max()) + float((a_u[i] * u).abs().max()) + float((a_out[i] * out).abs().max())
                assert torch.allclose(x0, ref, rtol=0, atol=1e-13 * scale), (p, ni, i)
