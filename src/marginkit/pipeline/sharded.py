"""A margin job spread over shards: in this process or on Ray workers (:mod:`marginkit.parallel`).

Each shard task carries the job (references to the model and the data, no tensors); a worker loads the
model and data once (:func:`marginkit.parallel.worker_cached`), moves the model to its device and
computes the table rows of its samples. The driver writes every finished shard into the run's one
:class:`~marginkit.results.ResultsStore`, so a rerun skips finished samples and a retried shard adds
no duplicate rows.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pandas as pd
import torch
from torch import nn

from ..parallel import ExecutorConfig, Shard, make_shards, run_shards, worker_cached, worker_device
from ..results import ResultsStore
from .specs import DataRef, MarginJob, ModelRef, load_data_ref, load_model_ref
from .table import margin_table

__all__ = ["MarginShardTask", "run_sharded"]


def _load_model(ref: ModelRef) -> nn.Module:
    model, _ = load_model_ref(ref)
    return model.to(worker_device()).eval()


def _load_data(ref: DataRef) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    ds, x, y = load_data_ref(ref)
    return x, y, ds.bounds


@dataclass(frozen=True)
class MarginShardTask:
    """The rows of one shard of ``job`` (picklable: the job holds references, not tensors)."""

    job: MarginJob

    def __call__(self, shard: Shard) -> pd.DataFrame:
        model = worker_cached(_load_model, self.job.model)
        x, y, bounds = worker_cached(_load_data, self.job.data)
        idx = np.asarray(shard.indices, dtype=np.int64)
        device = next(model.parameters(), torch.empty(0)).device
        pos = torch.as_tensor(idx)
        return margin_table(model, x[pos].to(device), y[pos].to(device), self.job.norm,
                            input_margin=self.job.estimator, bounds=bounds, indices=idx,
                            attack_options=self.job.attack_kwargs() or None,
                            verify_options=self.job.verify_kwargs() or None)


def run_sharded(job: MarginJob, samples: int, store: ResultsStore, config: ExecutorConfig, *,
                shard_size: int | None = None, mode: str | None = None) -> pd.DataFrame:
    """Compute the table of ``job`` (``samples`` rows of its split) shard by shard with ``config`` into
    ``store`` and return the finalized table (resumable: finished samples are skipped).

    ``mode`` is the concrete estimator the workers resolve ``job.estimator`` to (``auto`` becomes
    ``exact`` or ``attack``); the finalized metadata records it, as the in-process table does."""
    shards = make_shards(samples, shard_size=shard_size, workers=max(1, config.workers or 1))
    run_shards(MarginShardTask(job), shards, store=store, config=config, desc=f"margins ({job.norm}, {job.estimator})")
    return store.finalize({"input_margin_mode": mode or job.estimator})
