"""Stage tables (samplers/tables.py): every fixed-step sampler's table equals its eager loop.

The reference runner ``run_stages`` replays a table with plain torch (one ``model(u, t).x0`` per
call, one ``noise(x)`` per drawing row); on four SDEs and several step counts it must reproduce the
eager sampler with the same per-sample noise to float64 round-off. The point-mass identities are
asserted when each table is built (``exact_for_point_mass`` samplers, and ancestral).
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import EDMSDE, VESDE, VPSDE, GaussianMixture, SubVPSDE
from scoresde.random import PerSampleNoise
from scoresde.samplers import get, specs
from scoresde.samplers.tables import (
    CoefficientTable,
    Eval,
    Stage,
    StageTable,
    TableBuilder,
    as_stage_table,
    run_stages,
    run_table,
)
from scoresde.schedules import make_grid

F64 = torch.float64
SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
SDE_IDS = [type(s).__name__ for s in SDES]
MIX = GaussianMixture([0.7, 0.3], [[1.0, 0.0], [-1.5, 1.0]], [0.2, 0.05])
CHURN = {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}  # EDM's ImageNet-64 settings
CASES = [
    ("euler_maruyama", {}), ("reverse_diffusion", {}), ("ancestral", {}),
    ("pc", {"corrector": "ald"}), ("pc", {"corrector": "none"}),
    ("pc", {"corrector": "ald", "predictor": "ancestral", "corrector_first": True, "n_corrector_steps": 2}),
    ("pc", {"predictor": "none", "corrector": "ald"}),
    ("ald", {"n_steps_each": 3, "eps": 1e-9}),
    ("heun", {}), ("edm_sde", {}), ("edm_sde", CHURN), ("edm_sde", {"S_churn": 10.0, "S_noise": 0.0}),
    ("unipc", {}), ("unipc", {"order": 1}), ("unipc", {"order": 3, "variant": "bh1", "lower_order_final": False}),
    ("dpmpp_3m", {"first_step": "midpoint"}), ("dpmpp_3m", {"first_step": "midpoint", "lower_order_final": False}),
    ("ddim", {"eta": 0.5}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {}), ("euler_ancestral", {}),
]


def _ids(cases):
    return [f"{n}{''.join(f'-{k}={v}' for k, v in o.items())}" for n, o in cases]


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("name,opts", CASES, ids=_ids(CASES))
def test_stage_table_matches_eager_sampler(sde, name, opts):
    spec = get(name)
    model = MIX.model(sde)
    for steps in (1, 2, 3, 5, 17):
        ts = make_grid(sde, steps, spec.default_schedule)
        x_T = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) * sde.prior_std()
        seen_eager, seen_table = [], []
        eager = spec.fn(model, sde, x_T, ts, noise=PerSampleNoise(torch.arange(6)),
                        callback=lambda i, x, s=seen_eager: (s.append(i), x)[1], **opts)
        table = spec.coefficients(sde, ts, **opts)
        ran = run_stages(model, sde, x_T, ts, table, PerSampleNoise(torch.arange(6)),
                         lambda i, x, s=seen_table: s.append(i))
        # Same arithmetic re-associated into weights (Heun's trapezoid expanded in x0 and x0', x/alpha
        # with alpha(T) ~ 7e-3 on VP, UniPC's differences): measured <= 5e-13 relative; 1e-11 leaves margin.
        assert torch.allclose(eager, ran, rtol=0, atol=1e-11 * float(eager.abs().max())), (name, opts, steps)
        assert seen_table == seen_eager == list(range(steps))
        assert table.nfe == _eager_nfe(spec, model, sde, x_T, ts, opts)


def _eager_nfe(spec, model, sde, x_T, ts, opts):
    counter = {"n": 0}

    def counted(x, t):
        counter["n"] += 1
        return model(x, t)

    spec.fn(counted, sde, x_T, ts, noise=PerSampleNoise(torch.arange(len(x_T))), callback=lambda i, x: x, **opts)
    return counter["n"]


# Fixed-step samplers without a table yet, and why (kept visible: the engines run them eagerly).
NO_TABLE_YET = {
    "ipndm": "Adams-Bashforth on eps = (x - alpha x0)/sigma of PAST states: the table rows hold past predictions, not "
             "past states (a history-of-states row would express it)",
    "lms": "as ipndm",
    "deis": "as ipndm",
    "restart": "its back-solve grids depend on the options' restart intervals; not lowered yet",
    "ode": "fixed-step torchdiffeq methods: torchdiffeq owns the loop",
}


def test_every_fixed_step_sampler_publishes_a_table():
    adaptive = {"ode_scipy", "adaptive_sde"}  # error-controlled: no fixed program
    for spec in specs():
        if spec.name in adaptive or spec.name in NO_TABLE_YET:
            continue
        assert spec.coefficients is not None, spec.name
        assert spec.traits().table or spec.name == "pc", spec.name  # pc's default Langevin corrector has none


def test_pc_with_the_langevin_corrector_has_no_table():
    sde = VPSDE()
    with pytest.raises(ValueError, match="corrector='langevin' has no coefficient table"):
        get("pc").coefficients(sde, make_grid(sde, 4, "uniform"))


def test_coefficient_tables_convert_to_stage_tables():
    sde = VPSDE()
    ts = make_grid(sde, 7, "logsnr")
    for name in ("dpmpp_3m", "dpmpp_2m_sde"):
        table = get(name).coefficients(sde, ts)
        assert isinstance(table, CoefficientTable)
        stages = as_stage_table(table)
        stages.check(sde, point_mass=name == "dpmpp_3m")
        x_T = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
        a = run_table(_model3(sde), sde, x_T, ts, table, PerSampleNoise(torch.arange(4)))
        b = run_stages(_model3(sde), sde, x_T, ts, stages, PerSampleNoise(torch.arange(4)))
        assert torch.equal(a, b)  # the same operations in the same order, float64
    with pytest.raises(TypeError, match="must be a CoefficientTable or a StageTable"):
        as_stage_table({"a": 1})


def _model3(sde):
    return GaussianMixture([0.5, 0.5], [[1.0, 0.0, -1.0], [-1.0, 0.5, 0.0]], [0.3, 0.3]).model(sde)


def test_builder_and_check_reject_broken_tables():
    sde = VPSDE()
    ts = make_grid(sde, 2, "uniform")
    b = TableBuilder("t", ts, 1)
    b.call("a", ts[0])
    b.call("b", ts[0])
    with pytest.raises(ValueError, match=r"prediction 'a' is not in the history \['b'\] \(K = 1\)"):
        b.update(1.0, {"a": 1.0}, t_start=ts[0], t_end=ts[1], step=0)
    b = TableBuilder("t", ts, 1)
    b.call(0, ts[0])
    with pytest.raises(ValueError, match="calls after the last update"):
        b.build(sde)
    table = get("heun").coefficients(sde, ts)
    row = table.rows[0]

    def with_rows(rows, **kw):
        return StageTable("broken", ts, kw.get("history", 2), tuple(rows))

    with pytest.raises(ValueError, match=r"end the grid steps 0 \.\. 1 once each, in order; they end \[1, 0\]"):
        with_rows([table.rows[1], table.rows[0]]).check(sde, point_mass=False)
    with pytest.raises(ValueError, match="weighs history entry 0 or later, which does not exist yet"):
        bad = Stage((Eval(row.evals[0].t, 1.0, (0.3, 0.0)),), row.a, row.b, 0.0, False, row.t_start, row.t_end, 0)
        with_rows([bad, table.rows[1]]).check(sde, point_mass=False)
    with pytest.raises(ValueError, match="c must be >= 0, and 0 in a row without a draw"):
        bad = Stage(row.evals, row.a, row.b, 0.1, False, row.t_start, row.t_end, 0)
        with_rows([bad, table.rows[1]]).check(sde, point_mass=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        bad = Stage(row.evals, math.nan, row.b, 0.0, False, row.t_start, row.t_end, 0)
        with_rows([bad, table.rows[1]]).check(sde, point_mass=False)
    # A relative change of 1e-6 in the Euler point's weight breaks the call's mean identity.
    e = row.evals[1]
    bad = Stage((row.evals[0], Eval(e.t, e.p * (1 + 1e-6), e.q)), row.a, row.b, 0.0, False, row.t_start, row.t_end, 0)
    with pytest.raises(ValueError, match=r"row 0 call 1: p\*alpha \+ sum q = alpha\(t\)"):
        with_rows([bad, table.rows[1]]).check(sde)
    with pytest.raises(ValueError, match="another grid"):
        run_stages(MIX.model(sde), sde, torch.zeros(2, 2, dtype=F64), make_grid(sde, 2, "karras"), table,
                   PerSampleNoise(torch.arange(2)))
