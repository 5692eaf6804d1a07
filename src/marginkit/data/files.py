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

from ..checks import FileFormatError, InputError, one_line
from .dataset import Dataset, stratified_split

__all__ = ["NPZ_FORMAT", "IDX_FORMAT", "CIFAR10_FORMAT", "CIFAR100_FORMAT", "load_npz", "load_idx", "load_cifar",
           "read_idx", "to_unit_box"]


def to_unit_box(x: np.ndarray, where: str) -> np.ndarray:
    """Integer images (0..255) are scaled to [0, 1]; float inputs must already lie in [0, 1]."""
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InputError(f"{where}: integer inputs must lie in 0..255, found {x.min()}..{x.max()}")
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{where}: inputs must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{where}: inputs contain NaN or infinite values; remove or replace them")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise InputError(f"{where}: float inputs must lie in [0, 1], found [{x.min():.4g}, {x.max():.4g}]; "
                         "scale them first (integer 0..255 images are scaled automatically)")
    return x


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # a column vector of labels
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{where}: labels must be a 1-D array of length {n} (one per input), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise InputError(f"{where}: labels must be integers 0..K-1 (class indices), got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise InputError(f"{where}: labels must be >= 0 (class indices 0..K-1), found {y.min()}")
    return y.astype(np.int64)


def _names(*ys: np.ndarray) -> list[str]:
    k = int(max((int(y.max()) for y in ys if y.size), default=0)) + 1
    return [str(c) for c in range(k)]


def _inputs(x: np.ndarray, where: str) -> np.ndarray:
    x = to_unit_box(x, where)
    if x.ndim < 2:
        raise InputError(f"{where}: expected a batch (N, ...) of inputs, got shape {x.shape}; a single sample "
                         "needs its batch axis too, e.g. x[None]")
    return x


NPZ_FORMAT = (
    "NumPy .npz (np.savez) holding x (N, ...) inputs and y (N,) integer labels 0..K-1. x/y is used whole, as "
    "both train and test set, unless a split is asked for (test_fraction: stratified, seeded); with x_test and "
    "y_test as well, x/y is the train set and x_test/y_test the test set; x_train, y_train, x_test, y_test also "
    "work. Optional class_names (K,) strings. Inputs: floats in [0, 1] or integers 0..255 (divided by 255); "
    "the shape after the batch axis is kept, e.g. (N, 1, 28, 28) images or (N, D) vectors."
)


def load_npz(path: str, seed: int = 0, test_fraction: float | None = None, name: str | None = None) -> Dataset:
    """A user's arrays from a ``.npz`` file, used as given (see :data:`NPZ_FORMAT`).

    Keys: ``x, y`` (the whole set, used as both train and test split unless ``test_fraction`` asks for a
    stratified split with ``seed``), ``x, y, x_test, y_test`` or ``x_train, y_train, x_test, y_test``
    (train and test as given), and optionally ``class_names``. ``Dataset.meta["split"]`` records which.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"data file {path} is a folder; give the .npz file (folders are for idx: and cifar10:)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single .npy array, not an .npz archive of named arrays")
            arrays = {k: z[k] for k in z.files}
    except PermissionError as exc:
        raise PermissionError(f"data file {path}: permission denied") from exc
    except Exception as exc:
        raise FileFormatError(f"{path}: not a readable .npz file ({one_line(exc)}); write it with "
                              "np.savez(path, x=..., y=...)") from exc
    label = name or os.path.splitext(os.path.basename(path))[0]
    keys = set(arrays)
    meta: dict[str, Any]
    if {"x_train", "y_train", "x_test", "y_test"} <= keys or {"x", "y", "x_test", "y_test"} <= keys:
        tr = "x_train" if "x_train" in keys else "x"
        if tr == "x_train" and "x" in keys:
            raise InputError(f"{path}: holds both x and x_train; keep one of them as the train set")
        if test_fraction is not None:
            raise InputError(f"{path}: holds its own test set (x_test, y_test), so no split is made; drop "
                             "test_fraction (or remove x_test, y_test from the file)")
        ytr_key = "y_train" if tr == "x_train" else "y"
        xtr, xte = _inputs(arrays[tr], f"{path}[{tr}]"), _inputs(arrays["x_test"], f"{path}[x_test]")
        ytr = _labels(arrays[ytr_key], xtr.shape[0], f"{path}[{ytr_key}]")
        yte = _labels(arrays["y_test"], xte.shape[0], f"{path}[y_test]")
        if xtr.shape[1:] != xte.shape[1:]:
            raise InputError(f"{path}: {tr} inputs have shape {xtr.shape[1:]} but x_test inputs {xte.shape[1:]}; "
                             "both must have the same shape after the batch axis")
        meta = {"split": "given", "train_keys": [tr, ytr_key], "test_keys": ["x_test", "y_test"]}
    elif {"x", "y"} <= keys:
        unused = sorted(keys & {"x_test", "y_test", "x_train", "y_train"})
        if unused:
            raise InputError(f"{path}: has x, y and {', '.join(unused)}; a separate test set needs both x_test "
                             "and y_test")
        x = _inputs(arrays["x"], f"{path}[x]")
        y = _labels(arrays["y"], x.shape[0], f"{path}[y]")
        if test_fraction is None:
            xtr, ytr, xte, yte = x, y, x, y
            meta = {"split": "whole", "note": "no split: x/y is both the train and the test set"}
        else:
            itr, ite = stratified_split(y, test_fraction, seed)
            if len(itr) == 0 or len(ite) == 0:
                raise InputError(f"{path}: test_fraction={test_fraction} of {len(y)} samples leaves an empty "
                                 f"{'test' if len(ite) == 0 else 'train'} split; use the whole set (no "
                                 "test_fraction) or add samples")
            xtr, ytr, xte, yte = x[itr], y[itr], x[ite], y[ite]
            meta = {"split": "stratified", "seed": seed, "test_fraction": test_fraction}
    else:
        raise InputError(f"{path}: expected arrays x and y (optionally x_test, y_test), or x_train, y_train, x_test, "
                         f"y_test; found {', '.join(sorted(arrays)) or 'no arrays'}")
    names = _names(ytr, yte)
    if "class_names" in arrays:
        given = [str(n) for n in np.asarray(arrays["class_names"]).reshape(-1).tolist()]
        if len(given) < len(names) or len(set(given)) != len(given):
            raise InputError(f"{path}[class_names]: needs {len(names)} distinct names (labels go up to "
                             f"{len(names) - 1}), got {len(given)}: {given[:12]}")
        names = given
        meta["num_classes_known"] = True
    else:
        meta["num_classes_known"] = False  # K is the largest label + 1: the model may have more classes
    return Dataset(label, torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(np.ascontiguousarray(ytr)),
                   torch.from_numpy(np.ascontiguousarray(xte)), torch.from_numpy(np.ascontiguousarray(yte)),
                   names, source=os.path.abspath(path), meta=meta)


IDX_FORMAT = (
    "MNIST IDX files in DIR: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (each may end in .gz; '-idx' or '.idx' before the 3/1). Images (N, H, W) of "
    "0..255 become (N, 1, H, W) in [0, 1]; train and test as in the files."
)
CIFAR10_FORMAT = (
    "CIFAR-10 python pickles in DIR (the extracted cifar-10-batches-py): data_batch_1..5 and test_batch, each "
    "a dict with data (N, 3072) uint8 RGB rows and labels; batches.meta names the classes. Images become "
    "(N, 3, 32, 32) in [0, 1]; train and test as in the files."
)
CIFAR100_FORMAT = (
    "CIFAR-100 python pickles in DIR (the extracted cifar-100-python): train and test, each a dict with data "
    "(N, 3072) uint8 RGB rows and fine_labels (100 classes); meta names them. Images become (N, 3, 32, 32) "
    "in [0, 1]; train and test as in the files."
)

_IDX_TYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"IDX file {path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise FileFormatError(f"IDX file {path} cannot be read ({one_line(exc)}); a truncated download? fetch it "
                              "again") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise FileFormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}); MNIST IDX files start "
                              "with 0000 08 0n (gunzip a .gz file or keep its .gz name)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FileFormatError(f"{path}: truncated IDX header ({len(data)} bytes); fetch the file again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise FileFormatError(f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
                              f"{len(data) - header} bytes (truncated?); fetch it again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(directory: str, stems: tuple[str, ...]) -> str:
    for stem in stems:
        for suffix in ("", ".gz"):
            p = os.path.join(directory, stem + suffix)
            if os.path.exists(p):
                return p
    raise FileNotFoundError(f"IDX folder {directory}: none of {', '.join(s + '[.gz]' for s in stems)} found")


def load_idx(directory: str, name: str = "mnist-idx") -> Dataset:
    """MNIST-format IDX files in ``directory``: train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally ``.gz``; ``-`` or ``.`` separators)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a folder; idx:DIR needs the folder holding the four MNIST IDX files")

    def part(split: str, kind: str, ndim: int) -> np.ndarray:
        stems = (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte")
        return read_idx(_find(directory, stems))

    out = []
    for split in ("train", "t10k"):
        images, labels = part(split, "images", 3), part(split, "labels", 1)
        if images.ndim != 3:
            raise FileFormatError(f"{directory}: {split} images must be an idx3 file of shape (N, H, W), got {images.shape}")
        if labels.shape[0] != images.shape[0]:
            raise FileFormatError(f"{directory}: {split} images hold {images.shape[0]} images but {split} labels "
                                  f"{labels.shape[0]} labels; the two files do not belong together")
        x = to_unit_box(images, f"{directory}/{split} images")[:, None]
        out += [torch.from_numpy(x.copy()), torch.from_numpy(_labels(labels, x.shape[0], f"{directory}/{split} labels"))]
    return Dataset(name, out[0], out[1], out[2], out[3], _names(out[1].numpy(), out[3].numpy()),
                   source=os.path.abspath(directory), meta={"split": "file", "num_classes_known": False})


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise FileFormatError(f"{path}: not a readable CIFAR pickle ({one_line(exc)}); use the python version "
                              "(cifar-10-python.tar.gz, extracted)") from exc
    if not isinstance(obj, dict):
        raise FileFormatError(f"{path}: expected a dict in the CIFAR pickle, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_cifar(directory: str, variant: str = "cifar10") -> Dataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``, fine labels)
    python pickles in ``directory``; images become (3, 32, 32) in [0, 1]."""
    if variant not in ("cifar10", "cifar100"):
        raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a folder; {variant}:DIR needs the extracted folder of CIFAR "
                                "python pickles")
    if variant == "cifar10":
        train_files = sorted(f for f in os.listdir(directory) if f.startswith("data_batch_"))
        if not train_files:
            raise FileNotFoundError(f"{directory}: no data_batch_* files; {variant}:DIR needs the extracted CIFAR-10 "
                                    "python version (cifar-10-batches-py)")
        test_files, key, meta_file, names_key = ["test_batch"], "labels", "batches.meta", "label_names"
    else:
        train_files, test_files, key, meta_file, names_key = ["train"], ["test"], "fine_labels", "meta", "fine_label_names"

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            path = os.path.join(directory, f)
            if not os.path.exists(path):
                raise FileNotFoundError(f"CIFAR file {path}: no such file (a {variant} folder holds "
                                        f"{', '.join(train_files + test_files)})")
            d = _unpickle(path)
            if "data" not in d or key not in d:
                raise FileFormatError(f"{path}: expected keys 'data' and '{key}', found {sorted(d)}"
                                      + ("; is this CIFAR-10? use cifar10:DIR" if key == "fine_labels" else ""))
            data = np.asarray(d["data"])
            if data.ndim != 2 or data.shape[1] != 3072:
                raise FileFormatError(f"{path}: 'data' must have shape (N, 3072) (32x32 RGB rows), got {data.shape}")
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
    return Dataset(variant, xtr, ytr, xte, yte, names, source=os.path.abspath(directory),
                   meta={"split": "file", "num_classes_known": os.path.exists(meta_path)})
