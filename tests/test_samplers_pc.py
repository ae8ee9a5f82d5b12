"""Predictor-corrector, ancestral, reverse-diffusion and annealed-Langevin samplers against exact answers.

* one step of each update against Song et al.'s closed forms, written out here by hand;
* with the exact score of Gaussian mixtures, samples approach the data as steps grow (sliced
  Wasserstein falls to the floor of two exact sample sets; mode weights within binomial error);
* plumbing: per-sample independence of the batch, the corrector order, counted NFE, errors.
"""

import math
import warnings

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, Gaussian, GaussianMixture, SubVPSDE
from scoresde.metrics import sliced_wasserstein
from scoresde.random import GeneratorNoise, TensorNoise
from scoresde.samplers import get, sample
from scoresde.samplers.langevin import langevin_corrector

F64 = torch.float64


# ---------------------------------------------------------------------- hand formulas
def _one_step(sampler, sde, t_cur, t_next, x, S, draws, **opts):
    """Run one interval [t_cur, t_next] with the constant score S and the given noise draws."""
    res = sample(lambda xx, t: S.clone(), sde, x.shape, sampler, 1, schedule=[t_cur, t_next], x_T=x,
                 noise=TensorNoise(draws), denoise=False, dtype=F64, **opts)
    return res.x


