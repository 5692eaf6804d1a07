"""How a run is executed: in-process or on Ray workers (a frozen configuration, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

__all__ = ["EXECUTORS", "ExecutorConfig", "executor_config"]

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    """Settings of :func:`marginkit.parallel.run_shards` and :func:`marginkit.parallel.run_many`.

    ``executor``: ``"local"`` (in this process, no Ray needed) or ``"ray"``; None picks ``"ray"`` when
    ``workers`` or ``ray_address`` is given, else ``"local"`` (what the CLI's ``--workers N`` and
    ``--ray-address ADDR`` map to).
    ``workers``: with no ``ray_address``, the number of tasks that run at once on a local Ray cluster
    started for the run (``num_cpus = workers * num_cpus``); with a ``ray_address``, a cap on the tasks in
    flight (None: as many as the cluster's resources hold).
    ``ray_address``: an existing cluster (``"auto"``, ``"HOST:6379"`` or ``"ray://HOST:10001"``).
    ``num_cpus``/``num_gpus``: Ray resources per task; ``num_gpus`` None asks for one GPU per task where
    the cluster has GPUs and none elsewhere (fractions share a GPU between tasks).
    ``threads``: torch intra-op threads in each Ray task (None: ``num_cpus``, at least 1), so that N
    tasks on N cores do not oversubscribe them. The local executor leaves the caller's setting alone.
    ``max_retries``: Ray re-runs a task whose worker process died (killed, out of memory, node lost) up to
    this many times; an exception raised by the task itself is not retried (it would fail again).
    ``runtime_env``: Ray runtime environment for the workers (e.g. ``{"pip": [...]}`` on a cluster whose
    nodes lack marginkit). ``progress``: one aggregated progress bar in the driver.
    A Ray already initialised in this process (``ray.init`` called by the caller) is used as it is and left
    running; one started by the executor is shut down when the run ends.
    """

    executor: str | None = None
    workers: int | None = None
    ray_address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float | None = None
    threads: int | None = None
    max_retries: int = 3
    runtime_env: Mapping[str, Any] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.executor is not None and self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS} (or None), got {self.executor!r}")
        if self.executor == "local" and (self.workers is not None or self.ray_address is not None):
            raise ValueError("workers and ray_address need executor='ray' (or executor=None); "
                             "the local executor runs in this process")
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) != self.workers or self.workers < 1):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise ValueError("ray_address is empty; pass None for a local cluster")
        if not self.num_cpus >= 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.num_gpus is not None and not self.num_gpus >= 0:
            raise ValueError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if isinstance(self.max_retries, bool) or int(self.max_retries) != self.max_retries or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")

    @property
    def backend(self) -> str:
        """The executor this configuration runs on: ``"local"`` or ``"ray"``."""
        if self.executor is not None:
            return self.executor
        return "ray" if self.workers is not None or self.ray_address is not None else "local"

    @property
    def task_threads(self) -> int:
        """torch threads per Ray task."""
        return self.threads if self.threads is not None else max(1, int(self.num_cpus))


def executor_config(config: ExecutorConfig | None = None, **overrides: Any) -> ExecutorConfig:
    """``config`` (default: in-process) with the given fields replaced; unknown names are an error."""
    base = config if config is not None else ExecutorConfig()
    known = {f.name for f in fields(ExecutorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown executor option(s) {unknown}; choose from {sorted(known)}")
    return replace(base, **overrides) if overrides else base
