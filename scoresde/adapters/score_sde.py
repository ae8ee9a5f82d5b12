"""score_sde (Song et al. 2021) networks: ``net(x, labels)`` with score_sde's time labels.

score_sde's ``get_score_fn`` (``models/utils.py``) feeds its networks these labels and reads their
output as follows; :func:`from_score_sde` does the same:

=====================  =========================================  ===========================
SDE                    labels                                     output (default)
=====================  =========================================  ===========================
VPSDE / SubVPSDE       ``999 t`` (continuous training)            eps (score = -eps / sigma)
DiscreteVPSDE (DDPM)   ``t (N - 1)``, the table timestep          eps
VESDE, continuous      ``sigma(t)``                               score
VESDE, discrete        ``round((T - t)/T (N - 1))`` (long)        score
=====================  =========================================  ===========================

score_sde's discrete DDPM models were trained on the table of ``beta_i = linspace(beta_min/N,
beta_max/N, N)``: wrap them on ``DiscreteVPSDE(betas=torch.linspace(0.1/1000, 20/1000, 1000))``,
not on the continuous VPSDE (whose noise levels differ from that table's by up to 29% near t = 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._utils import check_choice
from ..discrete import DiscreteVPSDE
from ..model import ScoreModel
from ..sde import VESDE, VPSDE, LinearSDE, SubVPSDE
from ._common import adapted, check_callable, param_dtype

__all__ = ["from_score_sde", "OUTPUTS"]

OUTPUTS = ("eps", "score")


class _LabelCall:
    def __init__(self, net: Any, sde: LinearSDE, mode: str, num_scales: int):
        self.net, self.sde, self.mode, self.num_scales = net, sde, mode, num_scales

    def labels(self, t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        if self.mode == "vp":
            return (999.0 * t64).to(torch.float32)
        if self.mode == "ddpm":
            return self.sde.timestep(t64).to(torch.float32)
        if self.mode == "ve":
            return self.sde.sigma(t64).to(torch.float32)
        return torch.round((self.sde.T - t64) / self.sde.T * (self.num_scales - 1)).long()  # ve discrete

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.net(x.to(param_dtype(self.net, x.dtype)), self.labels(t), **cond)

    def __repr__(self) -> str:
        return f"{type(self.net).__name__} (score_sde labels: {self.mode})"


def from_score_sde(
    net: Any,
    sde: LinearSDE,
    continuous: bool = True,
    *,
    output: str | None = None,
    num_scales: int = 1000,
    check_finite: bool = True,
) -> ScoreModel:
    """A score_sde network ``net(x, labels)`` as a scoresde model (labels and output: module docstring).

    Args:
        net: the network (NCSN++, DDPM++, DDPM, NCSNv2, ... or any ``net(x, labels)``).
        sde: ``VPSDE`` / ``SubVPSDE`` (continuous), ``DiscreteVPSDE`` (DDPM, discrete) or ``VESDE``
            (either), with the config's parameters (``beta_min``, ``beta_max``, ``sigma_min``, ...).
        continuous: score_sde's ``training.continuous``. For VE it switches the labels between sigma
            and the rounded level index; a discrete VP model needs a ``DiscreteVPSDE``.
        output: ``eps`` or ``score``; default ``eps`` for VP-type SDEs and ``score`` for VE
            (score_sde's NCSN++ on VE divides by sigma inside the network).
        num_scales: score_sde's ``model.num_scales`` N (VE discrete labels).
    """
    check_callable("net", net)
    if not isinstance(continuous, bool):
        raise ValueError(f"continuous={continuous!r} is not one of the accepted values: True, False")
    if isinstance(sde, DiscreteVPSDE):
        mode = "ddpm"
    elif isinstance(sde, (VPSDE, SubVPSDE)):
        if not continuous:
            raise ValueError(
                f"a discretely trained score_sde VP model was trained on a DDPM table, not on {sde!r}: wrap it on "
                f"DiscreteVPSDE(betas=torch.linspace({sde.beta_min}/N, {sde.beta_max}/N, N)) (N = num_scales)"
            )
        mode = "vp"
    elif isinstance(sde, VESDE):
        mode = "ve" if continuous else "ve_discrete"
    else:
        raise TypeError(
            f"from_score_sde supports score_sde's SDEs (VPSDE, SubVPSDE, VESDE) and DiscreteVPSDE; got {type(sde).__name__}"
        )
    if isinstance(num_scales, bool) or int(num_scales) != num_scales or num_scales < 2:
        raise ValueError(f"num_scales must be an integer >= 2; got {num_scales!r}")
    output = output if output is not None else ("score" if mode.startswith("ve") else "eps")
    check_choice("output", output, OUTPUTS)
    return adapted(_LabelCall(net, sde, mode, int(num_scales)), net, sde, output, check_finite=check_finite)