def _fixed(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _vp_abar(t, b0=0.1, b1=20.0):
    """DDPM's alpha-bar = alpha(t)^2 for the VP SDE (Song et al. sde_lib marginal_prob, squared)."""
    return math.exp(-0.5 * t * t * (b1 - b0) - t * b0)


# (t_cur, t_next) pairs: fine steps, a coarse one (beta(t)/N > 1 regime: 2 steps on [0, 1]) and the last step.
PAIRS = [(1.0, 0.99), (0.5, 0.3), (1.0, 0.5), (0.01, 0.001)]


@pytest.mark.parametrize("t_cur,t_next", PAIRS)
def test_ve_predictors_equal_song_smld_forms(t_cur, t_next):
    sde = VESDE(0.01, 50.0)
    x, S, z = _fixed(0, 3, 2), _fixed(1, 3, 2), _fixed(2, 3, 2)
    s_i = 0.01 * (50.0 / 0.01) ** t_cur  # sigma_i
    s_im1 = 0.01 * (50.0 / 0.01) ** t_next  # sigma_{i-1}
    d = s_i**2 - s_im1**2
    rd = x + d * S + math.sqrt(d) * z  # Song et al. App. E, SMLD reverse diffusion
    anc = x + d * S + math.sqrt(s_im1**2 * d / s_i**2) * z  # Song et al. App. F, VE ancestral
    # Float64 on both sides; sigma^2 ~ 2500 so allow relative round-off of a few 1e-13.
    assert torch.allclose(_one_step("reverse_diffusion", sde, t_cur, t_next, x, S, [z]), rd, rtol=1e-12, atol=1e-12)
    assert torch.allclose(_one_step("ancestral", sde, t_cur, t_next, x, S, [z]), anc, rtol=1e-12, atol=1e-12)
    # And as the predictor of pc (one home for each step).
    out = _one_step("pc", sde, t_cur, t_next, x, S, [z], predictor="ancestral", corrector="none")
    assert torch.allclose(out, anc, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t_cur,t_next", PAIRS)
def test_vp_predictors_equal_song_ddpm_forms(t_cur, t_next):
    sde = VPSDE(0.1, 20.0)
    x, S, z = _fixed(3, 3, 2), _fixed(4, 3, 2), _fixed(5, 3, 2)
    ab_i, ab_im1 = _vp_abar(t_cur), _vp_abar(t_next)
    beta = 1.0 - ab_i / ab_im1  # the discrete beta_i of this step
    assert 0.0 < beta < 1.0  # even when beta(t)/N > 1 (the (1.0, 0.5) pair: beta(t) dt ~ 7.5)
    rd = (2.0 - math.sqrt(1.0 - beta)) * x + beta * S + math.sqrt(beta) * z  # Song et al. App. E, DDPM
    anc_mean = (x + beta * S) / math.sqrt(1.0 - beta)  # Song et al. App. F, VP ancestral mean
    # Our ancestral std is the DDPM posterior std beta~ = beta (1 - abar_{i-1}) / (1 - abar_i) (Ho et al. Eq. 7),
    # not score_sde's sqrt(beta) (Ho et al.'s other choice); see docs/samplers.md (ancestral).
    anc = anc_mean + math.sqrt(beta * (1.0 - ab_im1) / (1.0 - ab_i)) * z
    assert torch.allclose(_one_step("reverse_diffusion", sde, t_cur, t_next, x, S, [z]), rd, rtol=1e-12, atol=1e-12)
    assert torch.allclose(_one_step("ancestral", sde, t_cur, t_next, x, S, [z]), anc, rtol=1e-12, atol=1e-12)
    song = anc_mean + math.sqrt(beta) * z
    assert not torch.allclose(_one_step("ancestral", sde, t_cur, t_next, x, S, [z]), song, rtol=1e-6)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VPSDE", "VESDE"])
@pytest.mark.parametrize("norm", ["per_sample", "batch"])
def test_langevin_corrector_hand_formula(sde, norm):
    t_cur, t_next, snr = 0.6, 0.4, 0.16
    x, S, z = _fixed(6, 4, 3), _fixed(7, 4, 3), _fixed(8, 4, 3)
    # alpha_i = 1 - beta_i on VP (Song et al.'s code, sde.alphas), 1 on VE.
    alpha = _vp_abar(t_cur) / _vp_abar(t_next) if isinstance(sde, VPSDE) else 1.0
    zn, sn = z.norm(dim=1), S.norm(dim=1)
    if norm == "batch":
        zn, sn = zn.mean().expand(4), sn.mean().expand(4)
    eps = (2 * alpha * (snr * zn / sn) ** 2)[:, None]
    want = x + eps * S + torch.sqrt(2 * eps) * z
    got = _one_step("pc", sde, t_cur, t_next, x, S, [z], predictor="none", corrector="langevin", snr=snr, norm=norm)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("corrector_first", [False, True])
def test_ald_corrector_hand_formula_and_order(corrector_first):
    sde = VPSDE()
    t_cur, t_next, snr = 0.6, 0.4, 0.2
    x, S, z = _fixed(9, 4, 3), _fixed(10, 4, 3), _fixed(11, 4, 3)
    alpha = _vp_abar(t_cur) / _vp_abar(t_next)
    t_c = t_cur if corrector_first else t_next  # score_sde corrects at t_cur first; the paper at t_next after
    sigma = math.sqrt(1 - _vp_abar(t_c))
    step = 2 * alpha * (snr * sigma) ** 2
    want = x + step * S + math.sqrt(2 * step) * z
    got = _one_step("pc", sde, t_cur, t_next, x, S, [z], predictor="none", corrector="ald", snr=snr,
                    corrector_first=corrector_first)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_ald_hand_formula():
    sde = VESDE(0.01, 1.0)
    t0, t1, eps = 0.8, 0.2, 2e-5
    x, S = _fixed(12, 4, 2), _fixed(13, 4, 2)
    zs = [_fixed(20 + k, 4, 2) for k in range(4)]
    s0, s1 = 0.01 * 100**t0, 0.01 * 100**t1  # geometric NCSN levels sigma_1 > sigma_2 = sigma_L
    want = x
    for k, a in enumerate([eps * s0**2 / s1**2] * 2 + [eps] * 2):  # 2 Langevin steps per level
        want = want + a * S + math.sqrt(2 * a) * zs[k]
    got = _one_step("ald", sde, t0, t1, x, S, zs, eps=eps, n_steps_each=2)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- distributions
RING = GaussianMixture.ring(4, 4.0, 0.5, weights=[1.0, 2.0, 3.0, 4.0])  # unequal weights 0.1 .. 0.4


def _floor(gm, n, k=12):
    """Mean and sd of SW1 between an exact reference set and k more exact sets of the same size."""
    ref = gm.sample(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    v = torch.tensor([sliced_wasserstein(ref, gm.sample(n, generator=torch.Generator().manual_seed(100 + j),
                                                          dtype=F64), p=1) for j in range(k)])
    return ref, float(v.mean()), float(v.std())


_FLOORS = {}


def ring_floor(n):
    if n not in _FLOORS:
        _FLOORS[n] = _floor(RING, n)
    return _FLOORS[n]


def _check_converges(gm, sde, sampler, coarse, fine, floor, n, opts):
    ref, mean, sd = floor
    m = gm.model(sde)

    def run(steps):
        # One batch-wide torch stream (GeneratorNoise): 15x cheaper than per-sample Philox, same law.
        r = sample(m, sde, (n, gm.dim), sampler, steps, dtype=F64, noise=torch.Generator().manual_seed(0), **opts)
        return r.x, sliced_wasserstein(r.x, ref, p=1)

    _, sw_coarse = run(coarse)
    x, sw_fine = run(fine)
    # SW1 (not SW2): SW2 of equal-size sets is dominated by the binomial spread of mass between modes
    # 5 units apart (floor 0.25 +- 0.1 at n = 2000); SW1 has floor ~0.09 +- 0.02 there.
    # Reaches the floor: within 4 sd of the exact-vs-exact SW1 (sd from 12 exact pairs).
    assert sw_fine < mean + 4 * sd, (sw_coarse, sw_fine, mean, sd)
    # Falls toward it: the coarse run is clearly (2 sd of the floor) worse.
    assert sw_coarse > sw_fine + 2 * sd, (sw_coarse, sw_fine, mean, sd)
    # Mode weights by nearest component: 4 binomial standard errors plus 0.01 for the residual
    # discretisation bias at the fine budget (the modes overlap by < 1e-6, so labels are exact).
    frac = torch.bincount(gm.responsibilities(x).argmax(1), minlength=gm.n_components).to(F64) / n
    w = gm.weights
    assert bool(((frac - w).abs() <= 4 * torch.sqrt(w * (1 - w) / n) + 0.01).all()), (frac, w)


VE = VESDE(0.01, 20.0)  # sigma_max 20 >> the ring's diameter 8 (Song et al.'s rule of thumb)
VP = VPSDE()
CASES = [  # sampler, sde, coarse steps, fine steps, samples, options
    ("euler_maruyama", VP, 5, 100, 2000, {}),
    ("reverse_diffusion", VE, 5, 100, 2000, {}),
    ("reverse_diffusion", VP, 5, 100, 2000, {}),
    ("ancestral", VE, 5, 100, 2000, {}),
    ("ancestral", VP, 5, 100, 2000, {}),
    ("pc", VE, 5, 100, 2000, {"norm": "batch"}),
    ("pc", VP, 5, 100, 2000, {"norm": "batch", "corrector_first": True, "predictor": "ancestral"}),
    ("pc", VE, 5, 100, 1000, {"predictor": "none", "corrector": "ald", "snr": 0.316, "n_corrector_steps": 5}),
    # ALD mixes slowly at the small-sigma levels (most on VP, where the mean must still move from
    # alpha_t mu to mu there): 20 levels x 40 steps.
    ("ald", VE, 3, 20, 1000, {"n_steps_each": 40}),
    ("ald", VP, 3, 20, 1000, {"n_steps_each": 40}),
]


@pytest.mark.parametrize("sampler,sde,coarse,fine,n,opts", CASES,
                         ids=[f"{c[0]}-{type(c[1]).__name__}-{'-'.join(map(str, c[5].values()))}" for c in CASES])
def test_ring_samples_converge_to_data(sampler, sde, coarse, fine, n, opts):
    _check_converges(RING, sde, sampler, coarse, fine, ring_floor(n), n, opts)


def test_16d_mixture_pc_per_sample_converges():
    gm = GaussianMixture.random(4, 16, seed=0)  # weights 0.29, 0.12, 0.21, 0.38; full covariances
    n = 1000
    # pc defaults: reverse diffusion + Langevin with per-sample norms (fine in 16-D: norms concentrate).
    _check_converges(gm, VPSDE(), "pc", 5, 60, _floor(gm, n), n, {})


def test_per_sample_norm_is_biased_in_two_dimensions():
    """Documented: a step size depending on x (through ||score(x)||) changes the stationary law.

    In the small-step limit Langevin with step h(x) targets p/h, i.e. p ||score||^2 here; in 2-D,
    h ~ 1/||score||^2 is not even integrable near a mode. On N(0, v I_2) the batch-mean rule keeps
    E||x||^2 = 2 v; per-sample norms inflate it (the limit law p ||x||^2 has 4 v; the jumps near 0 more).
    """
    sde, B = VESDE(), 2000
    m = Gaussian([0.0, 0.0], 1.0).model(sde)
    t = torch.tensor(0.3, dtype=F64)
    v = 1 + float(sde.sigma(t)) ** 2
    one = torch.tensor(1.0, dtype=F64)
    out = {}
    for norm in ("per_sample", "batch"):
        noise = GeneratorNoise(torch.Generator().manual_seed(0))  # the step rule is under test, not the noise
        x = noise(torch.empty(B, 2, dtype=F64)) * math.sqrt(v)
        for _ in range(300):
            x = langevin_corrector(m, x, t, one, noise, snr=0.1, norm=norm)
        out[norm] = float((x**2).sum(1).mean()) / v
    # batch: 2 up to the O(snr^2) step bias and Monte Carlo error (sd of ||x||^2/v is 2/sqrt(B) = 0.045).
    assert abs(out["batch"] - 2.0) < 0.2, out
    assert out["per_sample"] > 3.0, out


# ---------------------------------------------------------------------- plumbing
def test_per_sample_norm_makes_samples_batch_independent():
    gm = RING
    sde = VE
    seeds = [11, 22, 33, 44, 55, 66, 77]
    for norm, same in (("per_sample", True), ("batch", False)):
        kw = dict(steps=10, dtype=F64, norm=norm, n_corrector_steps=2)
        big = sample(gm.model(sde), sde, (7, 2), "pc", seeds=seeds, **kw).x
        one = sample(gm.model(sde), sde, (1, 2), "pc", seeds=seeds[3:4], **kw).x
        # per_sample: bit-identical (sample 3 depends on its own seed only); batch: the batch-mean norms differ.
        assert torch.equal(big[3:4], one) == same, norm


@pytest.mark.parametrize("predictor,n", [("reverse_diffusion", 1), ("euler_maruyama", 3), ("none", 2)])
def test_corrector_order_changes_result_not_nfe(predictor, n):
    sde, steps = VP, 6
    out = {}
    for first in (False, True):
        m = RING.model(sde)
        r = sample(m, sde, (16, 2), "pc", steps, dtype=F64, generator=torch.Generator().manual_seed(0),
                   predictor=predictor, n_corrector_steps=n, corrector_first=first)
        # Reported NFE is the model's own count, and equals (predictor) + n per step, plus the final denoise.
        assert r.nfe == m.nfe == steps * ((predictor != "none") + n) + 1
        out[first] = r.x
    assert not torch.allclose(out[False], out[True], atol=1e-6)


@pytest.mark.parametrize("sampler,opts,per_step,levels", [
    ("reverse_diffusion", {}, 1, 0), ("ancestral", {}, 1, 0), ("euler_maruyama", {}, 1, 0),
    ("pc", {"corrector": "none"}, 1, 0), ("pc", {"corrector": "ald", "n_corrector_steps": 4}, 5, 0),
    ("ald", {"n_steps_each": 3}, 3, 3),
])
def test_nfe_is_counted(sampler, opts, per_step, levels):
    m = RING.model(VE)
    steps = 5
    r = sample(m, VE, (8, 2), sampler, steps, generator=torch.Generator().manual_seed(0), **opts)
    # ald visits steps + 1 levels: one more level of n_steps_each (levels) than per-step counting gives.
    assert r.nfe == m.nfe == steps * per_step + levels + 1


@pytest.mark.parametrize("sampler,opts", [
    ("reverse_diffusion", {}), ("ancestral", {}), ("pc", {}), ("pc", {"corrector": "ald", "corrector_first": True}),
    ("ald", {"n_steps_each": 2}),
])
@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(sampler, opts, shape, dtype):
    D = math.prod(shape[1:])
    g = Gaussian(torch.linspace(-1, 1, D, dtype=F64), torch.linspace(0.2, 1.0, D, dtype=F64))
    r = sample(g.model(VP), VP, shape, sampler, 8, dtype=dtype, seeds=range(shape[0]), **opts)
    assert r.x.shape == shape and r.x.dtype == dtype and bool(torch.isfinite(r.x).all())
    again = sample(g.model(VP), VP, shape, sampler, 8, dtype=dtype, seeds=range(shape[0]), **opts)
    assert torch.equal(r.x, again.x)  # same seeds, bit-identical


def test_trajectory_has_one_state_per_grid_time():
    r = sample(RING.model(VE), VE, (4, 2), "ald", 4, n_steps_each=2, return_trajectory=True, denoise=False,
               generator=torch.Generator().manual_seed(0))
    assert r.trajectory.shape == (5, 4, 2) and torch.equal(r.trajectory[-1], r.x)
    r = sample(RING.model(VE), VE, (4, 2), "pc", 4, return_trajectory=True, denoise=False,
               generator=torch.Generator().manual_seed(0))
    assert r.trajectory.shape == (5, 4, 2) and torch.equal(r.trajectory[-1], r.x)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()], ids=lambda s: type(s).__name__)
def test_ald_level_targets_p_t_on_every_linear_sde(sde):
    """At each level, ald's Langevin chain targets p_t through its score, for any alpha(t), sigma(t).

    On Gaussian data p_t = N(alpha mu, alpha^2 s^2 + sigma^2) per coordinate, and the unadjusted
    Langevin chain with step h has the exact stationary law N(alpha mu, v / (1 - h / (2 v))).
    """
    mu, s2 = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.25, 1.0], dtype=F64)
    g = Gaussian(mu, s2)
    ts = sde.t_from_sigma_tilde(torch.tensor([1.5, 0.6], dtype=F64))  # two levels; the last has sigma~ = 0.6
    a, sig = sde.alpha(ts[1]), sde.sigma(ts[1])
    h = 0.2 * sig**2  # eps = 0.2 sigma_L^2 (NCSN's 2e-5 at sigma_L = 0.01); the last level's step is eps
    B = 4000
    r = sample(g.model(sde), sde, (B, 2), "ald", 1, schedule=ts, eps=float(h), n_steps_each=200, dtype=F64,
               denoise=False, noise=torch.Generator().manual_seed(0))
    v = a**2 * s2 + sig**2
    v_ula = v / (1 - h / (2 * v))
    # 200 steps of relative size h / v >= 0.2 sigma^2 / v > 0.04 mix to e^-8; then 4 standard errors:
    # sqrt(v / B) for the mean, v sqrt(2 / B) for the variance.
    assert bool(((r.x.mean(0) - a * mu).abs() < 4 * torch.sqrt(v / B)).all()), (r.x.mean(0), a * mu)
    assert bool(((r.x.var(0) - v_ula).abs() < 4 * v_ula * math.sqrt(2 / B)).all()), (r.x.var(0), v_ula)


