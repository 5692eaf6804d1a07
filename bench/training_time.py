"""Training time per epoch of each method relative to standard training (paper section 5.3 claims AMR
costs "roughly the same as standard training" while PGD-AT multiplies it by the number of PGD steps).

    python bench/training_time.py                 # the paper's MNIST MLP (1024 hidden) on mnist5k
    python bench/training_time.py --hidden 256 --epochs 2

Each method trains the same seeded model for --epochs epochs (SGD, batch 128); the first epoch is a
warm-up and is excluded when --epochs > 1. Writes runs/bench/training_time.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from marginkit.data import load_dataset
from marginkit.models import ModelSpec, build_model
from marginkit.results import library_versions
from marginkit.training import TrainConfig, get_method, train_model

METHODS = {
    "standard": {},
    "lcr": {"beta": 1e-3},
    "amr": {"lam": 0.1, "tau": 5.0, "beta": 1e-3},
    "pgd-7": {"norm": "l2", "eps": 2.0, "steps": 7},
    "pgd-10": {"norm": "l2", "eps": 2.0, "steps": 10},
    "trades-10": {"norm": "l2", "eps": 2.0, "steps": 10, "beta": 6.0},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="runs/bench/training_time.json")
    args = ap.parse_args()
    ds = load_dataset("mnist5k")
    spec = ModelSpec(args.arch, ds.input_shape, ds.num_classes, hidden=args.hidden, depth=args.depth)
    rows = []
    for key in args.methods.split(","):
        name = key.split("-")[0]
        model = build_model(spec, seed=0)
        cfg = TrainConfig(epochs=args.epochs, optimizer="sgd", lr=0.01, nesterov=True, seed=0)
        res = train_model(model, ds, cfg, get_method(name, **METHODS[key]))
        secs = [h["seconds"] for h in res.history]
        timed = secs[1:] if len(secs) > 1 else secs
        rows.append({"method": key, "params": METHODS[key], "seconds_per_epoch": statistics.median(timed),
                     "all_epochs": secs, "test_accuracy": res.test_accuracy})
        print(json.dumps(rows[-1]), flush=True)
    base = next(r["seconds_per_epoch"] for r in rows if r["method"] == "standard")
    for r in rows:
        r["relative_to_standard"] = r["seconds_per_epoch"] / base
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "args": vars(args), "threads": torch.get_num_threads(), "versions": library_versions(),
                   "command": " ".join(sys.argv)}, f, indent=1)
    print("| method | s / epoch | x standard |\n|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds_per_epoch']:.2f} | {r['relative_to_standard']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
