"""Executors: shards of a per-sample computation in this process or on Ray workers, one resumable store.

``run_shards(task, make_shards(n), store=store)`` computes every shard in this process;
``workers=2`` runs them on a local Ray cluster of two workers, ``ray_address="auto"`` on an existing
cluster (Ray is an optional extra: ``pip install "marginkit[ray]"``). The driver writes every finished
shard into the :class:`~marginkit.results.ResultsStore`, so a rerun skips finished samples and a shard
whose worker died is retried without duplicating or losing rows. ``run_many`` runs one task per item
(a model of a zoo, a chunk of pairs) with the same executors. See docs/parallel.md.
"""

from .config import EXECUTORS, ExecutorConfig, executor_config
from .executor import RAY_EXTRA, RunReport, ShardFailedError, import_ray, ray_session, run_many, run_shards
from .shards import DEFAULT_MAX_SHARD, Shard, make_shards
from .worker import WorkerStats, clear_worker_cache, worker_cache_size, worker_cached, worker_device

__all__ = [
    "DEFAULT_MAX_SHARD",
    "EXECUTORS",
    "RAY_EXTRA",
    "ExecutorConfig",
    "RunReport",
    "Shard",
    "ShardFailedError",
    "WorkerStats",
    "clear_worker_cache",
    "executor_config",
    "import_ray",
    "make_shards",
    "ray_session",
    "run_many",
    "run_shards",
    "worker_cache_size",
    "worker_cached",
    "worker_device",
]
