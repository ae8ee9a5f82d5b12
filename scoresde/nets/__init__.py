"""Score networks ``net(x, c_noise, y=None) -> Tensor of x's shape``; they know nothing about SDEs.

``build_net(name, **kwargs)`` rebuilds a network from plain data (``net.config()``) through a
whitelist of names.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Anything, Choice, Int, Maybe, Real, Registry
from .embeddings import ACTIVATIONS, EMBEDDINGS, FourierEmbedding, LabelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "NETS", "build_net", "register_net", "SinusoidalEmbedding", "FourierEmbedding",
           "LabelEmbedding"]

#: the networks by name: their constructor arguments are the options (a missing required one or an
#: unknown one is an error naming it); checkpoints store ``{"name": ..., "kwargs": net.config()}``.
#: The built-in nets' accepted values bound what drives the number of modules (depth, blocks,
#: resolution) so that even a forged checkpoint config is cheap to build on the meta device; the
#: sizes themselves are bounded by the weights file (scoresde.checkpoint compares them first).
NETS = Registry("net", error=ValueError)
_WIDTH, _CLASSES = Int(ge=1, le=1 << 16), Maybe(Int(ge=1, le=1 << 20))
_COMMON = {"num_classes": _CLASSES, "act": Choice(*ACTIVATIONS), "embedding": Choice(*EMBEDDINGS),
           "emb_scale": Real(gt=0), "dropout": Real(ge=0, lt=1)}
NETS.add("mlp", MLP, params={"dim": Int(ge=1), "hidden": _WIDTH, "depth": Int(ge=1, le=1024),
                             "emb_dim": Int(ge=2, le=1 << 16), **_COMMON})
NETS.add("unet", UNet, params={"in_channels": Int(ge=1, le=4096), "channels": Int(ge=1, le=1 << 14),
                               "channel_mult": Anything(types=(list, tuple)), "num_res_blocks": Int(ge=1, le=64),
                               "attn_resolutions": Anything(types=(list, tuple)), "resolution": Int(ge=1, le=1 << 14),
                               "num_heads": Int(ge=1, le=1024), **_COMMON})


def register_net(name: str, cls: type[nn.Module], *, overwrite: bool = False) -> type[nn.Module]:
    """Register a network class so that the trainer, checkpoints and ``build_net`` know it by ``name``.

    The class takes plain-data constructor arguments, is called as ``net(x, c_noise, **cond)``, and
    has ``config() -> dict`` returning those arguments (JSON data), so a checkpoint can rebuild it
    without executing stored code (the name must be registered in the loading process too).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_net needs an nn.Module subclass; got {cls!r}")
    if not callable(getattr(cls, "config", None)):
        raise TypeError(f"{cls.__name__} needs a config() method returning its constructor arguments (plain data)")
    NETS.add(name, cls, overwrite=overwrite)
    return cls


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Build the network ``name`` (one of :data:`NETS`) from its constructor keyword arguments."""
    return NETS.build(name, **kwargs)
