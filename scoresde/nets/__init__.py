"""Score networks ``net(x, c_noise, y=None) -> Tensor of x's shape``; they know nothing about SDEs.

``build_net(name, **kwargs)`` rebuilds a network from plain data (``net.config()``) through a
whitelist of names.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .embeddings import FourierEmbedding, LabelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "NETS", "build_net", "SinusoidalEmbedding", "FourierEmbedding", "LabelEmbedding"]

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Build the network ``name`` (one of :data:`NETS`) from its constructor keyword arguments."""
    if name not in NETS:
        raise ValueError(f"net={name!r} is not one of the accepted values: {', '.join(map(repr, NETS))}")
    params = inspect.signature(NETS[name].__init__).parameters
    accepted = [k for k in params if k != "self"]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"net {name!r} has no argument(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")
    missing = [k for k in accepted if params[k].default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"net {name!r} needs argument(s) {', '.join(map(repr, missing))}")
    return NETS[name](**kwargs)
