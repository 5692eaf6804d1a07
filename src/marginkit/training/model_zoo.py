"""The reproduction zoo as data: which models to train (method, parameters, architecture, seed).

A :class:`ZooEntry` fixes every setting of one trained model; :meth:`ZooEntry.key` hashes them into the
cache key under which :func:`marginkit.pipeline.zoo.train_zoo` stores the model, so a changed setting
trains a new model and an unchanged one is never trained twice. :func:`zoo_entries` lists the zoo of
issue 19 at three scales: ``"tiny"`` (seconds, for tests), ``"quick"`` (minutes on a laptop CPU) and
``"full"`` (mnist5k, several seeds per method; hours on a CPU). The methods are the ones registered in
:mod:`marginkit.training.methods`: standard, PGD adversarial training (Madry et al. 2018) in l2 and linf,
TRADES (Zhang et al. 2019), AMR and LCR (Wu & Yu), and MMA (Ding et al. 2020), the input-margin
maximisation family of the consistency paper's weakly consistent models (DI0, XU80).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..models.zoo import ModelSpec
from .demo import DEMO_PRESETS
from .trainer import TrainConfig

__all__ = ["ZooEntry", "zoo_entries", "SCALES", "KEY_VERSION"]

SCALES = ("tiny", "quick", "full")
# Bumped when the meaning of a setting changes, so stale cached models are not reused.
KEY_VERSION = 1


def _items(value: Mapping[str, Any] | tuple[tuple[str, Any], ...] | None, what: str) -> tuple[tuple[str, Any], ...]:
    """Sorted (name, value) pairs with list values turned into tuples: hashable and order-free."""
    if value is None:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    out = []
    for k, v in pairs:
        if not isinstance(k, str):
            raise TypeError(f"{what} names must be strings, got {k!r}")
        out.append((k, tuple(v) if isinstance(v, list) else v))
    return tuple(sorted(out))


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    ``method``: a :mod:`marginkit.training.methods` registry name (standard | pgd | trades | amr | lcr |
    mma); ``params``: its parameters as sorted (name, value) pairs; ``arch``: a
    :mod:`marginkit.models.zoo` architecture; ``dataset``: a built-in dataset name; ``seed``: weight
    initialisation, batch order and the method's random draws; ``epochs``: training epochs; ``label``:
    display name (not part of the key). ``spec``: :class:`~marginkit.models.ModelSpec` fields over the
    demo preset of ``arch``; ``train``: :class:`~marginkit.training.TrainConfig` fields over it;
    ``data_seed``: the train/test split (fixed across seeds so that every model is evaluated on the same
    test points).
    """

    method: str
    params: tuple[tuple[str, Any], ...] = ()
    arch: str = "mlp"
    dataset: str = "mnist5k"
    seed: int = 0
    epochs: int = 10
    label: str = ""
    spec: tuple[tuple[str, Any], ...] = ()
    train: tuple[tuple[str, Any], ...] = ()
    data_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _items(self.params, "params"))
        object.__setattr__(self, "spec", _items(self.spec, "spec"))
        object.__setattr__(self, "train", _items(self.train, "train"))
        if self.arch not in DEMO_PRESETS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(DEMO_PRESETS)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        bad = {k for k, _ in self.train} & {"epochs", "seed"}
        if bad:
            raise ValueError(f"set {', '.join(sorted(bad))} with the entry's own fields, not in train")
        if not self.label:
            object.__setattr__(self, "label", self.default_label())

    @classmethod
    def from_preset(cls, name: str, *, seed: int = 0, epochs: int | None = None, dataset: str = "mnist5k",
                    data_seed: int = 0) -> "ZooEntry":
        """The model of training preset ``name`` (:mod:`marginkit.training.presets`: method, parameters,
        architecture and optimiser), optionally with fewer ``epochs``; labelled by the preset name."""
        from .presets import get_preset

        p = get_preset(name)
        train = {k: v for k, v in p.train.items() if k != "epochs"}
        n_epochs = int(p.train["epochs"]) if epochs is None else int(epochs)
        label = name if epochs is None else f"{name} ({n_epochs} ep)"
        return cls(p.method, tuple(p.method_params.items()), arch=p.arch, dataset=dataset, seed=seed, epochs=n_epochs,
                   label=label, spec=tuple(p.spec.items()), train=tuple(train.items()), data_seed=data_seed)

    def default_label(self) -> str:
        p = dict(self.params)
        bits = [f"{self.method}-{p['norm']}" if "norm" in p else self.method]
        for k in ("eps", "d_max", "beta", "lam"):
            if k in p:
                bits.append(f"{k}={p[k]:g}" if isinstance(p[k], (int, float)) else f"{k}={p[k]}")
        return " ".join(bits)

    def settings(self) -> dict[str, Any]:
        """Every setting that determines the trained model (what :meth:`key` hashes)."""
        return {"key_version": KEY_VERSION, "method": self.method, "params": dict(self.params), "arch": self.arch,
                "dataset": self.dataset, "seed": self.seed, "epochs": self.epochs, "spec": self.spec_kwargs(),
                "train": self.train_kwargs(), "data_seed": self.data_seed}

    def key(self) -> str:
        """Stable 16-hex-digit hash of :meth:`settings` (the label is left out): cache key and file stem."""
        blob = json.dumps(self.settings(), sort_keys=True, default=list)
        return f"{self.method}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def spec_kwargs(self) -> dict[str, Any]:
        """:class:`ModelSpec` keyword arguments: the demo preset of ``arch`` with ``spec`` over it."""
        out = {**DEMO_PRESETS[self.arch]["spec"], **dict(self.spec)}
        if "channels" in out:
            out["channels"] = list(out["channels"])
        return out

    def train_kwargs(self) -> dict[str, Any]:
        """:class:`TrainConfig` keyword arguments (epochs and seed from the entry)."""
        return {**DEMO_PRESETS[self.arch]["train"], **dict(self.train), "epochs": self.epochs, "seed": self.seed}

    def model_spec(self, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
        kw = self.spec_kwargs()
        if "channels" in kw:
            kw["channels"] = tuple(kw["channels"])
        return ModelSpec(self.arch, input_shape, num_classes, **kw)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train_kwargs())


