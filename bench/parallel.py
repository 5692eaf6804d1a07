"""Sharded margins on local Ray workers against one worker and the in-process executor (writes bench/parallel.md).

The per-sample l2 input-margin table (output margins + the attack engine with a fixed pass budget) of the
demo CNN on the first ``--n`` mnist5k test points, split into shards of ``--shard-size``, computed

* in this process (``executor="local"``, one torch thread),
* on a local Ray cluster of 1 worker and of ``--workers`` workers (one torch thread each).

Ray's start-up is timed apart from the work: ``ray.init`` and a warm-up in which every worker imports
torch and marginkit and loads the model (what the first shard of each worker would otherwise pay). The
work is then timed by :func:`marginkit.parallel.run_shards` on the running cluster. Peak resident memory
per worker comes from ``getrusage`` inside the workers. All runs must give the same table.

    python bench/parallel.py                      # 1000 points, budget 300, shards of 50, 1 vs 2 workers
    python bench/parallel.py --n 200 --budget 100  # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from marginkit.attacks import input_margin  # noqa: E402
from marginkit.data import load_dataset  # noqa: E402
from marginkit.margins import output_margins  # noqa: E402
from marginkit.parallel import Shard, make_shards, run_shards, worker_cached, worker_device  # noqa: E402
from marginkit.results import ResultsStore, empty_columns, library_versions  # noqa: E402
from marginkit.training import demo_model  # noqa: E402


def load_model(arch: str, dataset: str, cache_dir: str) -> torch.nn.Module:
    return demo_model(arch, dataset, cache_dir=cache_dir)[0].eval()


def load_points(dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset(dataset).split("test")
    return x[:n], y[:n]


@dataclass(frozen=True)
class MarginTask:
    """One shard's rows: references to the model and data (loaded once per worker), the engine settings."""

    arch: str
    dataset: str
    cache_dir: str
    n: int
    budget: int

    def model(self) -> torch.nn.Module:
        return worker_cached(load_model, self.arch, self.dataset, self.cache_dir).to(worker_device())

    def __call__(self, shard: Shard) -> pd.DataFrame:
        model = self.model()
        x, y = worker_cached(load_points, self.dataset, self.n)
        xs = x[shard.array].to(worker_device())
        om = output_margins(model, xs, None, "l2")
        res = input_margin(model, xs, None, "l2", budget=self.budget)
        rows = empty_columns(len(shard))
        rows.update(index=shard.array, label=y[shard.array].numpy(), prediction=om.prediction.cpu().numpy(),
                    logit_margin=om.logit_margin.double().cpu().numpy())
        rows.update(res.columns())
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class Warmup:
    """Loads the model in a worker, runs the task on two points (first-call costs of the kernels) and holds
    the worker for ``seconds`` so that each of the workers gets one warm-up."""

    task: MarginTask
    seconds: float

    def __call__(self) -> int:
        self.task(Shard(0, (0, 1)))
        time.sleep(self.seconds)
        return os.getpid()


def run_local(task: MarginTask, shards: list[Shard], tmp: str) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task(Shard(0, (0, 1)))  # the same warm-up as a Ray worker's: model load and first engine call
    start = time.perf_counter() - t0
    store = ResultsStore(os.path.join(tmp, "local"), {"bench": "parallel"})
    rep = run_shards(task, shards, store=store, progress=False)
    return {"name": "in-process", "startup": start, "init": 0.0, "warm": start, "work": rep.seconds,
            "rss": list(rep.workers.values()), "table": store.finalize(), **cpu_times(rep)}


def cpu_times(rep) -> dict:
    """Total CPU seconds of the shards, and the largest per-worker total: the work's critical path when
    every worker has a core of its own."""
    per: dict[str, float] = {}
    for st in rep.stats:
        per[st.worker] = per.get(st.worker, 0.0) + st.cpu_seconds
    return {"cpu": sum(per.values()), "cpu_path": max(per.values())}


