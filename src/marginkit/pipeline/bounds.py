"""Layer-wise lower bounds on the robust loss of several models (fixed-feature-extractor paper,
section 4), assembled for :func:`marginkit.report.bounds_plots.write_bounds_report`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from ..data import load_dataset
from ..models.checkpoint import load_model
from ..results import library_versions
from .specs import Options, _frozen_items

__all__ = ["BoundsJob", "BoundsRun", "run_bounds"]


@dataclass(frozen=True)
class BoundsJob:
    """Models, points and settings of a layer-wise bounds run.

    ``models``: (name, model reference) pairs; ``demos``: demo-MLP training methods to train or reuse
    (``hidden`` x ``depth``), with ``demo_params`` = {method: {key: value}}; ``per_class`` training
    points per class of ``dataset`` / ``classes`` are the graph's vertices; ``eps``: the radius grid;
    ``layers``: None for the input and every layer up to the penultimate; ``box``: keep perturbed points
    in the data's box; ``neighbours``: partners per point for the ReLU descent (None: all pairs).
    """

    models: tuple[tuple[str, str], ...] = ()
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
        object.__setattr__(self, "models", tuple((str(n), str(r)) for n, r in self.models))
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


def _models(job: BoundsJob) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    models: dict[str, nn.Module] = {}
    refs: dict[str, Any] = {}
    for name, ref in job.models:
        models[name], _ = load_model(ref)
        refs[name] = ref
    params = dict(_frozen_items(job.demo_params, "demo_params"))
    for method in job.demos:
        from ..training import demo_model

        mp = dict(params.get(method, {}))
        mdl, ck = demo_model("mlp", dataset=job.dataset, classes=job.classes, method=method, method_params=mp or None,
                             seed=job.seed, hidden=job.hidden, depth=job.depth)
        models[method] = mdl
        refs[method] = {"checkpoint": ck.path, "test_accuracy": ck.metadata.get("test_accuracy"), "method_params": mp}
    for m in models.values():
        m.eval()
    return models, refs


def run_bounds(job: BoundsJob, *, checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
               executor: Any | None = None) -> BoundsRun:
    """Lower bounds on the robust 0-1 / cross-entropy loss of any classifier trained on each layer of
    every model of ``job``. With ``checkpoint_dir`` finished layers are saved there and reused by a rerun;
    ``executor`` (:class:`marginkit.parallel.ExecutorConfig`) spreads the pair searches over workers."""
    from ..bounds import balanced_subset, compare_layerwise  # cone solvers load slowly: only when bounds run

    t0 = time.perf_counter()
    ds = load_dataset(job.dataset, classes=job.classes, seed=job.seed)
    models, refs = _models(job)
    x, y = ds.split("train")
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
