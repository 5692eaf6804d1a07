"""The in-memory dataset every marginkit algorithm takes: train and test tensors with inputs in a box."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from ..checks import InputError

__all__ = ["Dataset", "select_classes", "stratified_split", "fingerprint_tensors"]


@dataclass
class Dataset:
    """A labelled dataset split into train and test.

    Inputs are float32 tensors of shape (N, *input_shape) with values in ``bounds`` (``(0, 1)`` for every
    built-in); labels are int64 in ``[0, num_classes)``. ``class_names[k]`` names label k in the
    original dataset (after :func:`select_classes` label 0 of a 3-vs-7 task is named ``"3"``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    bounds: tuple[float, float] = (0.0, 1.0)
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name}: {split} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if y.dim() != 1:
                raise ValueError(f"{self.name}: {split} labels must be 1-D, got shape {tuple(y.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train inputs {tuple(self.x_train.shape[1:])} and test inputs "
                             f"{tuple(self.x_test.shape[1:])} differ in shape")
        k = len(self.class_names)
        for split in ("train", "test"):
            y = getattr(self, f"y_{split}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"{self.name}: {split} labels must lie in [0, {k}), found [{int(y.min())}, {int(y.max())}]")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def split_description(self) -> str:
        """One line saying how train and test were made, for summaries."""
        kind = self.meta.get("split")
        n_tr, n_te = int(self.x_train.shape[0]), int(self.x_test.shape[0])
        if kind == "whole":
            return f"no split: the whole set ({n_te} samples) is both the train and the test set"
        if kind == "stratified":
            return (f"stratified split, test_fraction {self.meta.get('test_fraction')}, seed {self.meta.get('seed')}: "
                    f"{n_tr} train, {n_te} test")
        if kind == "given":
            keys = self.meta.get("train_keys", ["x_train", "y_train"])
            return f"as given: train = {'/'.join(keys)} ({n_tr}), test = x_test/y_test ({n_te})"
        if kind == "file":
            return f"as stored in the files: {n_tr} train, {n_te} test"
        return f"{n_tr} train, {n_te} test"

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"`` or ``"test"``."""
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of all tensors: identifies the exact data a result came from."""
        return fingerprint_tensors([self.x_train, self.y_train, self.x_test, self.y_test])

    def describe(self) -> dict:
        """Plain summary for ``marginkit data inspect`` and results sidecars."""
        def counts(y: torch.Tensor) -> dict[str, int]:
            return {self.class_names[k]: int(c) for k, c in enumerate(torch.bincount(y, minlength=self.num_classes))}

        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "train_size": int(self.x_train.shape[0]),
            "test_size": int(self.x_test.shape[0]),
            "split": self.split_description,
            "bounds": list(self.bounds),
            "train_counts": counts(self.y_train),
            "test_counts": counts(self.y_test),
            "fingerprint": self.fingerprint(),
        }


def fingerprint_tensors(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy()
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def select_classes(ds: Dataset, classes: Sequence[int | str]) -> Dataset:
    """Keep only ``classes`` (original labels or class names, e.g. ``(3, 7)``) and relabel them 0..k-1
    in the order given."""
    if len(classes) < 2:
        raise InputError(f"select at least 2 classes, got {list(classes)}")
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise InputError(f"classes must be distinct, got {list(classes)}")
    idx = []
    for n in names:
        if n not in ds.class_names:
            raise InputError(f"{ds.name} has no class {n!r}; its classes are {', '.join(ds.class_names)}")
        idx.append(ds.class_names.index(n))
    lut = torch.full((ds.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(idx)] = torch.arange(len(idx))

    def take(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = lut[y] >= 0
        return x[keep], lut[y[keep]]

    xtr, ytr = take(ds.x_train, ds.y_train)
    xte, yte = take(ds.x_test, ds.y_test)
    return replace(ds, name=f"{ds.name}[{','.join(names)}]", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
                   class_names=names, meta={**ds.meta, "classes": names})


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test indices in shuffled order, the same for the same labels and seed."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    # Shuffled (not sorted) so that the first k samples of a split are a representative, class-mixed subset.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
