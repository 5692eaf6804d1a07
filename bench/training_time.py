"""Training cost per epoch of each method relative to standard training (paper section 5.3 claims AMR
costs "roughly the same as standard training", while PGD-AT multiplies it by about the number of steps).

    python bench/training_time.py                          # the paper's MNIST MLP (784-1024-10) on mnist5k
    python bench/training_time.py --arch cnn --hidden 128  # the small CNN

Measures the wall time of one optimisation step (method loss + backward + SGD step) on fixed batches of
128 mnist5k images. Methods are timed in interleaved rounds (each round times every method for
--steps steps) so that load changes on a shared machine hit all methods alike; the per-step time is the
median over rounds, and the per-epoch estimate multiplies it by the 32 steps of a mnist5k epoch.
Writes runs/bench/training_time.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from marginkit.data import load_dataset
from marginkit.models import ModelSpec, build_model
from marginkit.results import library_versions
from marginkit.training import get_method

METHODS = {
    "standard": ("standard", {}),
    "lcr": ("lcr", {"beta": 1e-3}),
    "amr": ("amr", {"lam": 0.1, "tau": 5.0, "beta": 1e-3}),
    "pgd-10": ("pgd", {"norm": "l2", "eps": 2.0, "steps": 10}),
    "pgd-40": ("pgd", {"norm": "l2", "eps": 2.0, "steps": 40, "step_size": 0.01}),
    "trades-10": ("trades", {"norm": "l2", "eps": 2.0, "steps": 10, "beta": 6.0}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--channels", default="16,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="runs/bench/training_time.json")
    args = ap.parse_args()
    ds = load_dataset("mnist5k")
    spec = ModelSpec(args.arch, ds.input_shape, ds.num_classes, hidden=args.hidden, depth=args.depth,
                     channels=tuple(int(c) for c in args.channels.split(",")))
    keys = args.methods.split(",")
    setups = {}
    for key in keys:
        name, params = METHODS[key]
        model = build_model(spec, seed=0).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        setups[key] = (model, opt, get_method(name, **params))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randperm(ds.x_train.shape[0], generator=g)[:128] for _ in range(args.steps)]

    def run(key: str) -> float:
        model, opt, method = setups[key]
        t0 = time.perf_counter()
        for idx in batches:
            loss = method.loss(model, ds.x_train[idx], ds.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / len(batches)

    for key in keys:  # warm-up
        run(key)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(args.rounds):
        for key in keys:
            times[key].append(run(key))
    steps_per_epoch = -(-ds.x_train.shape[0] // 128)
    base = statistics.median(times["standard"]) if "standard" in times else float("nan")
    rows = [{"method": k, "params": METHODS[k][1], "seconds_per_step": statistics.median(v),
             "seconds_per_epoch": statistics.median(v) * steps_per_epoch,
             "relative_to_standard": statistics.median(v) / base, "all_steps": v} for k, v in times.items()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "args": vars(args), "spec": spec.to_dict(), "threads": torch.get_num_threads(),
                   "versions": library_versions(), "command": " ".join(sys.argv)}, f, indent=1)
    print(f"| method | s / step | s / epoch (est.) | x standard |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds_per_step']:.3f} | {r['seconds_per_epoch']:.1f} | {r['relative_to_standard']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
