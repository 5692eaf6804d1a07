"""Demo models on the built-in data: trained once, then reused from a checkpoint cache."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Any, Sequence

from torch import nn

from ..data import load_dataset
from ..models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..models.zoo import ModelSpec, build_model
from .methods import get_method
from .trainer import TrainConfig, train_model

__all__ = ["DEMO_PRESETS", "demo_model", "DEFAULT_CACHE"]

DEFAULT_CACHE = os.path.join("runs", "models")

# Architecture and optimisation presets per demo architecture (CPU-fast on mnist5k).
DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "linear": {"spec": {}, "train": {"epochs": 20, "lr": 5e-3}},
    "mlp": {"spec": {"hidden": 256, "depth": 2}, "train": {"epochs": 15, "lr": 1e-3}},
    "cnn": {"spec": {"channels": (16, 32), "hidden": 128}, "train": {"epochs": 10, "lr": 1e-3}},
}


def demo_model(
    arch: str = "mlp",
    dataset: str = "mnist5k",
    classes: Sequence[int | str] | None = None,
    method: str = "standard",
    method_params: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
    progress: bool = False,
    test_fraction: float | None = None,
    **overrides: Any,
) -> tuple[nn.Module, Checkpoint]:
    """Train (or reload from ``cache_dir``) a demo ``arch`` model on a built-in ``dataset``.

    ``overrides`` replace preset fields of :class:`ModelSpec` (``hidden``, ``depth``, ``channels``) or
    :class:`TrainConfig` (``epochs``, ``lr``, ...). The cache key hashes every setting, so a change
    trains a new model instead of reusing a stale one. ``cache_dir=None`` trains without caching.
    ``test_fraction`` splits an npz holding only x/y (see :func:`marginkit.data.load_dataset`).
    """
    if arch not in DEMO_PRESETS:
        raise ValueError(f"unknown demo architecture {arch!r}; choose one of {', '.join(DEMO_PRESETS)}")
    preset = DEMO_PRESETS[arch]
    spec_kw = {**preset["spec"], **{k: v for k, v in overrides.items() if k in ("hidden", "depth", "channels")}}
    train_kw = {**preset["train"], **{k: v for k, v in overrides.items() if k not in spec_kw}, "seed": seed}
    config = TrainConfig(**train_kw)
    ds = load_dataset(dataset, classes=classes, seed=seed, test_fraction=test_fraction)
    spec = ModelSpec(arch, ds.input_shape, ds.num_classes, **spec_kw)
    meth = get_method(method, **(method_params or {}))
    key_src = json.dumps({"spec": spec.to_dict(), "train": asdict(config), "method": method,
                          "method_params": method_params or {}, "data": ds.fingerprint()}, sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = os.path.join(os.fspath(cache_dir), f"{dataset}-{arch}-{method}-{key}.pt") if cache_dir is not None else None
    if path and os.path.exists(path):
        return load_checkpoint(path)
    model = build_model(spec, seed=seed)
    result = train_model(model, ds, config, meth, progress=progress)
    meta = {"dataset": ds.name, "dataset_fingerprint": ds.fingerprint(), "train": asdict(config),
            "method": method, "method_params": method_params or {}, "train_accuracy": result.train_accuracy,
            "test_accuracy": result.test_accuracy, "train_seconds": result.seconds, "history": result.history}
    if path:
        save_checkpoint(path, result.model, spec, meta)
        return load_checkpoint(path)
    return result.model, Checkpoint("", spec, meta)
