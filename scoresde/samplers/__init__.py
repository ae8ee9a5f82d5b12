"""Interchangeable samplers behind one front door, :func:`sample`.

``available()`` lists the registered names; ``register`` adds one (usable by name everywhere).
"""

from . import pc  # noqa: F401  (registers the samplers of each family)
from .api import SampleResult, sample
from .registry import SamplerSpec, available, get, register, register_sampler, specs

__all__ = ["sample", "SampleResult", "available", "get", "register", "register_sampler", "specs", "SamplerSpec"]
