"""Minimum / average margin during training on FIXED point sets, several seeds (min-vs-average margin paper, Fig. 6).

Setting of docs/dynamics.md: the paper's MNIST MLP (784-1024-10) with the ``cpu-mnist-mlp-std`` preset
(SGD 0.01, Nesterov 0.9, batch 128, 25 epochs), the Theorem 3 estimate (r = 5, l2, ``--samples`` per
point) every 5 epochs on the first 300 train and 300 test points of mnist5k. Each seed changes the
data split, the initialisation and the batch order. Every point's signed margin is recorded
(:class:`marginkit.training.fixedset.FixedSetTracker`) and summarised over the set of points correct
at each record (what the paper and MarginTracker report) and over fixed sets.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/repro_fixedset.py --seeds 0,1,2

Writes runs/repro/fixedset.json and prints the tables of bench/repro.md.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from scipy import stats

from marginkit.training.fixedset import SUBSETS, fixed_set_run


def ci(v: list[float]) -> str:
    a = np.asarray(v, dtype=float)
    if len(a) < 2:
        return f"{a.mean():.3g}"
    h = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return f"{a.mean():.3g} [{a.mean() - h:.3g}, {a.mean() + h:.3g}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--points", type=int, default=300)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--out", default=os.path.join("runs", "repro", "fixedset.json"))
    args = ap.parse_args()
    runs = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs[seed] = fixed_set_run("cpu-mnist-mlp-std", seed=seed, points=args.points, samples=args.samples,
                                   epochs=args.epochs, every=args.every)
        print(f"seed {seed}: {runs[seed]['seconds']:.0f} s, test accuracy {runs[seed]['test_accuracy']:.4f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"settings": vars(args), "torch": torch.__version__, "runs": runs}, fh)

    seeds = list(runs)
    first = args.every  # the comparison of docs/dynamics.md: epoch `every` against the last epoch
    for split in ("train", "test"):
        print(f"\n{split}: per seed, epoch {first} -> {args.epochs}; mean [t 95% CI] over {len(seeds)} seeds")
        print("| set | size at last epoch | min margin, first | min margin, last | ratio last/first | avg margin first | avg margin last | change |")
        print("|---|---|---|---|---|---|---|---|")
        for sub in SUBSETS:
            rows = [runs[s]["summaries"][split][sub] for s in seeds]
            i0 = [r["epochs"].index(first) for r in rows]
            key = "avg_abs_margin" if sub == "all" else "avg_margin"
            mn0 = [r["min_margin"][i] for r, i in zip(rows, i0)]
            mn1 = [r["min_margin"][-1] for r in rows]
            av0 = [r[key][i] for r, i in zip(rows, i0)]
            av1 = [r[key][-1] for r in rows]
            ratio = [b / a if a > 0 else float("nan") for a, b in zip(mn0, mn1)]
            print(f"| {sub} | {', '.join(str(r['size'][-1]) for r in rows)} | {', '.join(f'{v:.4f}' for v in mn0)} | "
                  f"{', '.join(f'{v:.4f}' for v in mn1)} | {', '.join(f'{v:.2f}' for v in ratio)} | "
                  f"{ci(av0)} | {ci(av1)} | {ci([b - a for a, b in zip(av0, av1)])} |")


if __name__ == "__main__":
    main()
