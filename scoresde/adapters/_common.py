"""Shared plumbing of the adapters."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..model import ScoreModel
from ..sde import LinearSDE


def adapted(call: Callable[..., Any], network: Any, sde: LinearSDE, parameterization: str, **kwargs: Any) -> ScoreModel:
    """A ScoreModel around the plain callable ``call`` that invokes ``network``.

    ``call`` is not an ``nn.Module``, so the ScoreModel hands it inputs in the sampling dtype (its
    time input keeps float32 or float64 precision even for a half-precision network); ``call``
    casts to the network's dtype itself. The network is registered as the submodule ``network``,
    so ``model.to(device)``, ``model.parameters()``, ``state_dict`` and sample()'s device default
    see it.
    """
    model = ScoreModel(call, sde, parameterization, **kwargs)
    if isinstance(network, nn.Module):
        model.add_module("network", network)
    return model


def param_dtype(network: Any, default: torch.dtype) -> torch.dtype:
    """The dtype of the network's first floating parameter (``default`` when it has none)."""
    if isinstance(network, nn.Module):
        for p in network.parameters():
            if p.is_floating_point():
                return p.dtype
    return default


def check_callable(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"{name} must be callable (an nn.Module or a function); got {type(obj).__name__}")


def attr_or_item(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` for mappings, else ``getattr(obj, key)``; ``default`` when missing or None."""
    if isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__")):
        try:
            v = obj[key]
        except KeyError:
            v = None
    else:
        v = getattr(obj, key, None)
    return default if v is None else v


def finite_positive(v: Any) -> bool:
    try:
        f = float(v.item() if isinstance(v, Tensor) else v)
    except (TypeError, ValueError):
        return False
    return f > 0 and f != float("inf")