# Method settings of the zoo, per dataset scale. mnist5k pixels lie in [0, 1] on 784 dimensions: the l2
# budgets follow the min-vs-average paper (eps 2 for PGD-AT) and the linf budget the usual MNIST 0.1-0.3.
def _methods(dataset: str, scale: str) -> list[tuple[str, dict[str, Any]]]:
    if dataset == "digits":  # 64 dimensions: typical l2 margins of a standard model are about 0.5-1
        l2, linf, dmaxes, linf_dmax = 0.5, 0.1, (0.5, 1.0, 2.0), 0.2
    else:
        l2, linf, dmaxes, linf_dmax = 1.0, 0.1, (1.0, 2.0, 4.0), 0.2
    steps = 5 if scale == "tiny" else 10
    out: list[tuple[str, dict[str, Any]]] = [
        ("standard", {}),
        ("pgd", {"norm": "l2", "eps": l2, "steps": steps}),
        ("pgd", {"norm": "linf", "eps": linf, "steps": steps}),
        ("trades", {"norm": "l2", "eps": l2, "beta": 6.0, "steps": steps}),
        ("amr", {"lam": 0.1, "tau": 5.0, "beta": 1e-3}),
        ("lcr", {"beta": 1e-3}),
    ]
    mma_steps = 3 if scale == "tiny" else 10
    out += [("mma", {"norm": "l2", "d_max": d, "steps": mma_steps}) for d in dmaxes]
    out.append(("mma", {"norm": "linf", "d_max": linf_dmax, "steps": mma_steps}))
    return out


def zoo_entries(scale: str) -> list[ZooEntry]:
    """The zoo of issue 19 at ``scale``.

    ``"tiny"``: digits, a 1-hidden-layer MLP of 32 units, 2 epochs of batch 256, seed 0, three methods
    (standard, l2 PGD, MMA): seconds on a CPU, for tests. ``"quick"``: digits, every method, 3 seeds, 15 epochs
    (minutes). ``"full"``: mnist5k, every method, 3 seeds, the demo MLP (2 x 256) for 15 epochs (hours on
    a CPU; each model is cached, so it can run over several sittings).
    """
    if scale == "tiny":
        keep = {"standard", "pgd-l2", "mma"}
        entries = []
        for method, params in _methods("digits", "tiny"):
            name = method if method != "pgd" else f"pgd-{params['norm']}"
            if name in keep:
                keep.discard(name)  # one MMA setting only
                entries.append(ZooEntry(method, tuple(params.items()), arch="mlp", dataset="digits", seed=0, epochs=2,
                                        spec=(("hidden", 32), ("depth", 1)), train=(("lr", 1e-2), ("batch_size", 256))))
        return entries
    if scale == "quick":
        return [ZooEntry(m, tuple(p.items()), arch="mlp", dataset="digits", seed=s, epochs=15,
                         spec=(("hidden", 64), ("depth", 1)), train=(("lr", 5e-3),))
                for m, p in _methods("digits", "quick") for s in (0, 1, 2)]
    if scale == "full":
        return [ZooEntry(m, tuple(p.items()), arch="mlp", dataset="mnist5k", seed=s, epochs=15)
                for m, p in _methods("mnist5k", "full") for s in (0, 1, 2)]
    raise ValueError(f"unknown zoo scale {scale!r}; choose one of {', '.join(SCALES)}")
