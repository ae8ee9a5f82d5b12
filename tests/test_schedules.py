"""Time grids: end points, spacing in the right variable, and validation."""

import math

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, SubVPSDE
from scoresde.schedules import make_grid

SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("schedule", ["uniform", "karras", "logsnr", "quadratic"])
@pytest.mark.parametrize("steps", [1, 2, 17, 2000])
def test_grids_are_strictly_decreasing_with_exact_end_points(sde, schedule, steps):
    ts = make_grid(sde, steps, schedule)
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.t_min
    assert bool((ts[1:] < ts[:-1]).all())


def test_spacing_in_the_right_variable():
    sde = VPSDE()
    ts = make_grid(sde, 10, "logsnr")
    lam = sde.lam(ts)
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(10), rtol=1e-8)
    edm = EDMSDE()
    ts = make_grid(edm, 17, "karras", rho=7.0)
    # EDM's own formula for N = 18 points (Karras et al. 2022, Eq. 5).
    i = torch.arange(18, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(ts, ref, rtol=1e-12)
    ve = VESDE()
    ts = make_grid(ve, 9, "uniform")
    sig = ve.sigma(ts)
    ratio = sig[1:] / sig[:-1]
    # VE + uniform t = geometric sigma levels (NCSN).
    assert torch.allclose(ratio, ratio[0].expand(9), rtol=1e-10)
    assert math.isclose(float(ts[1]), 1 - (1 - 1e-5) / 9, rel_tol=1e-12)


def test_explicit_grids_and_errors():
    sde = VPSDE()
    ts = make_grid(sde, None, [1.0, 0.5, 0.1])
    assert ts.tolist() == [1.0, 0.5, 0.1]
    with pytest.raises(ValueError, match="strictly decreasing"):
        make_grid(sde, None, [1.0, 0.5, 0.5, 0.1])
    with pytest.raises(ValueError, match="must lie in"):
        make_grid(sde, None, [1.5, 0.5])
    with pytest.raises(ValueError, match="schedule='cosine' is not one of the accepted values"):
        make_grid(sde, 10, "cosine")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        make_grid(sde, 0, "uniform")
    with pytest.raises(ValueError, match="steps=3 needs 4"):
        make_grid(sde, 3, [1.0, 0.5])
