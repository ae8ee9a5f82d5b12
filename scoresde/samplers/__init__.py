"""Interchangeable samplers behind one front door, :func:`sample`.

``available()`` lists the registered names; ``register`` adds one (usable by name everywhere).
"""

# Importing each family registers its samplers.
from . import adaptive, exponential, karras, langevin, ode, pc  # noqa: F401
from .api import SampleResult, sample
from .registry import SAMPLERS, SamplerSpec, Traits, available, get, register, register_sampler, specs

__all__ = ["sample", "SampleResult", "available", "get", "register", "register_sampler", "specs", "SamplerSpec", "Traits",
           "SAMPLERS"]
