"""Shards: contiguous groups of sample indices, the unit of work, of retry and of resume."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["DEFAULT_MAX_SHARD", "Shard", "make_shards"]

# Largest shard that make_shards chooses by itself: small enough that a killed worker loses little work
# and a rerun resumes close to where a run stopped, large enough to fill the engine's batches.
DEFAULT_MAX_SHARD = 256
# Shards per worker that make_shards aims for, so that uneven shard costs even out between workers.
_SHARDS_PER_WORKER = 4


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``indices`` are positions of samples in the evaluated split.

    ``number`` is the shard's position in its list and ``of`` the length of that list (for messages).
    A task that needs more per-shard data subclasses this (keep it a frozen dataclass): the executors
    only read ``indices`` and replace it with the still-missing subset when a run resumes.
    """

    number: int
    indices: tuple[int, ...]
    of: int = 0

    def __post_init__(self) -> None:
        if not self.indices:
            raise ValueError(f"shard {self.number} has no samples")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def array(self) -> np.ndarray:
        """The indices as an int64 array (for indexing tensors)."""
        return np.asarray(self.indices, dtype=np.int64)

    @property
    def name(self) -> str:
        """``"shard 3/10 (samples 768..1023, 256 samples)"``: how errors and logs name this shard."""
        of = f"/{self.of}" if self.of else ""
        lo, hi = min(self.indices), max(self.indices)
        span = f"sample {lo}" if lo == hi else f"samples {lo}..{hi}"
        return f"shard {self.number}{of} ({span}, {len(self.indices)} sample{'s' if len(self.indices) != 1 else ''})"


def make_shards(indices: int | Sequence[int] | np.ndarray, *, shard_size: int | None = None, workers: int = 1) -> list[Shard]:
    """Split sample ``indices`` (or ``range(indices)`` for an int) into contiguous shards, in order.

    ``shard_size`` None: about four shards per worker, at most :data:`DEFAULT_MAX_SHARD` samples each.
    Shards depend only on the indices and the size, so a rerun with the same settings makes the same shards
    (resume does not need that: it works per sample, see :func:`marginkit.parallel.run_shards`).
    """
    idx = np.arange(indices, dtype=np.int64) if isinstance(indices, (int, np.integer)) else np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and int(idx.min()) < 0:
        raise ValueError(f"indices must be non-negative, got {int(idx.min())}")
    if np.unique(idx).size != idx.size:
        raise ValueError("indices repeat a sample: each sample must belong to exactly one shard")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if shard_size is None:
        shard_size = max(1, min(DEFAULT_MAX_SHARD, math.ceil(idx.size / (_SHARDS_PER_WORKER * workers))))
    elif shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    starts = range(0, idx.size, shard_size)
    n = len(starts)
    return [Shard(k, tuple(int(i) for i in idx[s : s + shard_size]), n) for k, s in enumerate(starts)]