def test_ald_logsnr_grid_is_ncsn_geometric_on_ve():
    # Default schedule of ald is logsnr: on VE it is uniform in t, i.e. geometric sigma levels (NCSN).
    assert get("ald").default_schedule == "logsnr"
    from scoresde.schedules import make_grid

    sde = VESDE(0.01, 1.0)
    ts = make_grid(sde, 9, "logsnr")
    assert torch.allclose(ts, make_grid(sde, 9, "uniform"), rtol=0, atol=1e-12)
    s = sde.sigma(ts)
    assert torch.allclose(s[1:] / s[:-1], (s[1] / s[0]).expand(9), rtol=1e-10)


@pytest.mark.parametrize("opts,needle", [
    ({"predictor": "heun"}, "predictor='heun' is not accepted; accepted: 'euler_maruyama'"),
    ({"corrector": "mala"}, "corrector='mala' is not accepted; accepted: 'langevin', 'ald', 'none'"),
    ({"norm": "l1"}, "norm='l1' is not accepted; accepted: 'per_sample', 'batch'"),
    ({"corrector_first": "yes"}, "corrector_first='yes'"),
    ({"snr": -1.0}, "snr=-1.0 is not accepted; accepted: a finite number > 0"),
    ({"n_corrector_steps": 0}, "n_corrector_steps=0 is not accepted; accepted: an integer >= 1"),
    ({"predictor": "none", "corrector": "none"}, "predictor='none' with corrector='none'"),
])
def test_pc_bad_options_raise(opts, needle):
    with pytest.raises(ValueError) as err:
        sample(RING.model(VE), VE, (2, 2), "pc", 2, **opts)
    assert needle in str(err.value)


