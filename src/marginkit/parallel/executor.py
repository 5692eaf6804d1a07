"""Run shards of a per-sample computation in this process or on Ray workers, writing one resumable store.

The driver (this process) is the only writer of the :class:`~marginkit.results.ResultsStore`: workers
compute a shard's rows and return them; the driver writes each finished shard as one part. Samples are
never written twice (the store skips indices it holds) and a shard whose rows do not match its samples
is an error, so no row is duplicated or lost. A rerun with the same store skips finished samples.
"""

from __future__ import annotations

import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd

from ..results.table import ResultsStore
from .config import ExecutorConfig, executor_config
from .shards import Shard
from .worker import WorkerStats, call, execute

__all__ = ["RAY_EXTRA", "RunReport", "ShardFailedError", "import_ray", "ray_session", "run_many", "run_shards"]

RAY_EXTRA = 'pip install "marginkit[ray]"'

ShardTask = Callable[[Shard], pd.DataFrame]
R = TypeVar("R")


class ShardFailedError(RuntimeError):
    """A shard (or a task of :func:`run_many`) failed for good; ``name`` says which, ``cause`` why.

    Every shard that finished before is in the store, so a rerun resumes from there.
    """

    def __init__(self, name: str, reason: str, cause: BaseException | None = None, others: Sequence[str] = ()) -> None:
        self.name = name
        self.reason = reason
        self.cause = cause
        self.others = tuple(others)
        more = f" ({len(self.others)} more failed: {'; '.join(self.others)})" if self.others else ""
        super().__init__(f"{name} failed: {reason}{more}")


@dataclass(frozen=True)
class RunReport:
    """What :func:`run_shards` did. ``seconds``: wall time of the work; ``startup_seconds``: time spent
    starting or connecting to Ray (0 for the local executor or a Ray already running in this process)."""

    executor: str
    shards: int
    skipped: int
    ran: int
    samples: int
    samples_written: int
    seconds: float
    startup_seconds: float
    stats: tuple[WorkerStats, ...] = field(default_factory=tuple)

    @property
    def workers(self) -> dict[str, float]:
        """Peak resident memory (MiB) of each worker process that ran a shard, by ``host:pid``."""
        out: dict[str, float] = {}
        for s in self.stats:
            out[s.worker] = max(out.get(s.worker, float("-inf")), s.peak_rss_mib)
        return out


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that names the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"the Ray executor needs Ray, an optional extra of marginkit: {RAY_EXTRA} "
                          f'(in a checkout: pip install -e ".[ray]")') from exc
    return ray


@dataclass(frozen=True)
class _Job:
    key: int
    name: str
    fn: Callable[..., Any]
    arg: Any
    units: int


# --------------------------------------------------------------------------------------------------- backends

_Failure = tuple[_Job, str, "BaseException | None"]
_OnDone = Callable[[_Job, Any, WorkerStats], None]


