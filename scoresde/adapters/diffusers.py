"""diffusers: UNets trained on a discrete DDPM schedule, as scoresde models; scoresde models for diffusers' schedulers.

* :func:`from_diffusers` wraps ``unet(sample, timestep, **cond)`` (``UNet2DModel``,
  ``UNet2DConditionModel`` or anything with that call) on the :class:`DiscreteVPSDE` of the
  scheduler's ``alphas_cumprod``; the scheduler's ``prediction_type`` picks the parameterisation
  (``epsilon`` -> eps, ``sample`` -> x0, ``v_prediction`` -> v; diffusers' v is ``alpha eps - sigma x0``,
  scoresde's v on a VP SDE).
* :func:`to_diffusers` wraps a scoresde model as ``model(sample, timestep, **cond).sample`` in a
  scheduler's timesteps and prediction type, for diffusers' schedulers and pipelines.

Nothing here imports diffusers except :class:`DiffusersModel`, which returns diffusers' own
``UNet2DOutput`` when diffusers is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._utils import append_dims, check_choice
from ..discrete import DiscreteVPSDE
from ..model import ScoreModel, as_model
from ..sde import LinearSDE
from ._common import adapted, attr_or_item, check_callable, param_dtype

__all__ = ["from_diffusers", "to_diffusers", "sde_from_diffusers", "DiffusersModel", "TIMESTEP_INPUTS", "PREDICTION_TYPES"]

#: how the network receives the timestep of a time t that is not a table point (see from_diffusers)
TIMESTEP_INPUTS = ("continuous", "round", "exact")
#: diffusers' prediction_type -> scoresde parameterization
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_EXACT_TOL = 1e-3  # timesteps: t arrives in the sampling dtype; float32 t = k/999 gives k to 6e-5


def sde_from_diffusers(scheduler_or_config: Any, *, t_min: float = 0.0) -> DiscreteVPSDE:
    """The :class:`DiscreteVPSDE` of a diffusers scheduler (its own ``alphas_cumprod``, bit for bit) or config.

    A config (a dict, or ``scheduler.config``) is read for ``num_train_timesteps``, ``beta_schedule``,
    ``beta_start``, ``beta_end`` and ``trained_betas``, as diffusers' DDPM-family schedulers do, but
    the table is computed in float64 (diffusers: float32; the difference is float32 round-off).
    """
    if isinstance(scheduler_or_config, DiscreteVPSDE):
        return scheduler_or_config
    table = getattr(scheduler_or_config, "alphas_cumprod", None)
    if isinstance(table, Tensor):
        return DiscreteVPSDE(table, t_min=t_min)
    cfg = scheduler_or_config
    if not (isinstance(cfg, dict) or hasattr(cfg, "keys")):
        raise TypeError(
            "scheduler_or_config must be a diffusers scheduler with a discrete DDPM table (alphas_cumprod: "
            "DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler, "
            f"...), its config dict, or a DiscreteVPSDE; got {type(cfg).__name__} (for an EDM/sigma-space scheduler "
            "wrap the network with from_k_diffusion or from_edm)"
        )
    if attr_or_item(cfg, "rescale_betas_zero_snr", False):
        raise ValueError(
            "rescale_betas_zero_snr=True gives alphas_cumprod = 0 at the last timestep (lambda = -inf); pass the "
            "scheduler object instead (diffusers clips that entry to 2**-24)"
        )
    n = int(attr_or_item(cfg, "num_train_timesteps", 1000))
    trained = attr_or_item(cfg, "trained_betas", None)
    if trained is not None:
        return DiscreteVPSDE(betas=trained, t_min=t_min)
    return DiscreteVPSDE(
        beta_schedule=attr_or_item(cfg, "beta_schedule", "linear"),
        num_train_timesteps=n,
        beta_start=float(attr_or_item(cfg, "beta_start", 1e-4)),
        beta_end=float(attr_or_item(cfg, "beta_end", 0.02)),
        t_min=t_min,
    )


def _prediction_type(scheduler_or_config: Any, given: str | None) -> str:
    if given is None:
        cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
        given = attr_or_item(cfg, "prediction_type", "epsilon") if not isinstance(cfg, LinearSDE) else "epsilon"
    check_choice("prediction_type", given, PREDICTION_TYPES)
    return given


class _UNetCall:
    """``(x, t, **cond) -> unet(x, timestep(t), **cond)``: the time map of :func:`from_diffusers`."""

    def __init__(self, unet: Any, sde: DiscreteVPSDE, timesteps: str):
        self.unet, self.sde, self.timesteps = unet, sde, timesteps

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Any:
        u = self.sde.timestep(t)
        if self.timesteps == "continuous":
            k = u.to(torch.float32)  # fractional timesteps: diffusers' embeddings take float timesteps
        else:
            r = torch.round(u)
            if self.timesteps == "exact":
                off = (u - r).abs() > _EXACT_TOL
                if bool(off.any()):
                    i = int(torch.nonzero(off)[0])
                    raise ValueError(
                        f"from_diffusers(timesteps='exact'): the sampler evaluated the network at timestep "
                        f"{float(u[i]):.4f} (t={float(t[i]):.6g}), which is not a table point; run it on table points "
                        "(schedule=sde.grid(sde.timesteps(steps)) or sde.snap(grid)), or use timesteps='round' "
                        "or 'continuous'"
                    )
            k = r.clamp(0, self.sde.num_train_timesteps - 1).long()
        return self.unet(x.to(param_dtype(self.unet, x.dtype)), k, **cond)

    def __repr__(self) -> str:
        return f"{type(self.unet).__name__} (timesteps={self.timesteps!r})"


def from_diffusers(
    unet: Any,
    scheduler_or_config: Any,
    *,
    timesteps: str = "continuous",
    prediction_type: str | None = None,
    t_min: float = 0.0,
    check_finite: bool = True,
) -> ScoreModel:
    """A diffusers UNet as a scoresde model on the :class:`DiscreteVPSDE` of its scheduler.

    Args:
        unet: ``unet(sample, timestep, **cond)`` returning a tensor, a ``.sample`` output
            (``UNet2DOutput``) or a tuple; extra inputs of conditional UNets (``class_labels``,
            ``encoder_hidden_states``, ...) come from ``sample(..., cond={...})``.
        scheduler_or_config: the scheduler it was trained with (its ``alphas_cumprod`` is used as
            is), its config dict, or a :class:`DiscreteVPSDE`.
        timesteps: what the UNet gets at a time ``t`` between table points (``t (N-1)`` fractional):
            ``continuous`` (default) the fractional timestep as float32 (diffusers' sinusoidal and
            Fourier embeddings accept it); ``round`` the nearest integer timestep (for nets that take
            integers only; the net then sees a level up to half a table step away); ``exact``: only
            table points, anything else raises (use grids from ``sde.grid``/``sde.snap``). On grids of
            table points the three are the same. docs/byo-model.md measures the difference.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``; default the scheduler's.
        t_min: the SDE's smallest sampling time (default 0, timestep 0).

    Returns:
        a :class:`ScoreModel`; its SDE is ``model.sde``: ``sample(model, model.sde, shape, ...)``.
    """
    check_callable("unet", unet)
    check_choice("timesteps", timesteps, TIMESTEP_INPUTS)
    pt = _prediction_type(scheduler_or_config, prediction_type)
    sde = sde_from_diffusers(scheduler_or_config, t_min=t_min)
    return adapted(_UNetCall(unet, sde, timesteps), unet, sde, PREDICTION_TYPES[pt], check_finite=check_finite)


@dataclass
class _Output:
    """Stand-in for diffusers' ``UNet2DOutput`` when diffusers is not installed."""

    sample: Tensor


