"""Split a classifier into feature extractor h and linear head (W, b), and cut it at any layer.

Seed paper section 2.1 writes f^j(x) = w_j^T h(x) + b_j. Logit and feature margins, pseudo-margins,
the AMR regulariser and layer-wise bounds all need that split; this module is the one place it is made.

Models that are not ``nn.Sequential`` opt in with a hook: a method ``marginkit_split(self)`` returning
``(feature_extractor, head)`` where ``head`` is an ``nn.Linear`` and
``model(x) == head(feature_extractor(x))``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HeadSplit", "split_head", "list_layers", "truncate"]


@dataclass
class HeadSplit:
    """A model seen as ``logits = features(x) @ weight.T + bias``."""

    features: nn.Module
    head: nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        """Head weights W of shape (classes, feature_dim); row j is w_j."""
        return self.head.weight

    @property
    def bias(self) -> torch.Tensor:
        """Head biases b of shape (classes,) (zeros when the head has none)."""
        if self.head.bias is None:
            return torch.zeros(self.head.out_features, dtype=self.head.weight.dtype, device=self.head.weight.device)
        return self.head.bias


def split_head(model: nn.Module) -> HeadSplit:
    """Return the feature extractor h and the final linear head of ``model``.

    ``nn.Sequential`` models whose last module is an ``nn.Linear`` are split automatically (h is
    everything before it, the identity for a linear model). Other models implement
    ``marginkit_split()``; anything else raises a ``TypeError`` that says how to add the hook.
    """
    hook = getattr(model, "marginkit_split", None)
    if callable(hook):
        features, head = hook()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"marginkit_split() must return (features, nn.Linear head), got head {type(head).__name__}")
        return HeadSplit(features, head)
    if isinstance(model, nn.Sequential) and len(model) > 0 and isinstance(model[-1], nn.Linear):
        children = list(model.named_children())
        features = nn.Sequential(OrderedDict(children[:-1])) if len(children) > 1 else nn.Sequential(nn.Identity())
        features.train(model.training)
        return HeadSplit(features, model[-1])
    raise TypeError(
        f"cannot find the linear head of a {type(model).__name__}: use an nn.Sequential ending in nn.Linear, "
        "or give the model a method marginkit_split(self) -> (feature_extractor, nn.Linear head)"
    )


def list_layers(model: nn.Module) -> list[str]:
    """Names of the top-level layers of a sequential model, in order (the valid cut points)."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"list_layers needs an nn.Sequential model, got {type(model).__name__}")
    return [name for name, _ in model.named_children()]


def truncate(model: nn.Module, layer: str | int) -> nn.Sequential:
    """The network up to and including ``layer`` (a name from :func:`list_layers` or an index; negative
    indices count from the end), as a feature extractor sharing the model's parameters."""
    names = list_layers(model)
    if isinstance(layer, int):
        if not -len(names) <= layer < len(names):
            raise IndexError(f"layer index {layer} out of range for a model with {len(names)} layers")
        idx = layer % len(names)
    else:
        if layer not in names:
            raise KeyError(f"no layer named {layer!r}; the model has: {', '.join(names)}")
        idx = names.index(layer)
    children = list(model.named_children())[: idx + 1]
    cut = nn.Sequential(OrderedDict(children))
    cut.train(model.training)
    return cut
