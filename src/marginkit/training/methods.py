"""Training methods: a method turns a batch into the loss to minimise.

This module holds the registry and standard cross-entropy training; margin-aware and adversarial
methods register themselves here with :func:`register_method` so the trainer and the CLI find them
by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Method", "Standard", "register_method", "get_method", "available_methods"]


@runtime_checkable
class Method(Protocol):
    """What the trainer needs from a training method."""

    name: str

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss for the batch ``(x, y)``; the model is in train mode."""
        ...


def method_settings(method: Method) -> dict[str, Any]:
    """Hyperparameters of a method, for checkpoints and results sidecars."""
    if is_dataclass(method):
        return {"name": method.name, **asdict(method)}
    return {"name": method.name}


@dataclass
class Standard:
    """Plain cross-entropy training."""

    name: str = "standard"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)


_REGISTRY: dict[str, Callable[..., Method]] = {}


def register_method(name: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Decorator: make a method factory available by ``name`` to :func:`get_method` and the CLI."""

    def deco(factory: Callable[..., Method]) -> Callable[..., Method]:
        _REGISTRY[name] = factory
        return factory

    return deco


register_method("standard")(Standard)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str, **params: Any) -> Method:
    """Instantiate the method registered under ``name`` with ``params``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown training method {name!r}; available: {', '.join(available_methods())}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for training method {name!r}: {exc}") from exc