def test_ald_bad_options_raise():
    for opts, needle in (({"eps": 0.0}, "eps=0.0 is not accepted; accepted: a finite number > 0"),
                         ({"n_steps_each": 1.5}, "n_steps_each=1.5"),
                         ({"eps": 1e-3}, "must be below 2 sigma_L^2")):
        with pytest.raises(ValueError) as err:
            sample(RING.model(VE), VE, (2, 2), "ald", 2, **opts)
        assert needle in str(err.value)


def test_registry_metadata():
    for name in ("reverse_diffusion", "ancestral", "euler_maruyama"):
        spec = get(name)
        assert spec.kind == "sde" and spec.stochastic and spec.default_steps == 1000 and spec.options == {}
    spec = get("pc")
    assert spec.options == {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16,
                            "n_corrector_steps": 1, "norm": "per_sample", "corrector_first": False}
    assert spec.default_steps == 1000 and spec.default_schedule == "uniform"
    spec = get("ald")
    assert spec.options == {"eps": 2e-5, "n_steps_each": 100} and spec.default_steps == 9  # NCSN: L = 10, T = 100


def test_per_sample_norm_warns_in_low_dimension():
    # The 2-D failure the warning describes: with the exact score, some samples are thrown far out.
    sde = VPSDE()
    gm = GaussianMixture([0.1, 0.2, 0.3, 0.4], [[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]], [0.3, 0.5, 0.4, 0.6])
    with pytest.warns(UserWarning, match="norm='per_sample' with 2 dimension"):
        x = sample(gm.model(sde), sde, (2000, 2), "pc", 250, generator=torch.Generator().manual_seed(0)).x
    assert int((x.norm(dim=1) > 10).sum()) > 10  # data radius is about 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = sample(gm.model(sde), sde, (2000, 2), "pc", 250, norm="batch", generator=torch.Generator().manual_seed(0)).x
        assert int((x.norm(dim=1) > 10).sum()) == 0
        sample(gm.model(sde), sde, (4, 2), "pc", 3, corrector="ald")
        sample(GaussianMixture.random(2, 16, seed=0).model(sde), sde, (4, 16), "pc", 3)