def _output_class():
    try:
        from diffusers.models.unets.unet_2d import UNet2DOutput
    except Exception:  # diffusers missing or moved: same attribute, our own class
        return _Output
    return UNet2DOutput


class DiffusersModel(nn.Module):
    """A scoresde model called like a diffusers UNet: ``forward(sample, timestep, **cond)``.

    ``sample`` is diffusers' VP state at the table level of ``timestep`` (integer or fractional,
    scalar or (B,)); the scoresde model is evaluated at the time of its SDE with the same log-SNR,
    on the state rescaled to that SDE (``x = sample alpha(t) / sqrt(abar)``), and the output is
    given in ``prediction_type``. Returns ``UNet2DOutput(sample=...)`` (``(out,)`` with
    ``return_dict=False``). ``dtype`` and ``device`` are those of the model's parameters (of
    ``sample`` for a parameter-free model); ``config`` carries ``in_channels`` / ``sample_size`` when
    given, which diffusers' pipelines read.
    """

    def __init__(self, model: ScoreModel, table: DiscreteVPSDE, prediction_type: str = "epsilon",
                 *, in_channels: int | None = None, sample_size: int | None = None):
        super().__init__()
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.model = model
        self.table = table
        self.prediction_type = prediction_type
        self.config = _Config(in_channels=in_channels, sample_size=sample_size)
        self._out = _output_class()

    @property
    def dtype(self) -> torch.dtype:
        return param_dtype(self.model, torch.float32)

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def forward(self, sample: Tensor, timestep: Any, return_dict: bool = True, **cond: Any):
        B = sample.shape[0]
        k = torch.as_tensor(timestep, device=sample.device).to(torch.float64)
        k = k.expand(B) if k.ndim == 0 else k.reshape(B)
        tau = self.table.t_from_timestep(k)
        lam = self.table.lam(tau)
        a_d, s_d = self.table.alpha(tau), self.table.sigma(tau)
        sde = self.model.sde
        t = sde.inverse_lambda(lam)
        x = sample * append_dims(sde.alpha(t) / a_d, sample.ndim).to(sample.dtype)
        pred = self.model(x, t, **cond)
        if self.prediction_type == "epsilon":
            out = pred.eps
        elif self.prediction_type == "sample":
            out = pred.x0
        else:  # diffusers' v = sqrt(abar) eps - sqrt(1 - abar) x0
            nd = sample.ndim
            out = append_dims(a_d, nd).to(sample.dtype) * pred.eps - append_dims(s_d, nd).to(sample.dtype) * pred.x0
        out = out.to(sample.dtype)
        return self._out(sample=out) if return_dict else (out,)


class _Config(dict):
    """Attribute-readable dict (diffusers pipelines read ``unet.config.in_channels``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def to_diffusers(
    model: Any,
    scheduler_or_config: Any,
    *,
    sde: LinearSDE | None = None,
    prediction_type: str | None = None,
    in_channels: int | None = None,
    sample_size: int | None = None,
) -> DiffusersModel:
    """A scoresde model (any linear SDE) as a diffusers-style UNet for ``scheduler_or_config``'s table.

    ``model`` is a :class:`ScoreModel` or a plain ``score_fn(x, t)`` with ``sde``. Its SDE must give
    ``inverse_lambda`` over the table's log-SNR range (every built-in SDE does). ``prediction_type``
    defaults to the scheduler's.
    """
    if not isinstance(model, ScoreModel):
        if sde is None:
            raise TypeError("to_diffusers: a plain score_fn needs sde=; or pass a ScoreModel")
        model = as_model(model, sde)
    pt = _prediction_type(scheduler_or_config, prediction_type)
    return DiffusersModel(model, sde_from_diffusers(scheduler_or_config), pt, in_channels=in_channels, sample_size=sample_size)
