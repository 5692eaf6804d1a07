"""Algorithm 1 (margin-consistency paper, sec. 2.4) against the subset-only estimate, paired.

All 5000 mnist5k points (the 4000 training points the demo MLP was fitted on, then the 1000 test
points; seed-0 split) get l2 input margins from the engine once (cached under runs/repro/algorithm1/,
resumable chunk by chunk). Then, for each n and eps, ``--repeats`` random subsets of size n are drawn
(without replacement, seeded) and on each subset both estimates of the full-set robust accuracy are
formed: Algorithm 1 (threshold on the logit margin tuned on the subset, read over all N points) and
the subset's own robust accuracy. The paired difference |A1 - full| - |subset - full| (points of
robust accuracy; negative = Algorithm 1 better) is summarised by its mean with a t and a percentile
bootstrap 95% CI, and the share of subsets where Algorithm 1 is closer.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/repro_algorithm1.py            # margins, then the table
    PYTHONPATH=src python bench/repro_algorithm1.py --points test                # only the 1000 test points

Writes runs/repro/algorithm1/result.json and prints a Markdown table (copied to bench/repro.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from marginkit.attacks import input_margin
from marginkit.consistency.algorithm1 import compare_with_subset
from marginkit.data import load_dataset
from marginkit.margins.gap import smallest_gap
from marginkit.training import demo_model

OUT = os.path.join("runs", "repro", "algorithm1")


def cached_margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int, seed: int) -> np.ndarray:
    os.makedirs(OUT, exist_ok=True)
    parts = []
    for s in range(0, len(x), chunk):
        path = os.path.join(OUT, f"margins-{s:05d}-{min(s + chunk, len(x)):05d}.npy")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            res = input_margin(model, x[s:s + chunk], y[s:s + chunk], "l2")
            np.save(path, res.upper.double().cpu().numpy())
            print(f"margins {s}-{s + chunk}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        parts.append(np.load(path))
    return np.concatenate(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", choices=["all", "test"], default="all")
    ap.add_argument("--sizes", default="100,300,500")
    ap.add_argument("--eps", default="0.5,1.0,1.5,2.0")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model, ckpt = demo_model("mlp")
    model.eval()
    ds = load_dataset("mnist5k")
    x, y = torch.cat([ds.x_train, ds.x_test]), torch.cat([ds.y_train, ds.y_test])
    t0 = time.perf_counter()
    d_in = cached_margins(model, x, y, args.chunk, args.seed)  # all 5000 points, whatever --points says
    if args.points == "test":
        keep = slice(len(ds.x_train), None)
        x, y, d_in = x[keep], y[keep], d_in[keep]
    with torch.no_grad():
        logits = model(x)
    score = smallest_gap(logits).double().numpy()  # logit margin w.r.t. the prediction (eq. 4)
    correct = (logits.argmax(1) == y).numpy()
    rows = []
    for eps in [float(e) for e in args.eps.split(",")]:
        for n in [int(v) for v in args.sizes.split(",")]:
            row = compare_with_subset(score, d_in, correct, eps, n, repeats=args.repeats, seed=args.seed)
            row.pop("a1_abs_errors")
            rows.append(row)
    out = {"settings": {**vars(args), "N": len(x), "model": "demo mlp (256x2, mnist5k, standard)",
                        "model_test_accuracy": ckpt.metadata.get("test_accuracy"),
                        "accuracy_on_points": float(correct.mean()), "torch": torch.__version__},
           "seconds": time.perf_counter() - t0, "rows": rows,
           "d_in_summary": {"finite": int(np.isfinite(d_in).sum()), "median": float(np.median(d_in[correct]))}}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"result-{args.points}.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"N={len(x)} ({args.points}), accuracy {100 * correct.mean():.2f}%, {args.repeats} subsets per row, seed {args.seed}")
    print("| eps | n | full-set RA % | A1 mean abs err | subset-only mean abs err | paired diff (A1 - subset) | t 95% CI | bootstrap 95% CI | Wilcoxon p | A1 closer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['eps']:g} | {r['n']} | {r['full']:.2f} | {r['a1_mae']:.2f} | {r['subset_mae']:.2f} | {r['mean']:+.2f} | "
              f"[{r['t_lo']:+.2f}, {r['t_hi']:+.2f}] | [{r['boot_lo']:+.2f}, {r['boot_hi']:+.2f}] | {r['p_wilcoxon']:.2g} | "
              f"{100 * r['a1_closer']:.0f}% |")


if __name__ == "__main__":
    main()
