"""Multiclass Fisher consistency of eq. (15) (min-vs-average margin paper) at the population level.

1. Score level (orthonormal head, scores free per point), exact per-point minimisation
   (:func:`marginkit.training.fisher.score_level_check`): random discrete distributions (5 points,
   C in {3, 5} classes, posteriors ~ Dirichlet(a), a in {0.3, 1, 5}, --dists distributions each) x
   lam in {0, 0.01, 0.1, 1, 10, 100} x tau in {0.1, 1, 5, 40}.
2. As trained (shared head with normalised rows and a bias, free features, orthogonality beta): Adam
   from several starts (:func:`head_level_check`) on two hand-made distributions with near ties and a
   dominant class, lam in {0.1, 1}, beta in {1e-3, 1}, tau 1 (``--no-bias``: a head without bias;
   ``--hunt N``: N random distributions at lam 1, beta 1e-3).
3. ``--biased``: the beta -> infinity limit (orthogonal head) with a bias, exact per point
   (:func:`biased_head_check`): the bias on a grid, then Nelder-Mead.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/repro_fisher.py
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from marginkit.training.fisher import (HAND_DISTRIBUTIONS, biased_head_check, head_level_check, random_posteriors,
                                      score_level_grid)

HAND = HAND_DISTRIBUTIONS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-steps", type=int, default=800)
    ap.add_argument("--head-restarts", type=int, default=3)
    ap.add_argument("--skip-head", action="store_true")
    ap.add_argument("--hunt", type=int, default=0,
                    help="also run the head-level check on this many random distributions (4 points, 3 classes, "
                         "Dirichlet(2)) at lam 1, tau 1, beta 1e-3")
    ap.add_argument("--biased", action="store_true",
                    help="orthogonal head with a bias, exact scores, bias on a 21 x 21 grid then Nelder-Mead")
    ap.add_argument("--no-bias", action="store_true", help="head without a bias (the margin term never sees one)")
    ap.add_argument("--dists", type=int, default=30, help="random distributions per (classes, concentration)")
    ap.add_argument("--hand", default=",".join(HAND), help="hand-made distributions for the head-level check")
    args = ap.parse_args()
    t0 = time.perf_counter()
    score_rows = score_level_grid(args.dists)
    n_ok = sum(r["consistent"] for r in score_rows)
    print(f"score level: {n_ok}/{len(score_rows)} (distribution, lam, tau) cases consistent; "
          f"smallest slack {min(r['min_slack'] for r in score_rows):.3g}; {time.perf_counter() - t0:.0f} s")
    head_rows = []
    if not args.skip_head:
        for name in args.hand.split(","):
            p, eta = HAND[name]
            for lam in (0.1, 1.0):
                for beta in (1e-3, 1.0):
                    t1 = time.perf_counter()
                    chk = head_level_check(p, eta, lam, 1.0, beta, restarts=args.head_restarts, steps=args.head_steps,
                                           bias=not args.no_bias)
                    row = {"dist": name, **chk.to_dict(), "seconds": time.perf_counter() - t1}
                    head_rows.append(row)
                    print(f"| {name} | {lam} | {beta} | {chk.consistent} | {chk.predicted} (Bayes {chk.bayes}) | "
                          f"{chk.risk:.4f} | {chk.detail['best_bayes_risk']} | {chk.detail['score_level_risk']:.4f} | "
                          f"{[round(v, 3) for v in chk.detail['row_norms']]} | {[round(v, 3) for v in chk.detail['bias']]} |",
                          flush=True)
    if args.biased:
        for name in args.hand.split(","):
            p, eta = HAND[name]
            for lam in (0.1, 1.0):
                chk = biased_head_check(p, eta, lam, 1.0, steps=21)
                head_rows.append({"dist": name, **chk.to_dict()})
                print(f"| {name} | {lam} | orthogonal+bias | {chk.consistent} | {chk.predicted} (Bayes {chk.bayes}) | "
                      f"{chk.risk:.4f} | {chk.detail['bayes_risk']:.4f} | {[round(v, 3) for v in chk.detail['bias']]} |",
                      flush=True)
    for d in range(args.hunt):
        eta = random_posteriors(4, 3, concentration=2.0, seed=500 + d)
        p = np.random.default_rng(500 + d).dirichlet(np.ones(4))
        chk = head_level_check(p, eta, 1.0, 1.0, 1e-3, restarts=args.head_restarts, steps=args.head_steps,
                               bias=not args.no_bias)
        head_rows.append({"dist": f"random-{500 + d}", **chk.to_dict()})
        print(f"| random-{500 + d} | 1.0 | 0.001 | {chk.consistent} | {chk.predicted} (Bayes {chk.bayes}) | {chk.risk:.4f} | "
              f"{chk.detail['best_bayes_risk']} | {chk.detail['score_level_risk']:.4f} | "
              f"{[round(v, 3) for v in chk.detail['row_norms']]} |", flush=True)
    os.makedirs(os.path.join("runs", "repro"), exist_ok=True)
    tag = "-".join([*(["nobias"] if args.no_bias else []), *(["hunt"] if args.hunt else []),
                    *(["biased"] if args.biased else [])]) or "main"
    with open(os.path.join("runs", "repro", f"fisher-{tag}.json"), "w") as fh:
        json.dump({"settings": vars(args), "score": score_rows, "head": head_rows,
                   "seconds": time.perf_counter() - t0}, fh)


if __name__ == "__main__":
    main()
