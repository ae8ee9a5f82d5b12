"""The last step from t_min to the data: Tweedie's posterior mean, or one probability-flow step.

At t_min the state has scaled noise ``sigma~ = sigma / alpha`` left. Two final steps cost one
network call each:

* ``tweedie``: ``x <- x0(x, t_min)``, the posterior mean E[x_0 | x_t] (NCSNv2's denoising step;
  the front door's ``denoise=True``). It is an Euler step of the PF-ODE in sigma~ down to 0. In
  sigma~ the solution near 0 is even (``x~(s) = x~(0) + O(s^2)``), so that step removes twice
  the noise the ODE removes: each direction of variance v shrinks by ``v / (v + s^2)`` instead
  of ``sqrt(v / (v + s^2))``, and the samples come out too concentrated
  (mean log p0 too high by about ``(s^2 / 2) sum_i 1 / v_i`` for a Gaussian).
* ``ode``: one Euler step of the PF-ODE in ``u = sigma~^2`` down to 0,
  ``dx~/du = (x0 - x~) / (2u)``, i.e. ``x <- (x / alpha + x0) / 2``. The solution is smooth in u,
  so the step is first order in u (error O(s^4)): the variance ratio is ``1 - s^2 / (2(v + s^2))``
  against the exact ``sqrt(v / (v + s^2))`` (they agree to O(s^4 / v^2)).
"""

from __future__ import annotations

from torch import Tensor

from .._utils import check_choice

__all__ = ["final_step", "FINAL_STEPS"]

FINAL_STEPS = ("tweedie", "ode", "none")


def final_step(model, x: Tensor, t_min: Tensor, rule: str = "tweedie") -> Tensor:
    """Map the state at ``t_min`` to the data (``rule``: ``tweedie``, ``ode`` or ``none``; one NFE unless none).

    ``none`` returns ``x / alpha(t_min)``: the state in data scale, with its sigma~ noise left.
    """
    check_choice("rule", rule, FINAL_STEPS)
    if rule == "none":
        sde = getattr(model, "sde", None)
        if sde is None:
            raise ValueError("rule='none' needs a ScoreModel (model.sde) to divide by alpha(t_min)")
        from .._utils import append_dims

        return x / append_dims(sde.alpha(t_min.reshape(1)), x.ndim).to(x.dtype)
    pred = model(x, t_min)
    if rule == "tweedie":
        return pred.x0
    return 0.5 * (x / pred.alpha + pred.x0)
