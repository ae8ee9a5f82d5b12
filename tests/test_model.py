"""ScoreModel: conversions round-trip, every parameterisation gives the same score, NFE, errors."""

import math

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, GaussianMixture, NonFiniteError, ScoreModel, SubVPSDE
from scoresde.model import as_model, convert

SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = [type(s).__name__ for s in SDES]


def _setup(sde, B=6, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(B, generator=g, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64) * 2
    return x, t


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conversions_round_trip(sde):
    x, t = _setup(sde)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    eps = torch.randn_like(x)
    x0 = (x - sigma * eps) / alpha
    truth = {"eps": eps, "x0": x0, "score": -eps / sigma, "v": (alpha * eps - sigma * x0) / torch.sqrt(alpha**2 + sigma**2)}
    for src in truth:
        for dst in truth:
            got = convert(x, alpha, sigma, truth[src], src, dst)
            back = convert(x, alpha, sigma, got, dst, src)
            # float64 round-off, amplified by at most sigma_max / sigma_min ~ 1e4-5e3 for VE/EDM.
            assert torch.allclose(got, truth[dst], rtol=1e-9, atol=1e-9 * float(truth[dst].abs().max())), (src, dst)
            assert torch.allclose(back, truth[src], rtol=1e-9, atol=1e-9 * float(truth[src].abs().max())), (src, dst)


def _exact_nets(gm, sde):
    """The exact mixture's score written as networks of each parameterisation (net(x_in, c_noise))."""

    def x0_of(x, t):
        return gm.x0(x, t, sde)

    def st(t):  # sigma~ -> t
        return sde.t_from_sigma_tilde(t)

    def score(x, t):
        return gm.score(x, t, sde)

    def eps(x, t):
        return -sde.sigma(t)[:, None] * gm.score(x, t, sde)

    def v(x, t):
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return (a * eps(x, t) - s * x0_of(x, t)) / torch.sqrt(a**2 + s**2)

    def denoiser(x_tilde, sigma_tilde):  # EDM convention: D(x/alpha; sigma/alpha) = x0
        t = st(sigma_tilde)
        return x0_of(x_tilde * sde.alpha(t)[:, None], t)

    def edm_F(x_in, c_noise, sd=0.5):  # raw F with EDM preconditioning
        s = torch.exp(4 * c_noise)[:, None]
        x_tilde = x_in * torch.sqrt(s**2 + sd**2)
        D = denoiser(x_tilde, s[:, 0])
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / torch.sqrt(s**2 + sd**2)
        return (D - c_skip * x_tilde) / c_out

    return {"score": score, "eps": eps, "x0": x0_of, "v": v, "denoiser": denoiser, "edm": edm_F}


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_every_parameterization_gives_the_exact_score(sde):
    gm = GaussianMixture.random(3, 3, seed=1)
    x, t = _setup(sde)
    truth = gm.score(x, t, sde)
    for p, net in _exact_nets(gm, sde).items():
        m = ScoreModel(net, sde, p)
        pred = m(x, t)
        tol = 1e-8 * float(truth.abs().max())  # float64; conversions divide by sigma >= sigma_min
        assert torch.allclose(pred.score, truth, rtol=1e-8, atol=tol), p
        assert torch.allclose(pred.x0, gm.x0(x, t, sde), rtol=1e-7, atol=1e-7 * float(x.abs().max())), p
        assert m.nfe == 1


def test_nfe_counting_and_cond_pass_through():
    sde = VPSDE()
    seen = {}

    def net(x, c, y=None):
        seen["y"] = y
        seen["c"] = c
        return torch.zeros_like(x)

    m = ScoreModel(net, sde, "eps", noise_input="sigma")
    x = torch.zeros(4, 2)
    m(x, 0.5, y=torch.arange(4))
    m(x, torch.full((4,), 0.25))
    assert m.nfe == 2
    assert seen["y"] is None and torch.allclose(seen["c"], sde.sigma(torch.full((4,), 0.25, dtype=torch.float64)).float())
    m(x, 0.5, y=torch.arange(4))
    assert torch.equal(seen["y"], torch.arange(4))
    m.reset_nfe()
    assert m.nfe == 0


def test_noise_inputs():
    sde = VESDE()
    got = {}
    for mode in ("t", "sigma", "log_sigma", "lambda", "edm"):
        m = ScoreModel(lambda x, c, mode=mode: (got.__setitem__(mode, c), torch.zeros_like(x))[1], sde, "eps", noise_input=mode)
        m(torch.zeros(2, 1, dtype=torch.float64), 0.5)
    s = 0.01 * 5000**0.5
    assert math.isclose(float(got["t"][0]), 0.5)
    assert math.isclose(float(got["sigma"][0]), s, rel_tol=1e-12)
    assert math.isclose(float(got["log_sigma"][0]), math.log(s), rel_tol=1e-12)
    assert math.isclose(float(got["lambda"][0]), -math.log(s), rel_tol=1e-12)
    assert math.isclose(float(got["edm"][0]), 0.25 * math.log(s), rel_tol=1e-12)


def test_non_finite_output_raises():
    sde = VPSDE()
    m = ScoreModel(lambda x, t: torch.full_like(x, float("nan")), sde)
    with pytest.raises(NonFiniteError, match="NaN or Inf at network evaluation #1"):
        m(torch.zeros(2, 2), 0.3)


def test_bad_inputs():
    sde = VPSDE()
    with pytest.raises(ValueError, match="parameterization='noise' is not one of the accepted values: 'score', 'eps'"):
        ScoreModel(lambda x, t: x, sde, "noise")
    with pytest.raises(ValueError, match="noise_input"):
        ScoreModel(lambda x, t: x, sde, noise_input="time")
    with pytest.raises(TypeError, match="sde must be a scoresde LinearSDE"):
        ScoreModel(lambda x, t: x, "vp")
    m = ScoreModel(lambda x, t: x[:, :1], sde)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        m(torch.zeros(3, 2), 0.5)
    m = ScoreModel(lambda x, t: x, sde)
    with pytest.raises(ValueError, match="batch size 3"):
        m(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(B, \*D\)"):
        m(torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="was built for"):
        as_model(ScoreModel(lambda x, t: x, VESDE()), sde)
    assert isinstance(as_model(lambda x, t: x, sde), ScoreModel)


def test_deferred_finite_check_names_the_first_bad_call():
    sde = VPSDE()
    m = ScoreModel(lambda x, t: x / (t[:, None] - 0.5), sde)  # Inf where t == 0.5
    with pytest.raises(NonFiniteError, match=r"evaluation #2 \(t in \[0.5, 0.5\]\)") as info:
        with m.deferred_finite_check():
            m(torch.ones(2, 2), 0.9)  # fine: no error raised inside the block
            m(torch.ones(2, 2), 0.5)
            m(torch.ones(2, 2), 0.5)
    assert info.value.call == 2 and info.value.t == 0.5
    with m.deferred_finite_check():  # all finite: no error
        m(torch.ones(2, 2), 0.9)
