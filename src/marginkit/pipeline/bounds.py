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

__all__ = ["BoundsJob", "BoundsRun", "PresetModel", "preset_trainer", "run_bounds", "run_bounds_preset"]


@dataclass(frozen=True)
class BoundsJob:
    """Models, points and settings of a layer-wise bounds run.

    ``models``: (name, model reference) pairs, the reference a path / ``module:factory`` string or a
    :class:`~marginkit.pipeline.ModelRef`; every model is loaded and checked on the data as ``marginkit
    margins`` does (:func:`marginkit.models.validate_model_for_dataset`) before any work; ``demos``: demo-MLP training methods to train or reuse
    (``hidden`` x ``depth``), with ``demo_params`` = {method: {key: value}}; ``per_class`` training
    points per class of ``dataset`` / ``classes`` are the graph's vertices; ``eps``: the radius grid;
    ``layers``: None for the input and every layer up to the penultimate; ``box``: keep perturbed points
    in the data's box; ``neighbours``: partners per point for the ReLU descent (None: all pairs);
    ``settle=False`` also searches pairs a certified lower bound shows cannot change any graph on the grid.
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
    settle: bool = True

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
                            progress=progress, executor=executor, settle=job.settle,
                            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir))
    stats = pd.DataFrame(res.layers)
    settings = {**res.settings, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
                "classes": None if job.classes is None else list(job.classes), "seed": job.seed, "models": refs,
                "seconds": time.perf_counter() - t0, "versions": library_versions(), "layer_stats": res.layers}
    return BoundsRun(res.to_frame(), stats.drop(columns=["statuses"], errors="ignore"), settings, job.cross_entropy)


@dataclass(frozen=True)
class PresetModel:
    """A preset's feature extractor as trained (or reloaded): where it is cached and how it scores."""

    label: str
    path: str
    test_accuracy: float
    cached: bool
    seconds: float


def _recipe_key(recipe: Any, seed: int, data_fingerprint: str) -> str:
    import hashlib

    from ..results.jsonio import dumps

    text = dumps({**recipe.to_dict(), "seed": seed, "data": data_fingerprint}, indent=None, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def preset_trainer(ds: Dataset, cache_dir: str | os.PathLike, *, seed: int = 0, progress: bool = False,
                   record: list[PresetModel] | None = None):
    """``train(recipe) -> nn.Module`` for :func:`marginkit.bounds.presets.run_preset`: builds the recipe's
    extractor (:func:`~marginkit.bounds.presets.build_extractor`) and trains it with
    :func:`marginkit.training.train_model`. A trained model is cached in ``cache_dir`` under a key of the
    recipe, the seed and the data's fingerprint (a rerun reloads it); training keeps its state after every
    epoch under ``cache_dir/partial-KEY``, so an interrupted training resumes."""
    import io

    import torch

    from ..bounds.presets import build_extractor
    from ..models import load_torch_file
    from ..results.provenance import atomic_write_bytes
    from ..training import TrainConfig, get_method, train_model

    cache = os.fspath(cache_dir)

    def train(recipe: Any) -> nn.Module:
        t0 = time.perf_counter()
        key = _recipe_key(recipe, seed, ds.fingerprint())
        path = os.path.join(cache, f"{recipe.arch}-{recipe.label}-{key}.pt")
        model = build_extractor(recipe, ds.input_shape, ds.num_classes, seed)
        cached = os.path.exists(path)
        if cached:
            state = load_torch_file(path, what="cached preset model")
            model.load_state_dict(state["model"])
            acc = float(state["test_accuracy"])
        else:
            if progress:
                import sys

                print(f"training {recipe.label} ({recipe.arch}, {recipe.method}, {recipe.epochs} epochs)", file=sys.stderr)
            res = train_model(model, ds, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, seed=seed),
                              get_method(recipe.method, **dict(recipe.params)), progress=progress,
                              checkpoint_dir=os.path.join(cache, f"partial-{key}"))
            model, acc = res.model, float(res.test_accuracy)
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "test_accuracy": acc, "recipe": recipe.to_dict(), "seed": seed,
                        "dataset_fingerprint": ds.fingerprint()}, buf)
            os.makedirs(cache, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())
        if record is not None:
            record.append(PresetModel(recipe.label, path, acc, cached, time.perf_counter() - t0))
        return model.eval()

    return train


def run_bounds_preset(name: str, out: str | os.PathLike, *, quick: bool = False, settle: bool = True,
                      executor: Any | None = None, progress: bool = False, seed: int = 0,
                      neighbours: int | None = None, layers: tuple[str, ...] | None = None,
                      cache_dir: str | os.PathLike | None = None, resume: bool = True) -> BoundsRun:
    """One of the fixed-feature-extractor paper's experiments (:data:`marginkit.bounds.presets.PRESETS`)
    end to end: train the preset's extractors (cached in ``cache_dir``, default ``runs/models/bounds-presets``;
    see :func:`preset_trainer`), compute the layer-wise bounds on the preset's points (``quick``: fewer
    points) with every candidate pair searched (``neighbours=None``), resuming finished layers from
    ``out/checkpoints`` when ``resume``. Returns a :class:`BoundsRun` (write it with
    :func:`marginkit.report.bounds_plots.write_bounds_report`); its settings name the preset, the figure,
    the paper's claim, the models' test accuracies and whether each was reloaded."""
    from ..bounds.presets import get_preset, run_preset
    from ..training.demo import DEFAULT_CACHE

    t0 = time.perf_counter()
    preset = get_preset(name)
    ds = load_dataset(preset.dataset, classes=preset.classes, seed=seed)
    record: list[PresetModel] = []
    train = preset_trainer(ds, cache_dir if cache_dir is not None else os.path.join(DEFAULT_CACHE, "bounds-presets"),
                           seed=seed, progress=progress, record=record)
    out = os.fspath(out)
    res = run_preset(preset, out, train=train, quick=quick, neighbours=neighbours, seed=seed, progress=progress,
                     checkpoint_dir=os.path.join(out, "checkpoints") if resume else None, layers=layers, settle=settle,
                     executor=executor)
    settings = {**res.settings, "models": {m.label: {"checkpoint": m.path, "test_accuracy": m.test_accuracy,
                                                     "cached": m.cached, "seconds": m.seconds} for m in record},
                "settle": settle, "neighbours": neighbours, "seconds": time.perf_counter() - t0,
                "versions": library_versions()}
    stats = pd.DataFrame(res.layers).drop(columns=["statuses"], errors="ignore")
    return BoundsRun(res.to_frame(), stats, settings, True)
