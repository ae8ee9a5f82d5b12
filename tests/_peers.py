"""Importing the optional peer libraries in tests: skipped where a peer is missing, required in CI.

scripts/setup.sh installs the peers (diffusers, torchsde, k-diffusion without its dependencies),
so CI (which runs with CI set in the environment) must run these tests: there a missing peer is
an error, not a skip.
"""

from __future__ import annotations

import importlib
import os

import pytest

IN_CI = bool(os.environ.get("CI"))


def require(module: str):
    """The peer module, or a skip (locally) / an ImportError (in CI) when it is not installed."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"peer {module!r} not installed (scripts/setup.sh installs it)")


def k_diffusion_sampling():
    """k-diffusion's sampling module through scoresde's loader (its package __init__ is not usable)."""
    require("torchsde")
    from scoresde.adapters import k_diffusion_sampling as load

    try:
        return load()
    except ImportError as err:
        if IN_CI:
            raise
        pytest.skip(f"k-diffusion not installed: {err}")
