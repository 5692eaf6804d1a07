"""Training runs behind ``marginkit train`` and ``marginkit dynamics``: a demo model trained and saved
as a checkpoint that reloads by path alone, and margins tracked during training (Wu & Yu, Figs. 1, 6, 7)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data import load_dataset
from ..models import ModelSpec, build_model
from ..models.checkpoint import save_checkpoint
from ..training import DEMO_PRESETS, TrainConfig, get_method, train_model
from ..training.dynamics import MarginTracker
from ..training.presets import get_preset, train_preset
from ..training.trainer import TrainResult
from .specs import Options, _frozen_items

__all__ = ["TrainJob", "TrackedTraining", "track_margins", "train_checkpoint"]


@dataclass(frozen=True)
class TrainJob:
    """A demo model to train: ``arch`` (linear | mlp | cnn) or a named ``preset`` (which fixes the
    architecture and the method), on ``dataset`` / ``classes``, with ``method`` and ``method_params``;
    ``epochs``, ``lr``, ``hidden``, ``depth`` override the preset when given. ``test_fraction`` splits an
    npz holding only x/y (without it such a file is used whole, and the test accuracy is on training data)."""

    dataset: str = "mnist5k"
    arch: str = "mlp"
    classes: tuple[str, ...] | None = None
    method: str = "standard"
    method_params: Options = ()
    epochs: int | None = None
    lr: float | None = None
    batch_size: int = 128
    hidden: int | None = None
    depth: int | None = None
    seed: int = 0
    preset: str | None = None
    test_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.test_fraction is not None and not 0.0 < float(self.test_fraction) < 1.0:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {self.test_fraction!r}")
        object.__setattr__(self, "method_params", _frozen_items(self.method_params, "method_params"))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


def train_checkpoint(job: TrainJob, out: str | os.PathLike | None = None, *,
                     checkpoint_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> tuple[TrainResult, str]:
    """Train the model of ``job`` and save it (spec, weights and metadata: data fingerprint, settings,
    accuracies, history) to ``out`` (default ``runs/models/<dataset>-<arch>-<method>.pt``).
    ``checkpoint_dir`` keeps the training state after every epoch, so rerunning resumes."""
    named = get_preset(job.preset) if job.preset else None
    arch, method = (named.arch, named.method) if named is not None else (job.arch, job.method)
    if arch not in DEMO_PRESETS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(DEMO_PRESETS)}")
    preset = DEMO_PRESETS[arch] if named is None else {"spec": named.spec, "train": named.train}
    ds = load_dataset(job.dataset, classes=job.classes, seed=job.seed, test_fraction=job.test_fraction)
    spec_kw = dict(preset["spec"])
    if job.hidden is not None:
        spec_kw["hidden"] = job.hidden
    if job.depth is not None:
        spec_kw["depth"] = job.depth
    spec = ModelSpec(arch, ds.input_shape, ds.num_classes, **spec_kw)
    train_kw = {**preset["train"], "batch_size": job.batch_size, "seed": job.seed}
    if job.epochs is not None:
        train_kw["epochs"] = job.epochs
    if job.lr is not None:
        train_kw["lr"] = job.lr
    config = TrainConfig(**train_kw)
    params = dict(_frozen_items(job.method_params, "method_params"))
    if named is not None:
        params = {**named.method_params, **params}
    meth = get_method(method, **params)
    model = build_model(spec, seed=job.seed)
    if progress:
        import sys

        print(f"training {arch} on {ds.name} ({ds.split_description}) with {method}", file=sys.stderr)
    result = train_model(model, ds, config, meth, progress=progress,
                         checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir))
    path = os.fspath(out) if out is not None else os.path.join("runs", "models", f"{ds.name}-{arch}-{method}.pt")
    save_checkpoint(path, result.model, spec, {
        "dataset": ds.name, "dataset_spec": job.dataset, "classes": ds.meta.get("classes"), "seed": job.seed,
        "dataset_fingerprint": ds.fingerprint(), "split": ds.split_description, "train": asdict(config), "method": method, "method_params": params,
        "preset": job.preset, "train_accuracy": result.train_accuracy, "test_accuracy": result.test_accuracy,
        "train_seconds": result.seconds, "history": result.history})
    return result, path


@dataclass
class TrackedTraining:
    """A preset trained with a :class:`MarginTracker`; ``settings`` is what ``dynamics.json`` records."""

    tracker: MarginTracker
    result: TrainResult
    settings: dict[str, Any] = field(default_factory=dict)


def track_margins(preset: str, dataset: str = "mnist5k", *, subset: int = 500, every: int = 1,
                  estimator: str = "paper", norm: str = "l2", radius: float = 5.0, samples: int = 64, seed: int = 0,
                  epochs: int | None = None, path: str | os.PathLike | None = None,
                  progress: bool = True) -> TrackedTraining:
    """Train ``preset`` and record min / average / median margins every ``every`` epochs on fixed random
    subsets of ``subset`` train and test points (the tracker's history is also saved to ``path``)."""
    ds = load_dataset(dataset, seed=seed)
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(ds.x_train.shape[0], generator=g)[:subset]
    te = torch.randperm(ds.x_test.shape[0], generator=g)[:subset]
    tracker = MarginTracker({"train": (ds.x_train[tr], ds.y_train[tr]), "test": (ds.x_test[te], ds.y_test[te])},
                            every=every, estimator=estimator, norm=norm, radius=radius, samples=samples, seed=seed,
                            path=path)
    over = {} if epochs is None else {"epochs": epochs}
    result, _, _ = train_preset(preset, dataset, seed=seed, callbacks=[tracker], progress=progress, **over)
    settings = {**tracker.settings(), "preset": preset, "dataset": dataset, "train": result.settings}
    return TrackedTraining(tracker, result, settings)