class _Backend:
    name = "local"
    startup_seconds = 0.0

    def run(self, jobs: Sequence[_Job], config: ExecutorConfig, on_done: _OnDone) -> list[_Failure]:
        """Run ``jobs``, call ``on_done`` for each success; return the failures (job, reason, exception)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Local(_Backend):
    def run(self, jobs: Sequence[_Job], config: ExecutorConfig, on_done: _OnDone) -> list[_Failure]:
        for job in jobs:
            try:
                out, stats = execute(job.fn, job.arg)
            except Exception as exc:  # noqa: BLE001 - reported as the shard's failure, with the exception chained
                return [(job, f"raised {type(exc).__name__}: {exc}", exc)]
            try:
                on_done(job, out, stats)
            except ValueError as exc:
                return [(job, str(exc), exc)]
        return []


class _Ray(_Backend):
    name = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        self.ray = import_ray()
        self.started = False
        self.startup_seconds = 0.0
        if not self.ray.is_initialized():
            t0 = time.perf_counter()
            kw: dict[str, Any] = {"include_dashboard": False}
            env = dict(config.runtime_env or {})
            if config.ray_address is not None:
                kw["address"] = config.ray_address
            else:
                if config.workers is not None:
                    kw["num_cpus"] = max(1, int(np.ceil(config.workers * max(config.num_cpus, 1e-9))))
                # A local cluster's workers import the same marginkit as this process (a source checkout too).
                env_vars = dict(env.get("env_vars", {}))
                here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                path = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
                env_vars.setdefault("PYTHONPATH", os.pathsep.join(path))
                env["env_vars"] = env_vars
            if env:
                kw["runtime_env"] = env
            self.ray.init(**kw)
            self.started = True
            self.startup_seconds = time.perf_counter() - t0
        resources = self.ray.cluster_resources()
        gpus = float(resources.get("GPU", 0.0))
        self.num_gpus = (1.0 if gpus > 0 else 0.0) if config.num_gpus is None else float(config.num_gpus)
        if self.num_gpus > gpus:
            self.close()
            raise ValueError(f"each task asks for {self.num_gpus:g} GPU(s) but the Ray cluster has {gpus:g}; "
                             "pass num_gpus=0 to run on CPUs")
        slots = float(resources.get("CPU", 1.0)) / config.num_cpus if config.num_cpus > 0 else float("inf")
        if self.num_gpus > 0:
            slots = min(slots, gpus / self.num_gpus)
        if config.workers is not None:
            slots = min(slots, config.workers)
        slots = max(1, int(slots)) if np.isfinite(slots) else 64
        # On a cluster given by address, `workers` caps the tasks in flight; otherwise keep every slot busy
        # while the driver writes a finished shard.
        self.window = slots if config.ray_address is not None and config.workers is not None else 2 * slots
        self.remote = self.ray.remote(execute)

    def run(self, jobs: Sequence[_Job], config: ExecutorConfig, on_done: _OnDone) -> list[_Failure]:
        ray = self.ray
        options = {"num_cpus": config.num_cpus, "num_gpus": self.num_gpus, "max_retries": config.max_retries,
                   "retry_exceptions": False}
        shared: dict[int, Any] = {}  # one object-store copy per distinct task object (run_shards: one task)
        queue = deque(jobs)
        inflight: dict[Any, _Job] = {}
        failures: list[_Failure] = []
        try:
            while queue or inflight:
                while queue and not failures and len(inflight) < self.window:
                    job = queue.popleft()
                    try:
                        if id(job.fn) not in shared:
                            shared[id(job.fn)] = ray.put(job.fn)
                        ref = self.remote.options(name=job.name[:80], **options).remote(
                            shared[id(job.fn)], job.arg, config.task_threads)
                    except (TypeError, AttributeError, ValueError) as exc:  # pickling errors of cloudpickle
                        raise TypeError(f"{job.name}: the task cannot be shipped to Ray workers; it must be picklable "
                                        f"(a module-level function, or a frozen dataclass of an importable module): {exc}") from exc
                    inflight[ref] = job
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    job = inflight.pop(ref)
                    try:
                        out, stats = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None) or exc
                        failures.append((job, f"raised {type(cause).__name__}: {cause}", cause))
                        continue
                    except ray.exceptions.RayError as exc:
                        failures.append((job, f"its worker was lost {config.max_retries + 1} time(s) "
                                              f"(max_retries={config.max_retries}): {type(exc).__name__}: {exc}", exc))
                        continue
                    try:
                        on_done(job, out, stats)
                    except ValueError as exc:
                        failures.append((job, str(exc), exc))
        finally:
            for ref in inflight:  # interrupted (Ctrl-C, a driver error): stop the work nobody will collect
                ray.cancel(ref, force=True)
        return failures

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


@contextmanager
def ray_session(config: ExecutorConfig | None) -> Iterator[None]:
    """Keep one local Ray cluster up for several :func:`run_many` / :func:`run_shards` calls (each call
    otherwise starts and stops its own: seconds of start-up and fresh worker imports every time). Starts
    it when ``config`` asks for Ray and none runs in this process yet, and shuts it down on exit; with no
    config, the in-process backend or a Ray started by the caller it does nothing."""
    backend = _Ray(config) if config is not None and config.backend == "ray" else None
    try:
        yield
    finally:
        if backend is not None:
            backend.close()


def _backend(config: ExecutorConfig) -> _Backend:
    return _Ray(config) if config.backend == "ray" else _Local()


def _drive(cfg: ExecutorConfig, jobs: list[_Job], handle: _OnDone, *, total: int, desc: str,
           unit: str) -> tuple[list[_Failure], float, float]:
    """Run ``jobs`` on the configured backend with one progress bar over ``total`` units (those not in
    ``jobs`` count as done); ``handle`` receives each result. Returns failures, work and start-up seconds."""
    if not jobs:
        return [], 0.0, 0.0
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - sum(j.units for j in jobs), desc=desc, unit=unit, dynamic_ncols=True)

    def on_done(job: _Job, out: Any, stats: WorkerStats) -> None:
        handle(job, out, stats)
        if bar is not None:
            bar.update(job.units)

    backend: _Backend | None = None
    try:
        backend = _backend(cfg)
        t0 = time.perf_counter()
        failures = backend.run(jobs, cfg, on_done)
        return failures, time.perf_counter() - t0, backend.startup_seconds
    finally:
        if bar is not None:
            bar.close()
        if backend is not None:
            backend.close()


def _raise_failures(failures: list[_Failure], hint: str) -> None:
    if not failures:
        return
    job, reason, exc = failures[0]
    raise ShardFailedError(job.name, f"{reason.rstrip('.')}. {hint}", exc,
                           [f"{j.name}: {r}" for j, r, _ in failures[1:]]) from exc


# --------------------------------------------------------------------------------------------------- public API

def _check_rows(shard: Shard, rows: Any) -> pd.DataFrame:
    if not isinstance(rows, pd.DataFrame):
        raise ValueError(f"{shard.name}: the task returned {type(rows).__name__}, not a pandas DataFrame of results rows")
    if "index" not in rows.columns:
        raise ValueError(f"{shard.name}: the task's rows have no 'index' column")
    got = np.asarray(rows["index"], dtype=np.int64)
    want = shard.array
    if got.size != np.unique(got).size:
        raise ValueError(f"{shard.name}: the task returned a sample index more than once")
    missing = np.setdiff1d(want, got)
    extra = np.setdiff1d(got, want)
    if missing.size or extra.size:
        raise ValueError(f"{shard.name}: the task returned rows for other samples than its own "
                         f"(missing {missing[:5].tolist()}{'...' if missing.size > 5 else ''}, "
                         f"not in the shard {extra[:5].tolist()}{'...' if extra.size > 5 else ''})")
    return rows


def run_shards(task: ShardTask, shards: Iterable[Shard], *, store: ResultsStore, config: ExecutorConfig | None = None,
               desc: str = "samples", **options: Any) -> RunReport:
    """Compute ``task(shard)`` for every shard and write the rows into ``store``, resumably.

    ``task``: a picklable callable (a module-level function, or a frozen dataclass with ``__call__`` that
    carries references such as a checkpoint path and a dataset name, not tensors) returning the shard's rows
    as a DataFrame in the results schema (:data:`marginkit.results.COLUMNS`), one row per sample of the
    shard. It should load its model with :func:`marginkit.parallel.worker_cached` (once per worker process)
    onto :func:`marginkit.parallel.worker_device`.
    ``config`` (default in-process) and ``options`` (its fields, e.g. ``workers=2``,
    ``ray_address="auto"``, ``num_gpus=1``, ``max_retries=3``, ``progress=False``): see
    :class:`ExecutorConfig`.

    Samples already in ``store`` are skipped: a shard whose samples are all there is not run, one with
    some is run on the missing ones only (``dataclasses.replace(shard, indices=...)``). Each finished
    shard's rows are appended by this process as one part; the caller finalizes the store. A task that
    raises, returns rows that do not match its shard, or (Ray) whose worker died more than
    ``max_retries`` times stops the run with :class:`ShardFailedError` naming the shard, after the shards
    in flight have finished and been written.
    """
    cfg = executor_config(config, **options)
    shards = list(shards)
    seen: set[int] = set()
    for s in shards:
        if not isinstance(s, Shard):
            raise TypeError(f"shards must be marginkit.parallel.Shard objects, got {type(s).__name__}")
        if seen.intersection(s.indices):
            raise ValueError(f"{s.name} repeats samples of an earlier shard; each sample must be in one shard")
        seen.update(s.indices)
    jobs: list[_Job] = []
    for s in shards:
        todo = store.pending(s.indices)
        if todo.size:
            part = s if todo.size == len(s) else replace(s, indices=tuple(int(i) for i in todo))
            jobs.append(_Job(len(jobs), part.name, task, part, todo.size))
    total = len(seen)
    written = 0
    finished = 0
    stats: list[WorkerStats] = []

    def on_done(job: _Job, rows: Any, st: WorkerStats) -> None:
        nonlocal written, finished
        written += store.append(_check_rows(job.arg, rows))
        finished += 1
        stats.append(st)

    failures, seconds, startup = _drive(cfg, jobs, on_done, total=total, desc=desc, unit="sample")
    _raise_failures(failures, f"{finished} shard(s) finished and are in the store; a rerun resumes from them")
    return RunReport(cfg.backend, len(shards), len(shards) - len(jobs), finished, total, written, seconds, startup,
                     tuple(stats))


def run_many(tasks: Sequence[Callable[[], R]], *, config: ExecutorConfig | None = None,
             done: Callable[[int], R | None] | None = None, on_result: Callable[[int, R], None] | None = None,
             desc: str = "tasks", names: Sequence[str] | None = None, **options: Any) -> list[R]:
    """Run independent zero-argument ``tasks`` (one model of a zoo, one chunk of pairs) and return their
    results in order.

    ``done(i)``: the stored result of task ``i`` when it already finished in an earlier run (the task is
    skipped and this result is returned in its place), None otherwise. ``on_result(i, result)``: called
    in this process as each task finishes (to persist it, so that ``done`` finds it next time).
    ``names``: how errors name the tasks (default ``"task i"``). Retries, errors and ``config``/``options``
    as in :func:`run_shards`; tasks must be picklable for Ray.
    """
    cfg = executor_config(config, **options)
    tasks = list(tasks)
    if names is not None and len(names) != len(tasks):
        raise ValueError(f"names has {len(names)} entries for {len(tasks)} tasks")
    results: list[Any] = [None] * len(tasks)
    jobs: list[_Job] = []
    for i, t in enumerate(tasks):
        if not callable(t):
            raise TypeError(f"task {i} is not callable ({type(t).__name__})")
        prior = done(i) if done is not None else None
        if prior is not None:
            results[i] = prior
        else:
            jobs.append(_Job(i, names[i] if names is not None else f"task {i}", call, t, 1))
    finished = 0

    def on_done(job: _Job, out: Any, st: WorkerStats) -> None:
        nonlocal finished
        results[job.key] = out
        if on_result is not None:
            on_result(job.key, out)
        finished += 1

    failures, _, _ = _drive(cfg, jobs, on_done, total=len(tasks), desc=desc, unit="task")
    _raise_failures(failures, f"{finished} task(s) finished" + (" and were passed to on_result" if on_result else ""))
    return results
