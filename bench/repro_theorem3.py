"""Theorem 3 (min-vs-average margin paper, eq. 16) at the paper's sample count, against 32-64 samples.

Model: the paper's MNIST MLP (784-1024-10) trained with the ``cpu-mnist-mlp-std`` preset (25 epochs,
seed 0), cached in runs/repro/. The bound min(min_k gap_k / L_k, r), r = 5, l2, is read after
0, 1, 2, 4, ..., samples per point in one streamed run (``lipschitz_margin(..., checkpoints=...)``):

* ``--paper-points`` test points (first correctly classified ones) with 1024 x 50 = 51,200 samples;
* ``--many-points`` test points with ``--many-samples`` samples (more points, shorter curve).

The engine's l2 upper bound on each point's true margin is the reference: a valid lower bound never
exceeds it. Writes runs/repro/theorem3.json and docs/figures/reproduction/theorem3.png.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/repro_theorem3.py
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from marginkit.attacks import input_margin
from marginkit.models.checkpoint import load_checkpoint, save_checkpoint
from marginkit.training import train_preset
from marginkit.training.theory import PAPER_SAMPLES, plot_theorem3, theorem3_convergence

MODEL = os.path.join("runs", "repro", "mlp1024-std-s0.pt")


def paper_mlp(seed: int = 0) -> torch.nn.Module:
    if not os.path.exists(MODEL):
        res, spec, _ = train_preset("cpu-mnist-mlp-std", seed=seed)
        save_checkpoint(MODEL, res.model, spec, {"preset": "cpu-mnist-mlp-std", "seed": seed,
                                                  "test_accuracy": res.test_accuracy})
    model, _ = load_checkpoint(MODEL)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper-points", type=int, default=10)
    ap.add_argument("--many-points", type=int, default=200)
    ap.add_argument("--many-samples", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=os.path.join("docs", "figures", "reproduction", "theorem3.png"))
    args = ap.parse_args()
    from marginkit.data import load_dataset

    model = paper_mlp()
    ds = load_dataset("mnist5k")
    x, y = ds.x_test, ds.y_test
    with torch.no_grad():
        correct = (model(x).argmax(1) == y)
    first = torch.nonzero(correct).squeeze(1)[: args.paper_points]
    results, timings = {}, {}
    for name, idx, samples in [(f"{PAPER_SAMPLES} samples", first, PAPER_SAMPLES),
                               (f"{args.many_samples} samples", torch.arange(args.many_points), args.many_samples)]:
        ref = input_margin(model, x[idx], y[idx], "l2").upper
        t0 = time.perf_counter()
        results[name] = theorem3_convergence(model, x[idx], y[idx], "l2", radius=5.0, samples=samples,
                                             reference=ref, seed=args.seed)
        timings[name] = time.perf_counter() - t0
        print(name, f"{timings[name]:.0f} s", flush=True)
        for row in results[name].summary():
            print(" ", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    os.makedirs(os.path.dirname(args.figure), exist_ok=True)
    plot_theorem3(results, args.figure)
    out = {"settings": {**vars(args), "model": "cpu-mnist-mlp-std seed 0 (784-1024-10)", "radius": 5.0, "norm": "l2",
                        "torch": torch.__version__, "threads": torch.get_num_threads()},
           "seconds": timings, "results": {k: v.to_dict() for k, v in results.items()}}
    with open(os.path.join("runs", "repro", "theorem3.json"), "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
