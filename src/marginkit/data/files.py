"""Loaders for user data: ``.npz`` arrays, MNIST IDX files, CIFAR-10/100 python pickles.

Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from typing import Any

import numpy as np
import torch

from .dataset import Dataset, stratified_split

__all__ = ["load_npz", "load_idx", "load_cifar", "read_idx", "to_unit_box"]


def to_unit_box(x: np.ndarray, where: str) -> np.ndarray:
    """Integer images (0..255) are scaled to [0, 1]; float inputs must already lie in [0, 1]."""
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{where}: integer inputs must lie in 0..255, found {x.min()}..{x.max()}")
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: inputs must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: inputs contain NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{where}: float inputs must lie in [0, 1], found [{x.min():.4g}, {x.max():.4g}]; "
                         "scale them first (integer 0..255 images are scaled automatically)")
    return x


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{where}: labels must be a 1-D array of length {n}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


def _names(*ys: np.ndarray) -> list[str]:
    k = int(max(int(y.max()) for y in ys if y.size)) + 1
    return [str(c) for c in range(k)]


def load_npz(path: str, seed: int = 0, test_fraction: float = 0.2, name: str | None = None) -> Dataset:
    """Arrays ``x`` and ``y`` (split deterministically) or ``x_train, y_train, x_test, y_test`` from a
    ``.npz`` file. Images keep their shape after the batch axis ((N, C, H, W) or (N, D))."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    label = name or os.path.splitext(os.path.basename(path))[0]
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        xtr = to_unit_box(arrays["x_train"], f"{path}[x_train]")
        xte = to_unit_box(arrays["x_test"], f"{path}[x_test]")
        ytr = _labels(arrays["y_train"], xtr.shape[0], f"{path}[y_train]")
        yte = _labels(arrays["y_test"], xte.shape[0], f"{path}[y_test]")
        if xtr.ndim < 2 or xtr.shape[1:] != xte.shape[1:]:
            raise ValueError(f"{path}: x_train {xtr.shape} and x_test {xte.shape} must be batches of the same shape")
        meta: dict[str, Any] = {"split": "file"}
    elif {"x", "y"} <= arrays.keys():
        x = to_unit_box(arrays["x"], f"{path}[x]")
        if x.ndim < 2:
            raise ValueError(f"{path}[x]: expected a batch (N, ...) of inputs, got shape {x.shape}")
        y = _labels(arrays["y"], x.shape[0], f"{path}[y]")
        tr, te = stratified_split(y, test_fraction, seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        meta = {"split": "stratified", "seed": seed, "test_fraction": test_fraction}
    else:
        raise ValueError(f"{path}: expected arrays 'x' and 'y' (or x_train, y_train, x_test, y_test); "
                         f"found {sorted(arrays)}")
    return Dataset(label, torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
                   _names(ytr, yte), source=os.path.abspath(path), meta=meta)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
                         f"{len(data) - header} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(directory: str, stems: tuple[str, ...]) -> str:
    for stem in stems:
        for suffix in ("", ".gz"):
            p = os.path.join(directory, stem + suffix)
            if os.path.exists(p):
                return p
    raise FileNotFoundError(f"{directory}: none of {', '.join(s + '[.gz]' for s in stems)} found")


def load_idx(directory: str, name: str = "mnist-idx") -> Dataset:
    """MNIST-format IDX files in ``directory``: train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally ``.gz``; ``-`` or ``.`` separators)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a directory of IDX files")

    def part(split: str, kind: str, ndim: int) -> np.ndarray:
        stems = (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte")
        return read_idx(_find(directory, stems))

    out = []
    for split in ("train", "t10k"):
        images, labels = part(split, "images", 3), part(split, "labels", 1)
        if images.ndim != 3:
            raise ValueError(f"{directory}: {split} images must be (N, H, W), got {images.shape}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{directory}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
        x = to_unit_box(images, f"{directory}/{split} images")[:, None]
        out += [torch.from_numpy(x.copy()), torch.from_numpy(_labels(labels, x.shape[0], f"{directory}/{split} labels"))]
    return Dataset(name, out[0], out[1], out[2], out[3], _names(out[1].numpy(), out[3].numpy()),
                   source=os.path.abspath(directory), meta={"split": "file"})


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in the CIFAR pickle, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_cifar(directory: str, variant: str = "cifar10") -> Dataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``, fine labels)
    python pickles in ``directory``; images become (3, 32, 32) in [0, 1]."""
    if variant not in ("cifar10", "cifar100"):
        raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a directory of CIFAR pickles")
    if variant == "cifar10":
        train_files = sorted(f for f in os.listdir(directory) if f.startswith("data_batch_"))
        if not train_files:
            raise FileNotFoundError(f"{directory}: no data_batch_* files (CIFAR-10 python version)")
        test_files, key, meta_file, names_key = ["test_batch"], "labels", "batches.meta", "label_names"
    else:
        train_files, test_files, key, meta_file, names_key = ["train"], ["test"], "fine_labels", "meta", "fine_label_names"

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            path = os.path.join(directory, f)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: missing CIFAR file")
            d = _unpickle(path)
            if "data" not in d or key not in d:
                raise ValueError(f"{path}: expected keys 'data' and '{key}', found {sorted(d)}")
            data = np.asarray(d["data"])
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
            xs.append(to_unit_box(data.astype(np.uint8), path).reshape(-1, 3, 32, 32))
            ys.append(_labels(np.asarray(d[key]), data.shape[0], path))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = read(train_files)
    xte, yte = read(test_files)
    names = _names(ytr.numpy(), yte.numpy())
    meta_path = os.path.join(directory, meta_file)
    if os.path.exists(meta_path):
        raw = _unpickle(meta_path).get(names_key)
        if raw is not None and len(raw) >= len(names):
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw][: max(len(names), len(raw))]
    return Dataset(variant, xtr, ytr, xte, yte, names, source=os.path.abspath(directory), meta={"split": "file"})
