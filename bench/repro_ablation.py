"""Controlled margin ablation (review of the min-vs-average margin paper): robust accuracy against the
training data's average margin at a fixed minimum margin and 100% training accuracy.

Data: :func:`marginkit.training.ablation.separable_data` (dim 20, 400 training points, 10 anchor pairs at
the minimum margin 0.1, the rest at exponential excess distances scaled to an average margin of 0.5 or
2.0; same seed = same points up to their distance along u). Classifiers: logistic regression by
full-batch GD (2000 steps from 0), the hard-margin SVM (cvxpy + Clarabel), a 20-64-2 ReLU MLP (Adam,
300 full-batch epochs). Margins: exact (linear), input-margin engine l2 upper bounds (MLP, box [-50, 50]).
Robust accuracy is read on 220 test points of the same distribution ("own") and of the avg-0.5
distribution ("common": the same points for both conditions). Paired differences (avg 2.0 minus avg
0.5) over seeds with t 95% CIs.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/repro_ablation.py --seeds 0,1,2,3,4

Writes runs/repro/ablation.json and prints the tables of bench/repro.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

from marginkit.training.ablation import AblationConfig, run_ablation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--classifiers", default="logreg,svm,mlp")
    args = ap.parse_args()
    cfg = replace(AblationConfig(), seeds=tuple(int(s) for s in args.seeds.split(",")),
                  classifiers=tuple(args.classifiers.split(",")))
    t0 = time.perf_counter()
    res = run_ablation(cfg, progress=True)
    seconds = time.perf_counter() - t0
    os.makedirs(os.path.join("runs", "repro"), exist_ok=True)
    with open(os.path.join("runs", "repro", "ablation.json"), "w") as fh:
        json.dump({**res.to_dict(), "seconds": seconds}, fh)
    lo, hi = cfg.avg_margins[0], cfg.avg_margins[-1]
    print(f"{seconds:.0f} s; paired differences (data avg margin {hi} minus {lo}), mean [t 95% CI], {len(cfg.seeds)} seeds")
    keys = ["accuracy", "min_margin", "avg_margin"] + [f"robust@{e:g}" for e in cfg.eps]
    for test in ("train", "own", "common"):
        print(f"\n{test} points")
        print("| classifier | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for clf in cfg.classifiers:
            cells = []
            for k in keys:
                if not any(k in r for r in res.rows if r["classifier"] == clf and r["test"] == test):
                    cells.append("-")
                    continue
                d = res.paired(clf, test, k)
                cells.append(f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
            print(f"| {clf} | " + " | ".join(cells) + " |")
        print(f"\nlevels at avg {lo} (mean over seeds)")
        for clf in cfg.classifiers:
            rows = [r for r in res.rows if r["classifier"] == clf and r["test"] == test and r["data_avg_margin"] == lo]
            print(f"| {clf} | " + " | ".join(f"{sum(r.get(k, float('nan')) for r in rows) / len(rows):.3f}" for k in keys) + " |")
    cos = {(r["classifier"], r["data_avg_margin"]): [] for r in res.rows if "cosine_to_u" in r and r["test"] == "train"}
    for r in res.rows:
        if "cosine_to_u" in r and r["test"] == "train":
            cos[(r["classifier"], r["data_avg_margin"])].append(r["cosine_to_u"])
    print("\ncosine(w, u):", {f"{k[0]}@{k[1]}": round(sum(v) / len(v), 4) for k, v in cos.items()})


if __name__ == "__main__":
    main()
