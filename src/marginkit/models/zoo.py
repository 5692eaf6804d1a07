"""Demo architectures: multinomial logistic regression, MLP, small CNN.

Every demo model is an ``nn.Sequential`` with named layers whose last module is the linear head
(named ``head``), so :func:`marginkit.models.split_head` finds the feature extractor h and the head
(W, b) of seed paper section 2.1 without any hook. Models take inputs in [0, 1] and return logits.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "ModelSpec", "build_model"]

ARCHITECTURES = ("linear", "mlp", "cnn")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a demo model: recorded in checkpoints so a path alone reloads it.

    ``hidden`` is the width of each hidden dense layer (``mlp``: all of them; ``cnn``: the dense layer
    after the convolutions); ``depth`` the number of hidden dense layers of an ``mlp``; ``channels``
    the output channels of each 3x3 convolution of a ``cnn`` (each followed by ReLU and 2x2 max-pooling).
    """

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: int = 256
    depth: int = 2
    channels: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.hidden < 1 or self.depth < 0:
            raise ValueError(f"hidden must be >= 1 and depth >= 0, got hidden={self.hidden}, depth={self.depth}")
        if self.arch == "cnn" and len(self.input_shape) != 3:
            raise ValueError(f"the cnn needs image inputs (C, H, W), got input shape {self.input_shape}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["channels"] = tuple(d.get("channels", (16, 32)))
        return cls(**d)


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Sequential:
    """Build the demo model described by ``spec`` (initialised from ``seed`` when given)."""
    if seed is not None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        n_in = math.prod(spec.input_shape)
        if spec.arch == "linear":
            layers["flatten"] = nn.Flatten()
            layers["head"] = nn.Linear(n_in, spec.num_classes)
        elif spec.arch == "mlp":
            layers["flatten"] = nn.Flatten()
            width = n_in
            for i in range(1, spec.depth + 1):
                layers[f"fc{i}"] = nn.Linear(width, spec.hidden)
                layers[f"relu{i}"] = nn.ReLU()
                width = spec.hidden
            layers["head"] = nn.Linear(width, spec.num_classes)
        else:  # cnn
            c, h, w = spec.input_shape
            for i, out in enumerate(spec.channels, start=1):
                layers[f"conv{i}"] = nn.Conv2d(c, out, kernel_size=3, padding=1)
                layers[f"relu_conv{i}"] = nn.ReLU()
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                c, h, w = out, h // 2, w // 2
                if h < 1 or w < 1:
                    raise ValueError(f"input shape {spec.input_shape} is too small for {len(spec.channels)} pooling stages")
            layers["flatten"] = nn.Flatten()
            layers["fc1"] = nn.Linear(c * h * w, spec.hidden)
            layers["relu1"] = nn.ReLU()
            layers["head"] = nn.Linear(spec.hidden, spec.num_classes)
        model = nn.Sequential(layers)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    model.eval()
    return model
