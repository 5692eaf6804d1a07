"""The executors: results equal the single-process run, resume, retries, errors.

The in-process tests always run; the Ray tests skip where Ray is not installed (the ``ray`` extra) and
share one local Ray cluster of two workers per module.
"""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from marginkit.attacks import input_margin
from marginkit.margins import output_margins
from marginkit.parallel import (
    ExecutorConfig,
    Shard,
    ShardFailedError,
    clear_worker_cache,
    executor_config,
    make_shards,
    ray_session,
    run_many,
    run_shards,
    worker_cache_size,
    worker_cached,
    worker_device,
)
from marginkit.results import COLUMNS, ResultsStore, empty_columns

N, BUDGET = 24, 40


def tiny_model(seed: int, marker_dir: str | None = None) -> nn.Module:
    """A 16-12-3 ReLU network built from a seed: what a task 'loads' from its reference."""
    if marker_dir is not None:  # one file per load, named by the loading process
        open(os.path.join(marker_dir, f"load-{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def tiny_inputs(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed + 1))


def margin_rows(model: nn.Module, x: torch.Tensor, idx: np.ndarray, budget: int) -> pd.DataFrame:
    """The results rows of samples ``idx``: output margins and the engine's l2 input margin."""
    om = output_margins(model, x, None, "l2")
    res = input_margin(model, x, None, "l2", budget=budget)
    rows = empty_columns(len(idx))
    rows["index"] = np.asarray(idx, dtype=np.int64)
    rows["prediction"] = om.prediction.cpu().numpy()
    rows["logit_margin"] = om.logit_margin.double().cpu().numpy()
    if om.feature_margin is not None:
        rows["feature_margin"] = om.feature_margin.double().cpu().numpy()
    rows.update(res.columns())
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class MarginTask:
    """A shard task that carries references (seed, sizes, directories), never tensors."""

    seed: int = 0
    n: int = N
    budget: int = BUDGET
    marker_dir: str | None = None
    fail_on: int | None = None
    die_on: int | None = None  # this shard's worker process exits on its first attempt (needs marker_dir)
    die_always: bool = False  # ... on every attempt

    def __call__(self, shard: Shard) -> pd.DataFrame:
        if self.marker_dir is not None:
            open(os.path.join(self.marker_dir, f"call-{shard.number}-{uuid.uuid4().hex}"), "w").close()
        if shard.number == self.fail_on:
            raise RuntimeError("boom")
        if shard.number == self.die_on and self.marker_dir is not None:
            flag = os.path.join(self.marker_dir, f"died-{shard.number}")
            if self.die_always or not os.path.exists(flag):
                open(flag, "w").close()
                os._exit(1)  # a killed worker: no exception, no cleanup
        model = worker_cached(tiny_model, self.seed, self.marker_dir).to(worker_device())
        x = worker_cached(tiny_inputs, self.n, self.seed)[shard.array]
        return margin_rows(model, x.to(worker_device()), shard.array, self.budget)


def calls(marker_dir: str) -> list[int]:
    return sorted(int(f.split("-")[1]) for f in os.listdir(marker_dir) if f.startswith("call-"))


def reference() -> pd.DataFrame:
    """The single-process run: one engine call on all samples."""
    return margin_rows(tiny_model(0), tiny_inputs(N, 0), np.arange(N), BUDGET)


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values("index").reset_index(drop=True)
    assert got["index"].tolist() == want["index"].tolist()
    for c in ("prediction", "adversarial_class", "status", "norm"):
        assert got[c].tolist() == want[c].tolist(), c
    for c in ("logit_margin", "feature_margin", "input_margin_upper"):
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-5, atol=1e-7, err_msg=c)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_worker_cache()
    yield
    clear_worker_cache()


def test_local_run_equals_single_process_and_loads_once(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    task = MarginTask(marker_dir=str(marks))
    assert len(pickle.dumps(task)) < 400  # a reference, not a model: cheap to ship to workers
    store = ResultsStore(tmp_path / "run", {"case": "local"})
    report = run_shards(task, make_shards(N, shard_size=7), store=store, progress=False)
    df = store.finalize()
    assert list(df.columns)[: len(COLUMNS)] == list(COLUMNS)
    assert_same_table(df, reference())
    assert (report.executor, report.shards, report.ran, report.skipped, report.samples_written) == ("local", 4, 4, 0, N)
    assert len([f for f in os.listdir(marks) if f.startswith("load-")]) == 1  # one model load for four shards
    assert calls(str(marks)) == [0, 1, 2, 3]
    assert set(report.workers) == {s.worker for s in report.stats} and all(v > 0 for v in report.workers.values())


def test_failure_names_the_shard_and_rerun_resumes(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    store = ResultsStore(tmp_path / "run", {"case": "resume"})
    shards = make_shards(N, shard_size=6)
    with pytest.raises(ShardFailedError, match=r"shard 2/4 \(samples 12\.\.17, 6 samples\) failed: raised RuntimeError: boom") as err:
        run_shards(MarginTask(marker_dir=str(marks), fail_on=2), shards, store=store, progress=False)
    assert isinstance(err.value.cause, RuntimeError) and "rerun resumes" in str(err.value)
    assert store.done == set(range(12))  # the shards before the failure were written, nothing after it ran
    assert calls(str(marks)) == [0, 1, 2]

    # Rerun in a new process's view of the directory: only the unfinished shards run.
    store = ResultsStore(tmp_path / "run", {"case": "resume"})
    report = run_shards(MarginTask(marker_dir=str(marks)), shards, store=store, progress=False)
    assert calls(str(marks)) == [0, 1, 2, 2, 3]
    assert (report.skipped, report.ran, report.samples_written) == (2, 2, 12)
    df = store.finalize()
    assert_same_table(df, reference())
    # A third run finds nothing to do and starts no executor.
    again = run_shards(MarginTask(marker_dir=str(marks)), shards, store=ResultsStore(tmp_path / "run", {"case": "resume"}),
                       progress=False, workers=2)
    assert (again.ran, again.skipped, again.startup_seconds) == (0, 4, 0.0)


def test_resume_with_other_shard_sizes_runs_missing_samples_only(tmp_path):
    store = ResultsStore(tmp_path / "run", {"case": "sizes"})
    run_shards(MarginTask(), make_shards(np.arange(10), shard_size=5), store=store, progress=False)
    seen: list[tuple[int, ...]] = []

    def spy(shard: Shard) -> pd.DataFrame:
        seen.append(shard.indices)
        return MarginTask()(shard)

    report = run_shards(spy, make_shards(N, shard_size=8), store=store, progress=False)
    assert seen == [tuple(range(10, 16)), tuple(range(16, 24))]  # shard 0 skipped, shard 1 trimmed to 10..15
    assert report.skipped == 1 and report.samples_written == 14
    assert_same_table(store.finalize(), reference())


@pytest.mark.parametrize("bad, match", [
    (lambda s: MarginTask()(s).iloc[1:], r"missing \[\d+\]"),
    (lambda s: pd.concat([MarginTask()(s)] * 2), "more than once"),
    (lambda s: MarginTask()(s).assign(index=lambda d: d["index"] + 100), "not in the shard"),
    (lambda s: {"index": list(s.indices)}, "not a pandas DataFrame"),
    (lambda s: MarginTask()(s).drop(columns=["status"]), "lack column"),
])
def test_rows_that_do_not_match_the_shard_are_refused(tmp_path, bad, match):
    store = ResultsStore(tmp_path / "run", {})
    with pytest.raises(ShardFailedError, match=match) as err:
        run_shards(bad, make_shards(6, shard_size=3), store=store, progress=False)
    assert err.value.name.startswith("shard 0/2") and store.done == set()


def blank_rows(shard: Shard) -> pd.DataFrame:
    rows = empty_columns(len(shard))
    rows["index"] = shard.array
    return pd.DataFrame(rows)


def test_one_progress_bar_over_samples_counts_skipped_ones(tmp_path, capsys):
    store = ResultsStore(tmp_path / "run", {})
    store.append(blank_rows(Shard(0, tuple(range(6)))))
    run_shards(blank_rows, make_shards(N, shard_size=6), store=store, desc="margins")
    err = capsys.readouterr().err
    assert err.count("margins:") >= 1 and " 6/24 " in err and "24/24" in err  # starts at the 6 done samples
    assert store.done == set(range(N))


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    store = ResultsStore(tmp_path / "run", {})
    for opts in ({"workers": 2}, {"ray_address": "auto"}, {"executor": "ray"}):
        with pytest.raises(ImportError, match=r'pip install "marginkit\[ray\]"'):
            run_shards(MarginTask(), make_shards(4), store=store, progress=False, **opts)
    with pytest.raises(ImportError, match="marginkit.ray"):
        run_many([int], workers=1, progress=False)
    assert store.done == set()


def test_ray_session_does_nothing_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray at all: still fine, nothing is started
    for cfg in (None, ExecutorConfig()):
        with ray_session(cfg):
            assert run_many([int], config=cfg, progress=False) == [0]
    with pytest.raises(ImportError, match="marginkit.ray"):
        with ray_session(ExecutorConfig(workers=2)):
            pass


def test_run_many_in_order_with_skips(tmp_path):
    saved: dict[int, int] = {3: 99}
    out = run_many([lambda k=k: k * k for k in range(5)], done=saved.get, on_result=saved.__setitem__, progress=False)
    assert out == [0, 1, 4, 99, 16] and saved == {0: 0, 1: 1, 2: 4, 3: 99, 4: 16}

    def broken() -> int:
        raise ValueError("bad pair")

    with pytest.raises(ShardFailedError, match="pair chunk 1 failed: raised ValueError: bad pair"):
        run_many([int, broken, int], names=["pair chunk 0", "pair chunk 1", "pair chunk 2"], progress=False)


def test_config_and_shards_validation():
    assert ExecutorConfig().backend == "local"
    assert ExecutorConfig(workers=2).backend == "ray" and ExecutorConfig(ray_address="auto").backend == "ray"
    assert ExecutorConfig(num_cpus=2).task_threads == 2 and ExecutorConfig(threads=3).task_threads == 3
    with pytest.raises(ValueError, match="need executor='ray'"):
        ExecutorConfig(executor="local", workers=2)
    for bad in ({"workers": 0}, {"workers": 1.5}, {"executor": "dask"}, {"max_retries": -1}, {"num_gpus": -1}, {"ray_address": " "}):
        with pytest.raises(ValueError):
            ExecutorConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown executor option"):
        executor_config(None, worker=2)
    shards = make_shards(np.array([5, 3, 9, 1, 7]), shard_size=2)
    assert [s.indices for s in shards] == [(5, 3), (9, 1), (7,)] and shards[2].name == "shard 2/3 (sample 7, 1 sample)"
    assert [len(s) for s in make_shards(1000, workers=2)] == [125] * 8
    assert len(make_shards(100_000)) == 391  # at most DEFAULT_MAX_SHARD samples each
    for bad_idx, exc in ((np.array([1, 1]), ValueError), (np.array([-1]), ValueError), (np.array([0.5]), TypeError)):
        with pytest.raises(exc):
            make_shards(bad_idx)
    with pytest.raises(ValueError, match="repeats samples"):
        run_shards(MarginTask(), [Shard(0, (1, 2)), Shard(1, (2, 3))], store=None, progress=False)  # type: ignore[arg-type]


def test_worker_cache_is_per_process_and_bounded():
    a = worker_cached(tiny_model, 0)
    assert worker_cached(tiny_model, 0) is a and worker_cached(tiny_model, 1) is not a
    worker_cached(tiny_inputs, 4, 0)
    assert worker_cache_size() == 2 and worker_cached(tiny_model, 0) is not a  # the oldest entry went
    with pytest.raises(TypeError, match="module-level"):
        worker_cached(lambda: 1)
    with pytest.raises(TypeError, match="unhashable"):
        worker_cached(tiny_inputs, [4], 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # The tasks of this module are not importable in the workers: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def parts_rows(directory) -> int:
    import pyarrow.parquet as pq

    parts = os.path.join(directory, "parts")
    return sum(pq.read_metadata(os.path.join(parts, f)).num_rows for f in os.listdir(parts))


def test_ray_two_workers_equal_single_process(ray_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    store = ResultsStore(tmp_path / "run", {"case": "ray"})
    report = run_shards(MarginTask(marker_dir=str(marks)), make_shards(N, shard_size=4), store=store,
                        workers=2, progress=False)
    df = store.finalize()
    assert_same_table(df, reference())
    assert (report.executor, report.ran, report.samples_written, report.startup_seconds) == ("ray", 6, N, 0.0)
    assert calls(str(marks)) == [0, 1, 2, 3, 4, 5]
    pids = {s.pid for s in report.stats}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # at most two workers ran at a time
    loads = [f.split("-")[1] for f in os.listdir(marks) if f.startswith("load-")]
    assert sorted(set(loads)) == sorted(loads) and {int(p) for p in loads} <= pids  # each worker loaded once
    assert all(s.device == "cpu" and s.peak_rss_mib > 0 for s in report.stats)


def test_ray_session_keeps_a_callers_cluster(ray_cluster):
    with ray_session(ExecutorConfig(workers=2)):
        first = run_many([lambda k=k: os.getpid() + 0 * k for k in range(4)], workers=2, progress=False)
        second = run_many([lambda k=k: os.getpid() + 0 * k for k in range(4)], workers=2, progress=False)
    assert ray_cluster.is_initialized()  # started by the caller: left running
    assert os.getpid() not in first + second  # both calls ran on the caller's workers


@pytest.mark.slow
def test_ray_session_keeps_one_cluster_for_several_calls():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray cluster of another test is running")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with ray_session(ExecutorConfig(workers=2)):
            assert ray.is_initialized()
            first = run_many([lambda k=k: os.getpid() + 0 * k for k in range(4)], workers=2, progress=False)
            assert ray.is_initialized()  # the call did not shut the session's cluster down
            second = run_many([lambda k=k: os.getpid() + 0 * k for k in range(4)], workers=2, progress=False)
        assert not ray.is_initialized()
        assert set(second) & set(first)  # the same worker processes served both calls
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ray_killed_worker_is_retried_without_duplicates(ray_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    store = ResultsStore(tmp_path / "run", {"case": "fault"})
    report = run_shards(MarginTask(marker_dir=str(marks), die_on=1), make_shards(N, shard_size=6), store=store,
                        workers=2, max_retries=2, progress=False)
    assert calls(str(marks)).count(1) == 2 and os.path.exists(marks / "died-1")  # the first attempt died
    assert report.samples_written == N and parts_rows(tmp_path / "run") == N  # no row twice, none lost
    df = store.finalize()
    assert df["index"].tolist() == list(range(N))
    assert_same_table(df, reference())


@pytest.mark.slow
def test_ray_retries_exhausted_names_the_shard_and_rerun_resumes(ray_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    shards = make_shards(N, shard_size=6)
    store = ResultsStore(tmp_path / "run", {"case": "exhausted"})
    with pytest.raises(ShardFailedError, match=r"shard 3/4 \(samples 18\.\.23, 6 samples\) failed: its worker was lost 2 time"):
        run_shards(MarginTask(marker_dir=str(marks), die_on=3, die_always=True), shards, store=store,
                   workers=2, max_retries=1, progress=False)
    assert calls(str(marks)).count(3) == 2 and store.done == set(range(18))  # the other shards were written
    before = len(calls(str(marks)))
    report = run_shards(MarginTask(marker_dir=str(marks)), shards, store=ResultsStore(tmp_path / "run", {"case": "exhausted"}),
                        workers=2, progress=False)
    assert len(calls(str(marks))) - before == 1  # only the failed shard ran again
    assert (report.skipped, report.ran) == (3, 1) and parts_rows(tmp_path / "run") == N


@pytest.mark.slow
def test_ray_task_exception_is_not_retried_and_run_many_keeps_order(ray_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with pytest.raises(ShardFailedError, match="shard 1/2 .* raised RuntimeError: boom"):
        run_shards(MarginTask(marker_dir=str(marks), fail_on=1), make_shards(8, shard_size=4),
                   store=ResultsStore(tmp_path / "run", {}), workers=2, progress=False)
    assert calls(str(marks)).count(1) == 1
    saved = {2: -1}
    out = run_many([_Square(k) for k in range(4)], done=saved.get, on_result=saved.__setitem__, workers=2, progress=False)
    assert out == [0, 1, -1, 9] and saved == {0: 0, 1: 1, 2: -1, 3: 9}


@dataclass(frozen=True)
class _Square:
    k: int

    def __call__(self) -> int:
        return self.k * self.k


@dataclass(frozen=True)
class _Locked:
    lock: object

    def __call__(self, shard: Shard) -> pd.DataFrame:
        return blank_rows(shard)


def test_ray_refuses_gpus_it_lacks_and_unpicklable_tasks(ray_cluster, tmp_path):
    import threading

    store = ResultsStore(tmp_path / "run", {})
    with pytest.raises(ValueError, match=r"asks for 1 GPU\(s\) but the Ray cluster has 0"):
        run_shards(blank_rows, make_shards(4), store=store, num_gpus=1, executor="ray", progress=False)
    with pytest.raises(TypeError, match=r"shard 0/4 \(sample 0, 1 sample\): the task cannot be shipped to Ray workers; it must be picklable"):
        run_shards(_Locked(threading.Lock()), make_shards(4), store=store, executor="ray", progress=False)
    assert store.done == set() and ray_cluster.is_initialized()  # a cluster the caller started stays up
