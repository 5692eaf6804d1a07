"""Layer-wise lower bounds on the robust loss of several models (fixed-feature-extractor paper,
section 4), assembled for :func:`marginkit.report.bounds_plots.write_bounds_report`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from ..checks import InputError
from ..data import Dataset, load_dataset
from ..models.validate import validate_model_for_dataset
from ..results import library_versions
from .specs import ModelRef, Options, _frozen_items, load_model_ref

__all__ = ["BoundsJob", "BoundsRun", "run_bounds"]


@dataclass(frozen=True)
class BoundsJob:
    """Models, points and settings of a layer-wise bounds run.

    ``models``: (name, model reference) pairs, the reference a path / ``module:factory`` string or a
    :class:`~marginkit.pipeline.ModelRef`; every model is loaded and checked on the data as ``marginkit
    margins`` does (:func:`marginkit.models.validate_model_for_dataset`) before any work; ``demos``: demo-MLP training methods to train or reuse
    (``hidden`` x ``depth``), with ``demo_params`` = {method: {key: value}}; ``per_class`` training
    points per class of ``dataset`` / ``classes`` are the graph's vertices; ``eps``: the radius grid;
    ``layers``: None for the input and every layer up to the penultimate; ``box``: keep perturbed points
    in the data's box; ``neighbours``: partners per point for the ReLU descent (None: all pairs).
    """

    models: tuple[tuple[str, str | ModelRef], ...] = ()
    demos: tuple[str, ...] = ()
    demo_params: Options = ()
    hidden: int = 64
    depth: int = 3
    dataset: str = "mnist5k"
    classes: tuple[str, ...] | None = ("3", "7")
    per_class: int = 200
    norm: str = "l2"
    eps: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)
    layers: tuple[str, ...] | None = None
    box: bool = False
    neighbours: int | None = 1
    max_pairs: int | None = None
    solver: str = "CLARABEL"
    cross_entropy: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple((str(n), r if isinstance(r, ModelRef) else str(r))
                                                 for n, r in self.models))
        object.__setattr__(self, "demos", tuple(self.demos))
        object.__setattr__(self, "demo_params", _frozen_items(self.demo_params, "demo_params"))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if not self.models and not self.demos:
            raise ValueError("give at least one model (--model NAME=REF) or demo training method (--demo METHOD)")
        if not self.eps:
            raise ValueError("eps: give at least one radius")


@dataclass
class BoundsRun:
    """``table``: one row per (model, layer, eps) with the 0-1 and cross-entropy bounds; ``layers``:
    collision-search statistics per (model, layer); ``settings``: everything needed to rerun it."""

    table: pd.DataFrame
    layers: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    cross_entropy: bool = True


def _models(job: BoundsJob, ds: Dataset) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Load (or train) every model of ``job`` and check it on the training split of ``ds`` the way
    :func:`marginkit.pipeline.run.prepare` does for margins: output and class count, input shape,
    determinism, differentiability. Errors name the model (one line, ``InputError``)."""
    models: dict[str, nn.Module] = {}
    refs: dict[str, Any] = {}
    for name, ref in job.models:
        mref = ref if isinstance(ref, ModelRef) else ModelRef(ref)
        model, info = load_model_ref(mref)
        _validate(name, model, ds, info.metadata.get("input_shape"), mref.allow_stochastic)
        models[name] = model
        refs[name] = mref.ref if mref == ModelRef(mref.ref) else {"ref": mref.ref, "weights": mref.weights,
                                                                  "random_init": mref.random_init,
                                                                  "logits_key": mref.logits_key}
    params = dict(_frozen_items(job.demo_params, "demo_params"))
    for method in job.demos:
        from ..training import demo_model

        mp = dict(params.get(method, {}))
        mdl, ck = demo_model("mlp", dataset=job.dataset, classes=job.classes, method=method, method_params=mp or None,
                             seed=job.seed, hidden=job.hidden, depth=job.depth)
        _validate(method, mdl, ds, None, False)
        models[method] = mdl
        refs[method] = {"checkpoint": ck.path, "test_accuracy": ck.metadata.get("test_accuracy"), "method_params": mp}
    for m in models.values():
        m.eval()
    return models, refs


def _validate(name: str, model: nn.Module, ds: Dataset, input_shape: Any, allow_stochastic: bool) -> None:
    model.eval()
    try:
        validate_model_for_dataset(model, ds, "train", expected_input_shape=input_shape,
                                   allow_stochastic=allow_stochastic)
    except InputError as exc:
        raise InputError(f"model {name!r}: {exc}") from exc


def _check_layers(models: dict[str, nn.Module], layers: tuple[str, ...] | None, input_shape: tuple[int, ...]) -> None:
    """Every requested layer exists and its prefix is one the collision search handles, before any search."""
    from ..bounds import analysis_layers, feature_chain

    for name, model in models.items():
        for layer in layers if layers else analysis_layers(model):
            try:
                feature_chain(model, layer, input_shape)
            except (ValueError, KeyError, IndexError) as exc:
                why = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                raise InputError(f"model {name!r}, layer {layer!r}: {why}") from exc


def run_bounds(job: BoundsJob, *, checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
               executor: Any | None = None) -> BoundsRun:
    """Lower bounds on the robust 0-1 / cross-entropy loss of any classifier trained on each layer of
    every model of ``job``. With ``checkpoint_dir`` finished layers are saved there and reused by a rerun;
    ``executor`` (:class:`marginkit.parallel.ExecutorConfig`) spreads the pair searches over workers."""
    from ..bounds import balanced_subset, compare_layerwise  # cone solvers load slowly: only when bounds run

    t0 = time.perf_counter()
    ds = load_dataset(job.dataset, classes=job.classes, seed=job.seed)
    models, refs = _models(job, ds)
    x, y = ds.split("train")
    _check_layers(models, job.layers, tuple(x.shape[1:]))
    idx = balanced_subset(y, job.per_class, job.seed)
    if progress:
        import sys

        print(f"{len(models)} model(s), {len(idx)} points, eps grid {list(job.eps)}", file=sys.stderr)
    res = compare_layerwise(models, x[idx], y[idx], job.norm, list(job.eps),
                            layers=list(job.layers) if job.layers else None,
                            bounds=ds.bounds if job.box else None, neighbours=job.neighbours or None,
                            max_pairs=job.max_pairs, cross_entropy=job.cross_entropy, solver=job.solver,
                            progress=progress, executor=executor,
                            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir))
    stats = pd.DataFrame(res.layers)
    settings = {**res.settings, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
                "classes": None if job.classes is None else list(job.classes), "seed": job.seed, "models": refs,
                "seconds": time.perf_counter() - t0, "versions": library_versions(), "layer_stats": res.layers}
    return BoundsRun(res.to_frame(), stats.drop(columns=["statuses"], errors="ignore"), settings, job.cross_entropy)
