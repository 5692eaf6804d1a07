"""Benchmark: the ReLU collision descent on EVERY candidate pair, against the per-vertex-best-partner run.

1. Engine speed on the same pairs, side by side in one process (so both see the same machine load): the
   cone programs of the descent through cvxpy (``direct=False``, the previous engine) and handed to
   Clarabel directly (``direct=True``, default), on pairs of 2-class MNIST (3 vs 7) points after relu1 and
   relu3 of the demo MLP 784-64-64-64. Budgets must agree (same programs, same duals).
2. The layer-wise run of the standard and PGD demo models on ``--per-class`` points per class, once with
   every candidate pair searched (``neighbours=None``: grid-interval settling, injective-layer reuse and
   the certified first-ReLU test decide which pairs need no descent) and once with ``neighbours=1``;
   wall time, per-layer statistics and how each bound moved.

    python bench/bounds_allpairs.py --per-class 20 --speed-pairs 10
    python bench/bounds_allpairs.py --settled-per-class 200      # pairs settled without a descent

Prints Markdown (copied into bench/bounds.md). Single-threaded torch; the CPU may be shared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _speed(model, xs: np.ndarray, ys: np.ndarray, n: int, layers: list[str]) -> None:
    from marginkit.bounds import feature_chain, find_collisions

    a, b = xs[ys == 0][:n], xs[ys == 1][:n]
    print(f"### Engine speed: {n} pairs (3, 7), descent from the midpoint, l2, no box\n")
    print("| layer | engine | seconds | cone programs | programs / s | collisions / s | max abs budget diff |")
    print("|---|---|---|---|---|---|---|")
    for layer in layers:
        ch = feature_chain(model, layer, (1, 28, 28))
        ref = None
        for name, direct in (("cvxpy + Clarabel", False), ("Clarabel direct", True)):
            find_collisions(ch, a[:1], b[:1], direct=direct)  # imports / compilation outside the timing
            t0 = time.perf_counter()
            r = find_collisions(ch, a, b, direct=direct)
            dt = time.perf_counter() - t0
            diff = 0.0 if ref is None else float(np.abs(r.budget - ref).max())
            ref = r.budget if ref is None else ref
            print(f"| {layer} | {name} | {dt:.1f} | {r.programs} | {r.programs / dt:.2f} | {n / dt:.2f} | {diff:.1e} |")
    print()


def _settled(models, xs: np.ndarray, ys: np.ndarray, grid: list[float]) -> None:
    """How many pairs each ReLU layer settles without a descent (nothing searched: max_pairs=0)."""
    from marginkit.bounds import feature_chain, pair_budgets

    print(f"### Pairs settled without a descent, {len(xs)} points, {int((ys == 0).sum() * (ys == 1).sum())} pairs\n")
    print("| model | layer | settled | of which by the first-ReLU test | left for the descent | seconds |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        prior = pair_budgets(feature_chain(model, "fc1", (1, 28, 28)), xs, ys, "l2")
        for layer in ("relu1", "relu2", "relu3"):
            t0 = time.perf_counter()
            pb = pair_budgets(feature_chain(model, layer, (1, 28, 28)), xs, ys, "l2", eps_grid=grid, prior=prior,
                              max_pairs=0)
            inf = pb.info
            left = inf["pairs"] - inf["settled"]
            print(f"| {name} | {layer} | {inf['settled']} | {inf['settled_first_relu']} | {left} | "
                  f"{time.perf_counter() - t0:.1f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--eps", default="0.5,1.0,1.5,2.0,2.5,3.0,3.5")
    ap.add_argument("--speed-pairs", type=int, default=10)
    ap.add_argument("--models", default="standard,pgd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="write the two bound tables as CSV with this prefix")
    ap.add_argument("--settled-per-class", type=int, default=0,
                    help="count the pairs settled without a descent on this many points per class, then stop")
    args = ap.parse_args()

    from marginkit.bounds import balanced_subset, compare_layerwise
    from marginkit.data import load_dataset
    from marginkit.training import demo_model

    torch.set_num_threads(1)
    grid = [float(e) for e in args.eps.split(",")]
    models = {}
    for meth in args.models.split(","):
        mp = {"eps": 2.0} if meth == "pgd" else None
        models[meth], _ = demo_model("mlp", classes=(3, 7), depth=3, hidden=64, method=meth, method_params=mp,
                                     seed=args.seed)
        models[meth].eval()
    ds = load_dataset("mnist5k", classes=(3, 7), seed=args.seed)
    x, y = ds.split("train")
    if args.settled_per_class:
        idx = balanced_subset(y, args.settled_per_class, args.seed)
        _settled(models, x[idx].reshape(len(idx), -1).double().numpy(), y[idx].numpy(), grid)
        return
    idx = balanced_subset(y, args.per_class, args.seed)
    xs, ys = x[idx], y[idx]
    if args.speed_pairs:
        _speed(models[next(iter(models))], xs.reshape(len(xs), -1).double().numpy(), ys.numpy(), args.speed_pairs,
               ["relu1", "relu3"])
    runs = {}
    for label, nb in (("all", None), ("neighbours=1", 1)):
        t0 = time.perf_counter()
        runs[label] = compare_layerwise(models, xs, ys, "l2", grid, neighbours=nb)
        runs[label].seconds = time.perf_counter() - t0
    n = len(idx)
    pairs = args.per_class ** 2
    print(f"### Layer-wise runs: {n} points ({args.per_class} per class, seed {args.seed}), {pairs} candidate pairs "
          f"per layer, eps grid {grid}\n")
    for label, res in runs.items():
        print(f"{label}: {res.seconds:.0f} s wall\n")
    print("| model | layer | method | searched (all) | settled | programs | search s | collisions / s | "
          "searched (neighbours=1) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sa, sn in zip(runs["all"].layers, runs["neighbours=1"].layers):
        cps = sa.get("collisions_per_second")
        print(f"| {sa['model']} | {sa['layer']} | {sa.get('method')} | {sa.get('searched', 0)} | "
              f"{sa.get('settled', '')} | {sa.get('programs', 0)} | {sa.get('search_seconds', 0.0):.1f} | "
              f"{'' if cps is None or sa.get('method') != 'descent' else f'{cps:.2f}'} | {sn.get('searched', 0)} |")
    print()
    a, b = runs["all"].to_frame(), runs["neighbours=1"].to_frame()
    if args.save:
        a.to_csv(args.save + "-all.csv", index=False)
        b.to_csv(args.save + "-neighbours1.csv", index=False)
    m = a.merge(b, on=["model", "layer", "depth", "eps"], suffixes=("_all", "_n1"))
    for loss in ("cross_entropy", "zero_one"):
        print(f"#### {loss}: every pair (neighbours=1 in brackets)\n")
        for model, g in m.groupby("model", sort=False):
            layers = list(dict.fromkeys(g["layer"]))
            print(f"**{model}**\n")
            print("| eps | " + " | ".join(layers) + " |")
            print("|---|" + "---|" * len(layers))
            for eps, ge in g.groupby("eps"):
                cells = []
                for layer in layers:
                    r = ge[ge["layer"] == layer].iloc[0]
                    va, vn = r[f"{loss}_all"], r[f"{loss}_n1"]
                    cells.append(f"{va:.4f}" if abs(va - vn) < 5e-5 else f"**{va:.4f}** ({vn:.4f})")
                print(f"| {eps:g} | " + " | ".join(cells) + " |")
            print()
        worse = (m[f"{loss}_all"] < m[f"{loss}_n1"] - 1e-6).sum()
        print(f"rows where searching every pair gave a LOWER {loss} bound: {worse} (must be 0)\n")


if __name__ == "__main__":
    main()
