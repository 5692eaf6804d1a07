"""Named training presets: the min-vs-average margin paper's hyperparameters, and CPU-sized versions.

A preset is (method, method_params, train overrides, architecture, model-spec overrides). ``paper-*``
presets copy Appendix F of Wu & Yu: SGD (lr 0.01, momentum 0.9, Nesterov), batch 128, 200 epochs for
the MLP (one hidden layer of 1024 ReLUs) and CNN; AMR lambda = 0.1, beta = 1e-3, tau = 5 (MLP) / 10
(CNN); LCR beta = 1e-3; PGD-AT l2 eps = 2.0 with 40 steps of 0.01. The paper's MNIST CNN is the
Carlini-Wagner network (two 3x3 conv blocks of 32 and 64 channels, dense 200); the closest demo
architecture is used (one conv per block, see ``marginkit.models.ModelSpec``). ``cpu-*`` presets keep
every hyperparameter but the epoch count (and the smaller CNN), so the mnist5k comparison runs on a
laptop CPU in minutes (docs/dynamics.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Preset", "PRESETS", "get_preset", "train_preset"]


class Preset(NamedTuple):
    method: str
    method_params: dict[str, Any]
    train: dict[str, Any]
    arch: str
    spec: dict[str, Any]
    description: str = ""


_SGD = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "batch_size": 128}
_MLP = {"hidden": 1024, "depth": 1}
_CNN = {"channels": (32, 64), "hidden": 200}
_CNN_CPU = {"channels": (16, 32), "hidden": 128}
_AMR_MLP = {"lam": 0.1, "tau": 5.0, "beta": 1e-3}
_AMR_CNN = {"lam": 0.1, "tau": 10.0, "beta": 1e-3}
_LCR = {"beta": 1e-3}
_PGD_PAPER = {"norm": "l2", "eps": 2.0, "steps": 40, "step_size": 0.01}
_PGD_CPU = {"norm": "l2", "eps": 2.0, "steps": 10}

PRESETS: dict[str, Preset] = {
    "paper-mnist-mlp-std": Preset("standard", {}, {**_SGD, "epochs": 200}, "mlp", _MLP, "Table 1 MNIST MLP, Std"),
    "paper-mnist-mlp-lcr": Preset("lcr", _LCR, {**_SGD, "epochs": 200}, "mlp", _MLP, "Table 1 MNIST MLP, LCR"),
    "paper-mnist-mlp-amr": Preset("amr", _AMR_MLP, {**_SGD, "epochs": 200}, "mlp", _MLP, "Table 1 MNIST MLP, AMR"),
    "paper-mnist-cnn-std": Preset("standard", {}, {**_SGD, "epochs": 200}, "cnn", _CNN, "Table 1 MNIST CNN, Std"),
    "paper-mnist-cnn-lcr": Preset("lcr", _LCR, {**_SGD, "epochs": 200}, "cnn", _CNN, "Table 1 MNIST CNN, LCR"),
    "paper-mnist-cnn-amr": Preset("amr", _AMR_CNN, {**_SGD, "epochs": 200}, "cnn", _CNN, "Table 1 MNIST CNN, AMR"),
    "paper-mnist-mlp-pgd": Preset("pgd", _PGD_PAPER, {**_SGD, "epochs": 200}, "mlp", _MLP, "Table 2 'Adv' (PGD-AT)"),
    "cpu-mnist-mlp-std": Preset("standard", {}, {**_SGD, "epochs": 25}, "mlp", _MLP, "paper-mnist-mlp-std, 25 epochs"),
    "cpu-mnist-mlp-lcr": Preset("lcr", _LCR, {**_SGD, "epochs": 25}, "mlp", _MLP, "paper-mnist-mlp-lcr, 25 epochs"),
    "cpu-mnist-mlp-amr": Preset("amr", _AMR_MLP, {**_SGD, "epochs": 25}, "mlp", _MLP, "paper-mnist-mlp-amr, 25 epochs"),
    "cpu-mnist-cnn-std": Preset("standard", {}, {**_SGD, "epochs": 10}, "cnn", _CNN_CPU, "small CNN, 10 epochs"),
    "cpu-mnist-cnn-lcr": Preset("lcr", _LCR, {**_SGD, "epochs": 10}, "cnn", _CNN_CPU, "small CNN, 10 epochs"),
    "cpu-mnist-cnn-amr": Preset("amr", _AMR_CNN, {**_SGD, "epochs": 10}, "cnn", _CNN_CPU, "small CNN, 10 epochs"),
    "cpu-mnist-mlp-pgd": Preset("pgd", _PGD_CPU, {**_SGD, "epochs": 25}, "mlp", _MLP, "PGD-AT l2 eps 2, 10 steps"),
    "cpu-mnist-mlp-trades": Preset("trades", {"norm": "l2", "eps": 2.0, "beta": 6.0, "steps": 10},
                                   {**_SGD, "epochs": 25}, "mlp", _MLP, "TRADES l2 eps 2, 10 steps"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def train_preset(name: str, dataset: str = "mnist5k", *, seed: int = 0, callbacks=(), checkpoint_dir=None,
                 progress: bool = False, **overrides: Any):
    """Build the preset's model for ``dataset`` and train it; ``overrides`` replace TrainConfig fields.

    Returns ``(TrainResult, ModelSpec, Dataset)``.
    """
    from ..data import load_dataset
    from ..models.zoo import ModelSpec, build_model
    from .methods import get_method
    from .trainer import TrainConfig, train_model

    p = get_preset(name)
    ds = load_dataset(dataset, seed=seed)
    spec = ModelSpec(p.arch, ds.input_shape, ds.num_classes, **p.spec)
    config = TrainConfig(**{**p.train, **overrides, "seed": seed})
    model = build_model(spec, seed=seed)
    result = train_model(model, ds, config, get_method(p.method, **p.method_params), callbacks=callbacks,
                         checkpoint_dir=checkpoint_dir, progress=progress)
    result.settings["preset"] = name
    return result, spec, ds
