"""The experiments of the fixed-feature-extractor paper (section 4, appendix E/F) as data.

Each :class:`BoundsPreset` names the figure it reproduces, the feature extractors (architecture, widths,
training method and its parameters), the layers analysed, the classes, the number of points per class and
the eps grid, plus a ``quick`` variant (fewer points) for a first look. The paper's setting: 2-class MNIST
(3 vs 7; here the offline ``mnist5k`` subset; the paper's second dataset, Fashion-MNIST, is not available
offline, so no preset uses it), l2 adversary, no box,
cross-entropy bounds in the main text and 0-1 bounds in appendix F.2 (both are computed in every run).

Architectures (appendix E): the FCNN "300 FC-ReLU-200 FC-ReLU-2 FC" and its 2x / 4x narrower versions
(:func:`build_extractor` builds them with the layer names fc1, relu1, fc2, relu2, head), and the 4-layer
CNN "20x5x5 conv-BN-ReLU-2x2 MaxPool-50x5x5 conv-BN-ReLU-2x2 MaxPool-500 FC-2 FC", analysed up to its
first linear layer (Fig. 11: the max pooling after relu1 is outside the collision search).

Training belongs to :mod:`marginkit.training`, a layer above this package, so :func:`run_preset` takes
the trained models from its caller (``train(recipe) -> nn.Module``); :class:`ModelRecipe` carries what the
caller needs (architecture, widths, method, method parameters, epochs).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["ModelRecipe", "BoundsPreset", "PRESETS", "DATA_NOTE", "get_preset", "build_extractor", "run_preset"]

DATA_NOTE = ("The paper runs every experiment on MNIST and on Fashion-MNIST; Fashion-MNIST is not available offline, "
             "so the presets cover the MNIST half only (mnist5k, 3 vs 7).")

FCNN_WIDTHS = (300, 200)


@dataclass(frozen=True)
class ModelRecipe:
    """One feature extractor to train: ``arch`` "fcnn" (``widths``) or "cnn4"; ``method`` a
    :mod:`marginkit.training` method name ("standard", "pgd", "trades") with ``params`` (l2, eps_train...)."""

    label: str
    arch: str = "fcnn"
    widths: tuple[int, ...] = FCNN_WIDTHS
    method: str = "standard"
    params: Mapping[str, object] = field(default_factory=dict)
    epochs: int = 20
    lr: float = 1e-3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["widths"] = list(self.widths)
        return d


def _pgd(eps: float) -> dict:
    return {"norm": "l2", "eps": eps, "steps": 10}


def _trades(eps: float) -> dict:
    return {"norm": "l2", "eps": eps, "beta": 6.0, "steps": 10}


@dataclass(frozen=True)
class BoundsPreset:
    """A paper experiment: models x layers x eps grid on ``per_class`` points of each class."""

    name: str
    figure: str
    models: tuple[ModelRecipe, ...]
    layers: tuple[str, ...]
    eps: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    classes: tuple[int, ...] = (3, 7)
    dataset: str = "mnist5k"
    per_class: int = 200
    quick_per_class: int = 25
    claim: str = ""

    def quick(self) -> "BoundsPreset":
        return replace(self, per_class=self.quick_per_class)


_EPS_TRAIN = (1.0, 2.0, 3.0)
_FC_ALL = ("input", "fc1", "relu1", "fc2", "relu2")
_METHODS = (ModelRecipe("standard"),) + tuple(ModelRecipe(f"pgd-{e:g}", method="pgd", params=_pgd(e)) for e in _EPS_TRAIN) \
    + (ModelRecipe("trades-2", method="trades", params=_trades(2.0)),)

PRESETS: dict[str, BoundsPreset] = {p.name: p for p in (
    BoundsPreset("fig2-first-linear", "Fig. 2 / Fig. 7 (0-1)", _METHODS, ("input", "fc1"),
                 claim="first linear layer: standard training least robust; robustness grows with eps_train with "
                       "diminishing returns; PGD and TRADES differ"),
    BoundsPreset("fig3-layers-standard", "Fig. 3 / Fig. 8 (0-1)", (ModelRecipe("standard"),), _FC_ALL,
                 claim="relu1 raises the bound markedly; fc2 adds little; relu2 adds a measurable amount"),
    BoundsPreset("fig4-layers-pgd", "Fig. 4 / Fig. 9 (0-1)", (ModelRecipe("pgd-2", method="pgd", params=_pgd(2.0)),),
                 _FC_ALL, claim="the same layer-wise pattern for PGD training at eps_train = 2"),
    BoundsPreset("fig5-relu2-methods", "Fig. 5 / Fig. 10 (0-1)", _METHODS, ("input", "fc1", "relu1", "fc2", "relu2"),
                 claim="PGD/TRADES gap of the first linear layer largely disappears by relu2; larger eps_train can "
                       "be less robust at eps < eps_train"),
    BoundsPreset("fig6-width", "Fig. 6", tuple(ModelRecipe(f"width-{w[0]}-{w[1]}", widths=w)
                                                for w in ((300, 200), (150, 100), (75, 50))), _FC_ALL,
                 claim="narrower extractors are less robust"),
    BoundsPreset("fig11-cnn-first-conv", "Fig. 11", (ModelRecipe("standard", arch="cnn4", epochs=10),
                                                    ModelRecipe("pgd-2", arch="cnn4", method="pgd", params=_pgd(2.0),
                                                                epochs=10)),
                 ("input", "conv1"), claim="the first convolution adds no loss (its features have more dimensions "
                                           "than the input)"),
    BoundsPreset("tiny-synthetic", "smoke test (not in the paper)",
                 (ModelRecipe("standard", widths=(6, 4), epochs=2, lr=1e-2),), _FC_ALL, eps=(0.05, 0.2, 0.5),
                 classes=(0, 1), dataset="synthetic", per_class=8, quick_per_class=5,
                 claim="none: checks the preset machinery in seconds"),
    BoundsPreset("mnist10-layers", "multiclass (degree-2 relaxation)", (ModelRecipe("standard"),), _FC_ALL,
                 classes=tuple(range(10)), per_class=40, quick_per_class=8,
                 claim="10 classes: pairwise conflicts only (see docs/bounds.md)"),
)}


def get_preset(name: str) -> BoundsPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown bounds preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def build_extractor(recipe: ModelRecipe, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """The untrained network of ``recipe`` (appendix E), with the layer names the analysis uses."""
    torch.manual_seed(seed)
    if recipe.arch == "fcnn":
        if not recipe.widths or min(recipe.widths) < 1:
            raise ValueError(f"fcnn widths must be positive, got {recipe.widths}")
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        n_in = int(np.prod(input_shape))
        for k, w in enumerate(recipe.widths, 1):
            layers += [(f"fc{k}", nn.Linear(n_in, w)), (f"relu{k}", nn.ReLU())]
            n_in = w
        layers.append(("head", nn.Linear(n_in, num_classes)))
        return nn.Sequential(OrderedDict(layers))
    if recipe.arch == "cnn4":
        if len(input_shape) != 3:
            raise ValueError(f"cnn4 needs image inputs (C, H, W), got {input_shape}")
        c, h, w = input_shape
        hh, ww = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if hh < 1 or ww < 1:
            raise ValueError(f"input {input_shape} is too small for two 5x5 convolutions with 2x2 pooling")
        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(c, 20, 5)), ("bn1", nn.BatchNorm2d(20)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(20, 50, 5)), ("bn2", nn.BatchNorm2d(50)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(50 * hh * ww, 500)), ("relu3", nn.ReLU()),
            ("head", nn.Linear(500, num_classes))]))
    raise ValueError(f"unknown preset architecture {recipe.arch!r}: use 'fcnn' or 'cnn4'")


def run_preset(name: str | BoundsPreset, out: str, *, train: Callable[[ModelRecipe], nn.Module],
               quick: bool = False, neighbours: int | None = None, seed: int = 0, progress: bool = False,
               checkpoint_dir: str | None = None, layers: tuple[str, ...] | None = None, settle: bool = True,
               executor: Any | None = None):
    """Run a paper experiment: train (through ``train``) every model of the preset, compute the layer-wise
    0-1 and cross-entropy bounds on the preset's points (``quick``: ``quick_per_class`` of them) and write
    ``bounds.csv``, ``layers.csv`` and ``settings.json`` under ``out``. ``neighbours=None`` searches every
    candidate pair; ``layers`` replaces the preset's layers (e.g. only the first linear layer); ``settle``
    and ``executor`` as in :func:`~marginkit.bounds.layerwise_bounds`. Returns the
    :class:`~marginkit.bounds.LayerwiseResult`, whose ``settings`` are the ones written."""
    from ..data import load_dataset
    from ..results.jsonio import write_json
    from .layerwise import balanced_subset, compare_layerwise

    preset = get_preset(name) if isinstance(name, str) else name
    if quick:
        preset = preset.quick()
    if layers is not None:
        preset = replace(preset, layers=tuple(layers))
    t0 = time.perf_counter()
    ds = load_dataset(preset.dataset, classes=preset.classes, seed=seed)
    models = {}
    for recipe in preset.models:
        model = train(recipe)
        model.eval()
        models[recipe.label] = model
    x, y = ds.split("train")
    idx = balanced_subset(y, preset.per_class, seed)
    res = compare_layerwise(models, x[idx], y[idx], "l2", preset.eps, layers=list(preset.layers),
                            neighbours=neighbours, progress=progress, checkpoint_dir=checkpoint_dir, settle=settle,
                            executor=executor)
    os.makedirs(out, exist_ok=True)
    import pandas as pd

    res.to_frame().to_csv(os.path.join(out, "bounds.csv"), index=False)
    pd.DataFrame(res.layers).drop(columns=["statuses"], errors="ignore").to_csv(os.path.join(out, "layers.csv"),
                                                                               index=False)
    settings = {**res.settings, "preset": preset.name, "figure": preset.figure, "claim": preset.claim, "quick": quick,
                "seed": seed, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
                "classes": list(preset.classes), "recipes": [r.to_dict() for r in preset.models],
                "seconds": time.perf_counter() - t0, "layer_stats": res.layers}
    res.settings = settings
    write_json(os.path.join(out, "settings.json"), settings)
    return res
