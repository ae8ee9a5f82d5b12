"""Predictor-corrector samplers of Song et al. 2021 (score_sde): predictors and correctors."""

from __future__ import annotations

from ..sde import LinearSDE
from .registry import register


@register("euler_maruyama", kind="sde", order=0.5, stochastic=True, nfe_per_step="1", default_steps=1000,
          paper="Song et al. 2021, App. E (EulerMaruyamaPredictor)")
def euler_maruyama(model, sde: LinearSDE, x, ts, *, noise, callback):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6); strong order 1/2 (1 for additive noise), 1 NFE per step."""
    for i in range(len(ts) - 1):
        t_cur, t_next = ts[i], ts[i + 1]
        dt = t_next - t_cur  # negative: reverse time
        # Euler step on the drift, then the Brownian increment.
        drift = sde.reverse_drift(x, t_cur, model(x, t_cur).score)
        x = x + drift * dt.to(x.dtype) + sde.g(t_cur).to(x.dtype) * (-dt).sqrt().to(x.dtype) * noise(x)
        callback(i, x)
    return x
