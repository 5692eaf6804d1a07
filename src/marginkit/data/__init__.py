"""Datasets: built-in (no download), user files (npz, MNIST IDX, CIFAR pickles), class selection.

``load_dataset(spec)`` takes a built-in name (``mnist5k``, ``digits``, ``synthetic``) or a file spec
``npz:PATH``, ``idx:DIR``, ``cifar10:DIR``, ``cifar100:DIR`` (a bare path ending in ``.npz`` also works).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from .builtin import digits, mnist5k, synthetic
from .dataset import Dataset, fingerprint_tensors, select_classes, stratified_split
from ..checks import InputError
from .files import CIFAR10_FORMAT, CIFAR100_FORMAT, IDX_FORMAT, NPZ_FORMAT, load_cifar, load_idx, load_npz

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
    """Built-in dataset names and file specs, each with what it is or exactly what the files must hold
    (keys, shapes, value range, how train and test are made)."""
    out = {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in BUILTIN.items()}
    out.update({"npz:PATH": NPZ_FORMAT, "idx:DIR": IDX_FORMAT, "cifar10:DIR": CIFAR10_FORMAT,
                "cifar100:DIR": CIFAR100_FORMAT})
    return out


def load_dataset(spec: str, classes: Sequence[int | str] | None = None, seed: int = 0, *,
                 test_fraction: float | None = None, **kwargs: Any) -> Dataset:
    """Load a dataset by name or file spec and optionally keep only ``classes`` (relabelled 0..k-1).

    ``test_fraction``: for an npz holding only x/y, split off this fraction (stratified, ``seed``) as the
    test set; without it x/y is used whole. Built-ins use it instead of their default split; idx: and
    cifar: files come with their own split and refuse it. ``kwargs`` go to the loader (e.g.
    ``n``/``dim``/``num_classes`` for synthetic).
    """
    kind, sep, path = spec.partition(":")
    if not sep and spec.endswith(".npz"):
        kind, sep, path = "npz", ":", spec
    if kind in BUILTIN and not sep:
        if test_fraction is not None:
            kwargs["test_fraction"] = test_fraction
        ds = BUILTIN[kind](seed=seed, **kwargs)
    elif kind in _FILE_KINDS and sep:
        if not path:
            raise InputError(f"dataset spec {spec!r} needs a path after '{kind}:'")
        path = os.path.expanduser(path)
        if kind == "npz":
            ds = load_npz(path, seed=seed, test_fraction=test_fraction, **kwargs)
        elif test_fraction is not None:
            raise InputError(f"{spec}: {kind} files come with their own train/test split; drop test_fraction")
        elif kind == "idx":
            ds = load_idx(path, **kwargs)
        else:
            ds = load_cifar(path, variant=kind, **kwargs)
    elif os.path.exists(spec):
        raise InputError(f"dataset {spec!r}: say what kind of file it is, e.g. npz:{spec}, idx:{spec} or cifar10:{spec}")
    else:
        raise InputError(f"unknown dataset {spec!r}; use one of: {', '.join(list_datasets())}")
    return select_classes(ds, classes) if classes else ds