def run_ray(task: MarginTask, shards: list[Shard], workers: int, tmp: str) -> dict:
    import ray

    from marginkit.parallel import run_many

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), os.path.join(ROOT, "bench")])}})
    init = time.perf_counter() - t0
    t1 = time.perf_counter()
    pids = run_many([Warmup(task, 1.0) for _ in range(workers)], workers=workers, progress=False)
    warm = time.perf_counter() - t1
    store = ResultsStore(tempfile.mkdtemp(prefix=f"ray{workers}-", dir=tmp), {"bench": "parallel"})  # a fresh store per run
    try:
        rep = run_shards(task, shards, store=store, workers=workers, progress=False)
    finally:
        ray.shutdown()
    ran_on = {s.pid for s in rep.stats}
    return {"name": f"Ray, {workers} worker{'s' if workers > 1 else ''}", "startup": init + warm, "init": init, "warm": warm,
            "work": rep.seconds, "rss": list(rep.workers.values()), "table": store.finalize(),
            "warm_pids": len(set(pids)), "pids": len(ran_on), "reused": ran_on <= set(pids), **cpu_times(rep)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="test points (from the first)")
    ap.add_argument("--budget", type=int, default=300, help="forward + backward passes per sample")
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="workers of the parallel run (against 1)")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--cache-dir", default=os.path.join(ROOT, "runs", "models"))
    ap.add_argument("--no-local", action="store_true", help="skip the in-process run")
    ap.add_argument("--repeats", type=int, default=1,
                    help="pairs of Ray runs (1 worker, N workers), in alternating order (1,N then N,1, ...)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "parallel.md"))
    args = ap.parse_args()

    load_model(args.arch, "mnist5k", args.cache_dir)  # train and cache the demo model before any timing
    task = MarginTask(args.arch, "mnist5k", os.path.abspath(args.cache_dir), args.n, args.budget)
    shards = make_shards(args.n, shard_size=args.shard_size)
    load = [os.getloadavg()[0]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_local:
            runs.append(run_local(task, shards, tmp))
            load.append(os.getloadavg()[0])
        for rep in range(args.repeats):
            for w in ((1, args.workers) if rep % 2 == 0 else (args.workers, 1)):
                runs.append(run_ray(task, shards, w, tmp))
                runs[-1]["pair"] = rep
                load.append(os.getloadavg()[0])
                print(f"{runs[-1]['name']}: work {runs[-1]['work']:.1f} s, start-up {runs[-1]['startup']:.1f} s", flush=True)
    ref = runs[0]["table"]
    for r in runs:
        t = r["table"]
        assert t["index"].tolist() == list(range(args.n)), r["name"]
        r["diff"] = float(np.nanmax(np.abs(np.where(np.isinf(ref["input_margin_upper"]), 0, ref["input_margin_upper"] - t["input_margin_upper"]))))
        r["same_status"] = bool((ref["status"] == t["status"]).all()) and bool(np.array_equal(np.isinf(ref["input_margin_upper"]), np.isinf(t["input_margin_upper"])))
    ones = [r for r in runs if r["name"] == "Ray, 1 worker"]
    manys = [r for r in runs if r.get("pair") is not None and r not in ones]
    pairs = [(next(r for r in ones if r["pair"] == k), next(r for r in manys if r["pair"] == k)) for k in range(args.repeats)]
    per_pair = [m["work"] / o["work"] for o, m in pairs]
    ratio = sum(m["work"] for _, m in pairs) / sum(o["work"] for o, _ in pairs)
    ratio_all = sum(m["work"] + m["startup"] for _, m in pairs) / sum(o["work"] + o["startup"] for o, _ in pairs)
    one = ones[0]
    cpu_ratio = sum(m["cpu_path"] for _, m in pairs) / sum(o["cpu_path"] for o, _ in pairs)

    cmd = "python bench/parallel.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("n", args.n), ("budget", args.budget), ("shard_size", args.shard_size),
                                                      ("workers", args.workers), ("repeats", args.repeats)) if v != ap.get_default(k))
    v = library_versions()
    lines = [
        "# Sharded runs: Ray workers against one worker and the in-process executor",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"Work: the per-sample results table of the demo CNN (`demo_model(\"{args.arch}\")`) on the first {args.n} mnist5k "
        f"test points: output margins and the engine's l2 input margin (`input_margin(model, x, None, \"l2\", "
        f"budget={args.budget})`), in {len(shards)} shards of {args.shard_size} points, one torch thread per worker. "
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, no GPU; torch "
        f"{v.get('torch')}, ray {v.get('ray', _ray_version())}, Python {platform.python_version()}. Load average "
        f"(1 min) during the runs: {', '.join(f'{x:.1f}' for x in load)}"
        + (" -- the machine was shared with other jobs, so all times are inflated and the ratios are distorted "
           "(two workers get two cores only when nothing else runs); rerun the command on an idle machine."
           if max(load) > 1.5 else "."),
        "",
        "| run | executor | work (s) | CPU s of the work: total, busiest worker | start-up (s): ray.init + warm-up | samples / s (work) | peak RSS per worker (MiB) | max abs diff of the input margin vs in-process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(runs, 1):
        rss = ", ".join(f"{x:.0f}" for x in sorted(r["rss"]))
        lines.append(f"| {k} | {r['name']} | {r['work']:.1f} | {r['cpu']:.1f}, {r['cpu_path']:.1f} | {r['startup']:.1f}: {r['init']:.1f} + {r['warm']:.1f} | "
                     f"{args.n / r['work']:.2f} | {rss} | {r['diff']:.1e}{'' if r['same_status'] else ' (status differs)'} |")
    pair_text = (f" (total work of the {args.repeats} pairs; per pair, in run order: "
                 f"{', '.join(f'{x:.2f}' for x in per_pair)})" if args.repeats > 1 else "")
    lines += [
        "",
        f"**Wall-time ratio, {args.workers} workers / 1 worker: {ratio:.2f} on the work**{pair_text} (target <= 0.6), "
        f"{ratio_all:.2f} with Ray's start-up included."
        + ("" if args.no_local else f" In-process / Ray with 1 worker (work, first pair): {runs[0]['work'] / one['work']:.2f}."),
        "",
        f"CPU time of the work's critical path (the busiest worker's CPU seconds), {args.workers} workers / 1 worker: "
        f"{cpu_ratio:.2f}. This is the wall-time ratio to expect where every worker has a core to itself (an idle "
        "machine); the wall-time ratio above also contains the time each worker waited for a core on the shared one.",
        "",
        "Start-up: `ray.init` starts the local cluster (GCS, raylet, idle workers); the warm-up runs one task per "
        "worker that imports torch and marginkit, loads the model from the checkpoint cache (afterwards "
        "`worker_cached` keeps it for the worker's next shards) and runs the task on two points (first-call costs). "
        "The in-process row's start-up is the same model load and two-point run. "
        f"The shards of each Ray run ran on {', '.join(str(r['pids']) for r in runs if 'pids' in r)} worker process(es), "
        f"{'all of them warmed up before' if all(r.get('reused', True) for r in runs) else 'not all of them warmed up before (their first shard paid the imports)'}. "
        "Peak RSS is each worker process's maximum resident memory since it started (`getrusage`), so it "
        "includes Ray's own runtime (~100 MiB), torch and the model; for the in-process row it is the whole "
        "driver process.",
        "",
    ]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    return 0


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


if __name__ == "__main__":
    raise SystemExit(main())
