"""Benchmark of the lower-bound machinery (marginkit.bounds).

1. Cone-program solvers on the SAME collision problems: Clarabel (default, interior point) against SCS
   (first-order splitting) through cvxpy, for the ReLU descent (Algorithms 1/2) on pairs of 2-class MNIST
   (3 vs 7) points after relu1 / relu2 / relu3 of the demo 3-layer MLP: collisions per second, cone
   programs per second, agreement of the budgets, verification failures.
2. The same for the cross-entropy bound (exponential-cone program) on the conflict graphs of fc1.
3. Collisions per second and total time of a finished layer-wise run (``marginkit bounds`` output dir).

    python bench/bounds_solvers.py --pairs 30 --layerwise-dir runs/bounds/mnist37

Prints a Markdown table (copied into bench/bounds.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--layers", default="relu1,relu2,relu3")
    ap.add_argument("--solvers", default="CLARABEL,SCS")
    ap.add_argument("--layerwise-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from marginkit.bounds import (balanced_subset, conflict_graph, cross_entropy_bound, feature_chain,
                                  find_collisions, pair_budgets)
    from marginkit.data import load_dataset
    from marginkit.training import demo_model

    torch.set_num_threads(1)
    model, ck = demo_model("mlp", classes=(3, 7), depth=3, hidden=64, seed=args.seed)
    ds = load_dataset("mnist5k", classes=(3, 7), seed=args.seed)
    x, y = ds.split("train")
    idx = balanced_subset(y, args.pairs, args.seed)
    xs = x[idx].reshape(len(idx), -1).double().numpy()
    ys = y[idx].numpy()
    a, b = xs[ys == 0], xs[ys == 1]
    solvers = [s.strip().upper() for s in args.solvers.split(",")]
    print(f"## Cone programs of the ReLU descent ({args.pairs} pairs of MNIST 3-vs-7 points, demo MLP 784-64-64-64, l2)\n")
    print("| layer | solver | seconds | collisions / s | cone programs | programs / s | mean budget | max abs diff vs Clarabel | unverified steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in args.layers.split(","):
        ch = feature_chain(model, layer, (1, 28, 28))
        ref = None
        for s in solvers:
            find_collisions(ch, a[:1], b[:1], solver=s)  # compile / import once outside the timing
            t0 = time.perf_counter()
            r = find_collisions(ch, a, b, solver=s)
            dt = time.perf_counter() - t0
            if ref is None:
                ref = r.budget
            bad = sum(st == "solver-failed" for st in r.status)
            print(f"| {layer} | {s} | {dt:.2f} | {len(a) / dt:.1f} | {r.programs} | {r.programs / dt:.1f} | "
                  f"{r.budget.mean():.4f} | {np.abs(r.budget - ref).max():.2e} | {bad} |")
    print("\n## Cross-entropy bound (exponential cone) on the fc1 conflict graphs, 200 points per class\n")
    idx = balanced_subset(y, 200, args.seed)
    ch = feature_chain(model, "fc1", (1, 28, 28))
    pb = pair_budgets(ch, x[idx].reshape(len(idx), -1).double().numpy(), y[idx].numpy())
    print("| eps | edges | solver | seconds | bound (nats) |")
    print("|---|---|---|---|---|")
    for eps in (1.5, 2.0, 2.5, 3.0):
        g = conflict_graph(pb, eps)
        for s in solvers:
            t0 = time.perf_counter()
            try:
                v = f"{cross_entropy_bound(g, solver=s, fallback=None):.6f}"
            except RuntimeError as exc:
                v = f"failed ({exc})"
            print(f"| {eps} | {len(g.edges)} | {s} | {time.perf_counter() - t0:.2f} | {v} |")
    if args.layerwise_dir:
        st = json.load(open(os.path.join(args.layerwise_dir, "settings.json")))
        print(f"\n## Layer-wise run `{args.layerwise_dir}`: total {st['seconds']:.0f} s, "
              f"{st['points']} points, {len(st['eps_grid'])} eps\n")
        print("| model | layer | method | pairs searched | cone programs | collision search s | collisions / s | bounds s |")
        print("|---|---|---|---|---|---|---|---|")
        for row in st["layer_stats"]:
            sec = row.get("search_seconds", row.get("seconds", 0.0))
            cps = row.get("collisions_per_second")
            print(f"| {row['model']} | {row['layer']} | {row.get('method')} | {row.get('searched', 0)} | "
                  f"{row.get('programs', 0)} | {sec:.1f} | {'' if cps is None else f'{cps:.1f}'} | "
                  f"{row.get('bound_seconds', 0.0):.1f} |")


if __name__ == "__main__":
    main()
