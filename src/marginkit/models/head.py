"""Split a classifier into feature extractor h and linear head (W, b), and cut it at any layer.

Seed paper section 2.1 writes f^j(x) = w_j^T h(x) + b_j. Logit and feature margins, pseudo-margins,
the AMR regulariser and layer-wise bounds all need that split; this module is the one place it is made.

Models that are not ``nn.Sequential`` opt in with a hook: a method ``marginkit_split(self)`` returning
``(feature_extractor, head)`` where ``head`` is an ``nn.Linear`` and
``model(x) == head(feature_extractor(x).flatten(1))``, for example::

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU())
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.body(x))

        def marginkit_split(self):
            return self.body, self.head

A TorchScript file of an ``nn.Sequential`` ending in ``nn.Linear`` is split the same way.
:func:`head_split_or_reason` says in one sentence why a model has no split (other TorchScript or
``torch.export`` models, a last layer that is not linear, no hook) so that reports can show it;
:func:`marginkit.models.validate_model` checks a hook numerically.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HeadSplit", "feature_margin_unavailable", "head_split_or_reason", "split_head", "list_layers", "truncate"]


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


def head_split_or_reason(model: nn.Module) -> tuple[HeadSplit | None, str | None]:
    """``(split, None)`` when ``model`` has a linear head (see :func:`split_head`), else ``(None, reason)``
    with a one-sentence reason naming the fix, for reports that skip feature margins."""
    from .checkpoint import ExportedModel, SelectLogits  # here: checkpoint imports the model zoo

    name = type(model).__name__
    hook = getattr(model.model if isinstance(model, SelectLogits) else model, "marginkit_split", None)
    if callable(hook):
        try:
            features, head = hook()
        except Exception as exc:
            return None, f"{name}.marginkit_split() failed ({type(exc).__name__}: {exc})"
        if not isinstance(head, nn.Linear) or not isinstance(features, nn.Module):
            return None, (f"{name}.marginkit_split() must return (feature extractor module, nn.Linear head), got "
                          f"({type(features).__name__}, {type(head).__name__})")
        return HeadSplit(features, head), None
    if isinstance(model, nn.Sequential) and len(model) > 0:
        if isinstance(model[-1], nn.Linear):
            children = list(model.named_children())
            feats = nn.Sequential(OrderedDict(children[:-1])) if len(children) > 1 else nn.Sequential(nn.Identity())
            feats.train(model.training)
            return HeadSplit(feats, model[-1]), None
        return None, (f"the model is an nn.Sequential ending in {type(model[-1]).__name__}, not nn.Linear (a final "
                      "softmax? the model must return logits); end it with the linear head or add a marginkit_split() "
                      "method")
    if isinstance(model, torch.jit.ScriptModule):
        split = _scripted_sequential_split(model)
        if split is not None:
            return split, None
        return None, ("a TorchScript model other than a scripted nn.Sequential ending in nn.Linear is compiled as a "
                      "whole, so its linear head cannot be split off; load the original nn.Module with module:factory "
                      "and weights to get feature margins")
    if isinstance(model, ExportedModel):
        return None, ("a torch.export program is one compiled graph without layers to split; load the original "
                      "nn.Module with module:factory and weights to get feature margins")
    if isinstance(model, SelectLogits):
        return None, ("the model returns several outputs and has no marginkit_split() method naming the head of "
                      "the selected logits")
    return None, (f"{name} is not an nn.Sequential ending in nn.Linear and has no marginkit_split() method; add "
                  "def marginkit_split(self): return (feature_extractor, linear_head)")


def _scripted_sequential_split(model: torch.jit.ScriptModule) -> HeadSplit | None:
    """The split of a scripted or traced ``nn.Sequential`` whose last layer is an ``nn.Linear``: its compiled
    children before the head, and an ``nn.Linear`` sharing the head's weight and bias tensors."""
    children = list(model.named_children())
    if getattr(model, "original_name", "") != "Sequential" or not children:
        return None
    last = children[-1][1]
    if getattr(last, "original_name", "") != "Linear":
        return None
    weight = getattr(last, "weight", None)
    bias = getattr(last, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    head.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)  # shares the scripted tensor's storage
    if bias is not None:
        head.bias = nn.Parameter(bias, requires_grad=bias.requires_grad)
    features = nn.Sequential(OrderedDict(children[:-1])) if len(children) > 1 else nn.Sequential(nn.Identity())
    return HeadSplit(features, head)


def split_head(model: nn.Module) -> HeadSplit:
    """Return the feature extractor h and the final linear head of ``model``.

    ``nn.Sequential`` models whose last module is an ``nn.Linear`` are split automatically (h is
    everything before it, the identity for a linear model), also when scripted or traced to TorchScript. Other models implement
    ``marginkit_split()``; anything else raises a ``TypeError`` that says why and how to add the hook.
    """
    split, reason = head_split_or_reason(model)
    if split is None:
        raise TypeError(f"no linear head: {reason}")
    return split


def feature_margin_unavailable(model: nn.Module) -> str | None:
    """Why feature margins cannot be computed for ``model`` (one sentence), or None when they can."""
    return head_split_or_reason(model)[1]


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
