"""EDM (Karras et al. 2022) networks: preconditioned ``D(x, sigma, class_labels)`` or the raw ``F``.

EDM's ``EDMPrecond`` / ``VPPrecond`` / ``VEPrecond`` (``training/networks.py``) are called as
``net(x, sigma, class_labels=None)`` and return the denoised x0: scoresde's ``denoiser``
parameterisation on :class:`~scoresde.sde.EDMSDE`. The raw network inside ``EDMPrecond`` (``F`` of
EDM's Eq. 7, called on ``c_in x`` and ``c_noise = ln(sigma)/4``) is scoresde's ``edm``
parameterisation, with EDM's ``sigma_data``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..model import ScoreModel
from ..sde import EDMSDE, LinearSDE
from ._common import adapted, check_callable, finite_positive

__all__ = ["from_edm"]


def from_edm(
    net: Any,
    sde: LinearSDE | None = None,
    *,
    preconditioned: bool = True,
    sigma_data: float | None = None,
    check_finite: bool = True,
) -> ScoreModel:
    """An EDM network as a scoresde model.

    Args:
        net: ``net(x, sigma, class_labels=None, **kw) -> x0`` (``preconditioned=True``, EDM's
            ``*Precond`` classes), or the raw ``F(c_in x, c_noise, class_labels=None)``
            (``preconditioned=False``). Class labels come from ``sample(..., cond={"class_labels": y})``.
        sde: default ``EDMSDE`` over the net's ``sigma_min`` / ``sigma_max`` when they are positive
            and finite (``EDMPrecond`` defaults to 0 and inf: then EDM's sampler range 0.002 .. 80).
        sigma_data: the raw network's data std (default ``net.sigma_data``, else EDM's 0.5).
    """
    check_callable("net", net)
    if not isinstance(preconditioned, bool):
        raise ValueError(f"preconditioned={preconditioned!r} is not one of the accepted values: True, False")
    if sde is None:
        lo = getattr(net, "sigma_min", None)
        hi = getattr(net, "sigma_max", None)
        sde = EDMSDE(sigma_min=float(lo) if finite_positive(lo) else 0.002,
                     sigma_max=float(hi) if finite_positive(hi) else 80.0)

    def call(x: Tensor, c: Tensor, **cond: Any) -> Tensor:
        return net(x, c, **cond)

    if preconditioned:
        return adapted(call, net, sde, "denoiser", check_finite=check_finite)
    sd = sigma_data if sigma_data is not None else float(getattr(net, "sigma_data", 0.5))
    return adapted(call, net, sde, "edm", sigma_data=sd, check_finite=check_finite)
