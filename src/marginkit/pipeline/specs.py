"""What a run is made of, as frozen data: the model, the data and the margin job.

Specs only name things; :func:`load_model_ref` and :func:`load_data_ref` turn them into a model and
tensors. They are hashable and compare by value, so a spec can key a cache or travel to a worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import torch
from torch import nn

from ..data import Dataset, load_dataset
from ..models.checkpoint import Checkpoint, load_model
from ..margins.estimators import check_estimator
from ..norms import as_norm

__all__ = ["DataRef", "MarginJob", "ModelRef", "Options", "load_data_ref", "load_model_ref"]

SPLITS = ("train", "test")

OptionItems = tuple[tuple[str, Any], ...]
# Options are given as a mapping and kept as sorted (key, value) pairs.
Options = Union[Mapping[str, Any], OptionItems]


def _frozen_items(options: Options | None, what: str) -> OptionItems:
    """A mapping as sorted (key, value) pairs, so that the spec stays hashable."""
    if options is None:
        return ()
    if isinstance(options, tuple):
        return options
    if not isinstance(options, Mapping):
        raise TypeError(f"{what} must be a dict of options, got {type(options).__name__}")
    return tuple(sorted((str(k), v) for k, v in options.items()))


@dataclass(frozen=True)
class ModelRef:
    """A model by reference: a marginkit checkpoint, a TorchScript / torch.export file or
    ``package.module:factory`` (then ``weights`` is its state dict, or ``random_init=True`` uses its
    initial weights on purpose). ``logits_key`` picks the logits of a model returning a tuple, list or
    dict (index or key); ``allow_stochastic`` lets a model whose outputs differ between two forward
    passes of the same input through validation (see :func:`marginkit.models.load_model` and
    :func:`marginkit.models.validate_model`)."""

    ref: str
    weights: str | None = None
    random_init: bool = False
    logits_key: int | str | None = None
    allow_stochastic: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.ref, (str, os.PathLike)) or not os.fspath(self.ref):
            raise ValueError(f"model reference must be a non-empty path or module:factory, got {self.ref!r}")
        object.__setattr__(self, "ref", os.fspath(self.ref))
        if self.weights is not None:
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None and self.random_init:
            raise ValueError("give either weights or random_init=True (--weights or --random-init), not both")
        if self.logits_key is not None and not isinstance(self.logits_key, (int, str)):
            raise TypeError(f"logits_key must be an int index or a str key, got {type(self.logits_key).__name__}")


@dataclass(frozen=True)
class DataRef:
    """A set of inputs by reference: dataset ``name`` (built-in or file spec, see
    :func:`marginkit.data.load_dataset`), the ``classes`` kept (relabelled 0..k-1), the ``split``, the
    first ``limit`` samples of it, and the ``seed`` of the train/test split. ``test_fraction`` splits an
    npz that holds only x/y (stratified, ``seed``); without it such a file is used whole, as both splits."""

    name: str = "mnist5k"
    classes: tuple[str, ...] | None = None
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    test_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.test_fraction is not None and not 0.0 < float(self.test_fraction) < 1.0:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {self.test_fraction!r}")
        if self.classes is not None:
            cls = tuple(str(c) for c in self.classes)
            if len(cls) < 2:
                raise ValueError(f"classes: keep at least two classes, got {self.classes!r}")
            object.__setattr__(self, "classes", cls)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {' | '.join(SPLITS)}, got {self.split!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or int(self.limit) != self.limit or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}")


@dataclass(frozen=True)
class MarginJob:
    """One per-sample margin table: ``model`` on ``data``, input margins in ``norm`` by ``estimator``
    (the vocabulary of :mod:`marginkit.margins.estimators`). ``attack_options`` go to the attack
    engine, ``verify_options`` to the verify package (``certify`` / ``exact`` on networks); both are
    stored as sorted (key, value) pairs (pass dicts)."""

    model: ModelRef
    data: DataRef = DataRef()
    norm: str = "l2"
    estimator: str = "auto"
    attack_options: Options = field(default=())
    verify_options: Options = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelRef):
            raise TypeError(f"model must be a ModelRef, got {type(self.model).__name__}")
        if not isinstance(self.data, DataRef):
            raise TypeError(f"data must be a DataRef, got {type(self.data).__name__}")
        object.__setattr__(self, "norm", str(as_norm(self.norm)))
        object.__setattr__(self, "estimator", check_estimator(self.estimator))
        object.__setattr__(self, "attack_options", _frozen_items(self.attack_options, "attack_options"))
        object.__setattr__(self, "verify_options", _frozen_items(self.verify_options, "verify_options"))

    def attack_kwargs(self) -> dict[str, Any]:
        """``attack_options`` as keyword arguments of the attack engine."""
        return dict(_frozen_items(self.attack_options, "attack_options"))

    def verify_kwargs(self) -> dict[str, Any]:
        """``verify_options`` as keyword arguments of the verify package."""
        return dict(_frozen_items(self.verify_options, "verify_options"))


def load_model_ref(ref: ModelRef) -> tuple[nn.Module, Checkpoint]:
    """The model (in eval mode, on the CPU) and what its checkpoint records."""
    model, info = load_model(ref.ref, ref.weights, random_init=ref.random_init, logits_key=ref.logits_key)
    return model.eval(), info


def load_data_ref(ref: DataRef) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
    """The dataset and the (inputs, labels) of the referenced split, cut to ``limit``."""
    ds = load_dataset(ref.name, classes=ref.classes, seed=ref.seed, test_fraction=ref.test_fraction)
    x, y = ds.split(ref.split)
    if ref.limit is not None:
        x, y = x[: ref.limit], y[: ref.limit]
    return ds, x, y
