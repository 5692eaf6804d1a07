"""Datasets: built-in (no download), user files (npz, MNIST IDX, CIFAR pickles), class selection.

``load_dataset(spec)`` takes a built-in name (``mnist5k``, ``digits``, ``synthetic``) or a file spec
``npz:PATH``, ``idx:DIR``, ``cifar10:DIR``, ``cifar100:DIR`` (a bare path ending in ``.npz`` also works).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from .builtin import digits, mnist5k, synthetic
from .dataset import Dataset, fingerprint_tensors, select_classes, stratified_split
from .files import load_cifar, load_idx, load_npz

__all__ = [
    "BUILTIN",
    "Dataset",
    "digits",
    "fingerprint_tensors",
    "list_datasets",
    "load_cifar",
    "load_dataset",
    "load_idx",
    "load_npz",
    "mnist5k",
    "select_classes",
    "stratified_split",
    "synthetic",
]

BUILTIN: dict[str, Callable[..., Dataset]] = {"mnist5k": mnist5k, "digits": digits, "synthetic": synthetic}
_FILE_KINDS = ("npz", "idx", "cifar10", "cifar100")


def list_datasets() -> dict[str, str]:
    """Built-in dataset names and file specs with a one-line description each."""
    out = {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in BUILTIN.items()}
    out.update({
        "npz:PATH": "user arrays: x (and y; optional x_test, y_test) in a .npz file",
        "idx:DIR": "MNIST IDX files (train/t10k images and labels, optionally .gz) in DIR",
        "cifar10:DIR": "CIFAR-10 python pickles (data_batch_1..5, test_batch) in DIR",
        "cifar100:DIR": "CIFAR-100 python pickles (train, test; fine labels) in DIR",
    })
    return out


def load_dataset(spec: str, classes: Sequence[int | str] | None = None, seed: int = 0, **kwargs: Any) -> Dataset:
    """Load a dataset by name or file spec and optionally keep only ``classes`` (relabelled 0..k-1).

    ``kwargs`` go to the loader (e.g. ``test_fraction``, or ``n``/``dim``/``num_classes`` for synthetic).
    """
    kind, sep, path = spec.partition(":")
    if not sep and spec.endswith(".npz"):
        kind, sep, path = "npz", ":", spec
    if kind in BUILTIN and not sep:
        ds = BUILTIN[kind](seed=seed, **kwargs)
    elif kind in _FILE_KINDS and sep:
        if not path:
            raise ValueError(f"dataset spec {spec!r} needs a path after '{kind}:'")
        path = os.path.expanduser(path)
        if kind == "npz":
            ds = load_npz(path, seed=seed, **kwargs)
        elif kind == "idx":
            ds = load_idx(path, **kwargs)
        else:
            ds = load_cifar(path, variant=kind, **kwargs)
    else:
        raise ValueError(f"unknown dataset {spec!r}; use one of: {', '.join(list_datasets())}")
    return select_classes(ds, classes) if classes else ds
