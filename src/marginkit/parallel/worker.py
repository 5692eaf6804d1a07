"""What runs inside a worker: the per-process model cache, the device a task uses, per-task statistics."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, TypeVar

__all__ = ["WorkerStats", "call", "clear_worker_cache", "execute", "worker_cache_size", "worker_cached", "worker_device"]

T = TypeVar("T")

# Models and datasets loaded in this process, most recently used last. Two entries: a task's model and its
# data; a zoo run that moves on to the next model drops the oldest instead of holding every model.
_CACHE: "OrderedDict[Hashable, Any]" = OrderedDict()
_CACHE_SIZE = 2


def _callable_key(factory: Callable[..., Any]) -> tuple[str, str]:
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise TypeError(f"needs a module-level function or class as factory, got {factory!r}: "
                        "its name is the cache key that is the same in every worker")
    return module, qualname


def worker_cached(factory: Callable[..., T], *args: Hashable, **kwargs: Hashable) -> T:
    """``factory(*args, **kwargs)``, computed once per process and reused by the next tasks there.

    A task calls this to load its model (and data) from a reference it carries (a checkpoint path, a
    dataset name, a spec), so each worker process loads the model once however many shards it runs, and
    the task object shipped to the workers stays small (no tensors). The key is the factory's module and
    name with the arguments, which must be hashable and equal by value (strings, numbers, tuples, frozen
    dataclasses of an importable module). The cache holds the two most recently used values.
    """
    try:
        key = (_callable_key(factory), args, tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError as exc:
        raise TypeError(f"worker_cached: {exc}") from None
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = factory(*args, **kwargs)
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def clear_worker_cache() -> None:
    """Drop every value :func:`worker_cached` holds in this process (frees the driver after a local run)."""
    _CACHE.clear()


def worker_cache_size() -> int:
    """Number of values :func:`worker_cached` holds in this process."""
    return len(_CACHE)


def worker_device() -> Any:
    """The device a task should move its model to: the first CUDA device this process sees, else the CPU.

    On Ray, a task that asked for a GPU sees exactly the GPU(s) Ray assigned to it (Ray sets
    ``CUDA_VISIBLE_DEVICES``), so ``cuda:0`` here is that GPU; a task that asked for none sees none. The
    algorithms then follow the model's device; nothing else in marginkit chooses one.
    """
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class WorkerStats:
    """Where and at what cost one task ran.

    ``peak_rss_mib``: the worker process's peak resident memory since it started (``getrusage``; NaN where
    unavailable), so it includes Ray, torch, the model and every earlier task of that process.
    ``peak_gpu_mib``: peak CUDA memory allocated by torch in that process (NaN when CUDA was not used).
    ``cpu_seconds``: CPU time of the process during the task (all its threads): on a shared machine it
    shows the work a task needed, apart from the time it waited for a core.
    """

    pid: int
    host: str
    seconds: float
    peak_rss_mib: float
    peak_gpu_mib: float
    device: str
    cpu_seconds: float = float("nan")

    @property
    def worker(self) -> str:
        return f"{self.host}:{self.pid}"


def _peak_rss_mib() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _gpu_state() -> tuple[float, str]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return float("nan"), "cpu"
    return torch.cuda.max_memory_allocated() / 2**20, f"cuda:{torch.cuda.current_device()}"


def call(task: Callable[[], Any]) -> Any:
    """``task()``: how :func:`execute` runs the zero-argument tasks of ``run_many``."""
    return task()


def execute(fn: Callable[..., Any], arg: Any, threads: int | None = None) -> tuple[Any, WorkerStats]:
    """Run ``fn(arg)`` and return its result with :class:`WorkerStats`.

    ``threads``: torch intra-op threads to use in this process (Ray tasks; None leaves them as they are).
    """
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(arg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    gpu, device = _gpu_state()
    return out, WorkerStats(os.getpid(), socket.gethostname(), seconds, _peak_rss_mib(), gpu, device, cpu)
