"""Layer-wise lower bounds: the best robust loss any classifier on top of each layer can reach (section 4).

For a sequential network, the analysis walks the cut points input, first linear, first ReLU, ...,
penultimate layer; at each one it builds the pair budgets (reusing the previous layer's collisions as
upper bounds, so the curves are monotone from layer to layer up to solver tolerance) and evaluates the
0-1 and cross-entropy bounds on an eps grid. Several models (e.g. standard and adversarially trained) are
compared on the same points by :func:`compare_layerwise`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..checks import check_inputs, check_labels
from ..models.checkpoint import model_fingerprint
from ..norms import as_norm
from ..parallel import ray_session
from ..results.jsonio import dumps
from ..results.provenance import atomic_write_bytes
from .budgets import injective_tail, pair_budgets
from .extractors import analysis_layers, feature_chain
from .graph import PairBudgets, bound_curves

__all__ = ["LayerwiseResult", "layerwise_bounds", "compare_layerwise", "balanced_subset"]


@dataclass
class LayerwiseResult:
    """Per-layer, per-eps bounds as a table (``rows``: dicts with model, layer, depth, eps, zero_one,
    cross_entropy, edges) plus per-layer search statistics (``layers``) and the run settings."""

    rows: list[dict]
    layers: list[dict]
    settings: dict
    seconds: float
    budgets: dict[str, PairBudgets] = field(default_factory=dict, repr=False)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` points of every class, drawn without replacement from a seeded permutation
    (the vertex set of the conflict graph: the paper uses a fixed number of training points per class)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    g = torch.Generator().manual_seed(seed)
    labels = labels.detach().cpu()
    out = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).ravel()
        if len(idx) < per_class:
            raise ValueError(f"class {int(c)} has only {len(idx)} points, fewer than per_class={per_class}")
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(out)).values


def layerwise_bounds(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, norm: str = "l2",
                     eps_grid: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0), *,
                     layers: Sequence[str] | None = None, bounds: tuple[float, float] | None = None,
                     neighbours: int | None = 5, max_pairs: int | None = None, cross_entropy: bool = True,
                     solver: str = "CLARABEL", model_name: str = "model", progress: bool = False,
                     checkpoint_dir: str | None = None, settle: bool = True,
                     executor: Any | None = None) -> LayerwiseResult:
    """Lower bounds on the robust 0-1 and cross-entropy losses of any classifier built on each layer.

    ``inputs`` (N, ...) are the vertices (training points) with ``labels``; ``layers`` defaults to
    :func:`analysis_layers` (input, then every layer up to the penultimate). ``bounds=None`` follows the
    paper (perturbed points may leave the box); ``neighbours``/``max_pairs`` limit the ReLU descent (see
    :func:`pair_budgets`; ``settle=False`` searches pairs that a certified lower bound shows cannot change
    any graph on the grid too; ``executor``, a :class:`marginkit.parallel.ExecutorConfig`, spreads the
    descent's pairs over workers). With ``checkpoint_dir`` every layer's verified pair budgets are saved as
    soon as they are found, keyed on the model's weights, the points and every setting, so an interrupted
    run resumes at the first unfinished layer.
    """
    t0 = time.perf_counter()
    check_inputs(inputs)
    labels = check_labels(labels, inputs.shape[0])
    norm = as_norm(norm)
    eps_grid = sorted(float(e) for e in eps_grid)
    if not eps_grid or eps_grid[0] < 0 or not np.isfinite(eps_grid).all():
        raise ValueError("eps_grid must be a non-empty list of finite budgets >= 0")
    names = list(layers) if layers is not None else analysis_layers(model)
    if "input" in names and names[0] != "input":
        raise ValueError("'input' must come first in layers")
    input_shape = tuple(inputs.shape[1:])
    x = inputs.detach().cpu().to(torch.float64).reshape(len(inputs), -1).numpy()
    y = labels.detach().cpu().numpy()
    rows, stats, budgets = [], [], {}
    prior = None
    prev_chain, prev_name = None, None
    it = names
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(names, desc=f"layers ({model_name})")
    with ray_session(executor):  # one cluster for every layer (a caller's session is kept)
        for depth, name in enumerate(it):
            ckpt = None
            if checkpoint_dir is not None:
                key = _layer_key(model, x, y, name, depth, norm.value, eps_grid, bounds, neighbours, max_pairs, solver,
                                 "settled-direct" if settle else "direct")
                ckpt = os.path.join(checkpoint_dir, f"{model_name}-{depth:02d}-{name}-{key}.npz")
            pb = _load_budgets(ckpt) if ckpt and os.path.exists(ckpt) else None
            chain = feature_chain(model, name, input_shape)
            tail = injective_tail(chain)
            if pb is None and prior is not None and tail is not None and prev_chain is not None \
                    and len(tail.stages) == len(prev_chain.stages) and prev_chain.stages and prev_chain.stages[-1].relu:
                # an affine layer of full column rank after the previous layer adds no collision: same budgets
                info = {**prior.info, "layer": name, "method": "injective-reuse", "searched": 0, "programs": 0,
                        "seconds": 0.0, "reused_from": prev_name}
                for k in ("collisions_per_second", "search_seconds", "settled", "settled_first_relu", "improved",
                          "statuses"):
                    info.pop(k, None)
                pb = PairBudgets(prior.i, prior.j, prior.budget.copy(), prior.labels, info)
            if pb is None:
                pb = pair_budgets(chain, x, y, norm, eps_grid=eps_grid, bounds=bounds, prior=prior, neighbours=neighbours,
                                  max_pairs=max_pairs, solver=solver, progress=progress, settle=settle,
                                  executor=executor)
                if ckpt:
                    _save_budgets(ckpt, pb)
            t1 = time.perf_counter()
            curves = bound_curves(pb, eps_grid, cross_entropy=cross_entropy, solver=solver)
            for e, z, c, ne in zip(curves.eps, curves.zero_one, curves.cross_entropy, curves.edges):
                rows.append({"model": model_name, "layer": name, "depth": depth, "eps": float(e), "zero_one": float(z),
                             "cross_entropy": float(c), "edges": int(ne)})
            stats.append({"model": model_name, **{k: v for k, v in pb.info.items() if k != "layer"}, "layer": name,
                          "depth": depth, "bound_seconds": time.perf_counter() - t1})
            budgets[name] = pb
            prior, prev_chain, prev_name = pb, chain, name
    settings = {"norm": norm.value, "eps_grid": eps_grid, "bounds": bounds, "neighbours": neighbours,
                "max_pairs": max_pairs, "solver": solver, "settle": settle, "points": int(len(x)),
                "per_class": {int(c): int((y == c).sum()) for c in np.unique(y)}, "layers": names}
    return LayerwiseResult(rows, stats, settings, time.perf_counter() - t0, budgets)


def _layer_key(model: nn.Module, x: np.ndarray, y: np.ndarray, *settings: object) -> str:
    h = hashlib.sha256(model_fingerprint(model).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(json.dumps(settings, default=str).encode())
    return h.hexdigest()[:12]


def _save_budgets(path: str, pb: PairBudgets) -> None:
    buf = io.BytesIO()
    np.savez(buf, i=pb.i, j=pb.j, budget=pb.budget, labels=pb.labels,
             info=np.array(dumps(pb.info, indent=None)))
    atomic_write_bytes(path, buf.getvalue())


def _load_budgets(path: str) -> PairBudgets | None:
    """A layer saved by an earlier run, or None when the file is unreadable (then it is recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            info["resumed_from"] = os.path.basename(path)
            return PairBudgets(z["i"], z["j"], z["budget"], z["labels"], info)
    except (OSError, ValueError, KeyError):
        return None


def compare_layerwise(models: Mapping[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                      norm: str = "l2", eps_grid: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
                      **kwargs) -> LayerwiseResult:
    """:func:`layerwise_bounds` for several models (e.g. training methods) on the same points, one table."""
    t0 = time.perf_counter()
    rows, stats, budgets, settings = [], [], {}, {}
    with ray_session(kwargs.get("executor")):  # one cluster for every model and layer
        for name, model in models.items():
            res = layerwise_bounds(model, inputs, labels, norm, eps_grid, model_name=name, **kwargs)
            rows += res.rows
            stats += res.layers
            budgets.update({f"{name}/{k}": v for k, v in res.budgets.items()})
            settings = res.settings
    settings = {**settings, "models": list(models)}
    return LayerwiseResult(rows, stats, settings, time.perf_counter() - t0, budgets)
