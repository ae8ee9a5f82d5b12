"""scoresde: score-based generative modelling in the SDE view (Song et al., 2021).

Public API (stable): the linear SDEs, the score-model wrapper, the exact models, the sampler
front door, guidance (``scoresde.guidance``), the PF-ODE likelihood, and the metrics module.
"""

from . import (
    features,  # noqa: F401  (registers the digits' Frechet distance 'fd' into metrics.METRICS)
    guidance,
    metrics,
    samplers,
)
from .discrete import DiscreteVPSDE
from .exact import ClassConditionalMixture, Gaussian, GaussianMixture
from .likelihood import LikelihoodResult, log_likelihood
from .model import NonFiniteError, Prediction, ScoreModel
from .samplers import SampleResult, sample
from .sde import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "DiscreteVPSDE",
    "ScoreModel",
    "Prediction",
    "NonFiniteError",
    "GaussianMixture",
    "Gaussian",
    "ClassConditionalMixture",
    "guidance",
    "sample",
    "SampleResult",
    "samplers",
    "log_likelihood",
    "LikelihoodResult",
    "metrics",
]
