"""How much each ALMA run adds on the tail: marginkit's schedule with one ALMA run of a given initial step
size on every sample, for several step sizes, and the per-sample minimum over every subset of them,
against the stored per-sample peer norms of the last full ``bench/attacks_compare.py`` run.

    OMP_NUM_THREADS=1 python bench/alma_runs.py --model cnn --norm l2 --lrs scaled,0.1,0.03,0.2,0.5,1.0
    OMP_NUM_THREADS=1 python bench/alma_runs.py --model cnn --norm l1 --offset 100 --alm-steps 150 --set ball_steps=50 \
        --lrs scaled,0.05,0.1,0.2,0.3,0.5,0.7,1.0,1.5,2.0,3.0,5.0,7.0,10.0,20.0

``--offset K`` takes the points K, K+1, ... of the same list (correct under every demo model) instead of the
benchmark's first ones, so that a schedule can be chosen on points the benchmark does not report; their
reference is then the long peer runs of ``attacks_probe.reference`` (adv-lib ALMA 1000 and ``--ref-steps``
steps, FMN ``--ref-steps``, FAB 100 iterations, DDN in l2: the peers that were best on the benchmark's points).

Each call is ``input_margin(..., alma_lrs=(lr,), alma_more=(), alma_long=0, agree_rtol=-1)``: the projection and ball
steps, then one ALMA run (``alm_steps``, default 300) on every sample (a negative ``agree_rtol`` makes
every pair of methods "disagree"), so a subset's minimum is what a schedule running those ALMA runs
everywhere would report. Prints, per subset size, the best, median and worst subset's p95 ratio.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import attacks_compare as ac  # noqa: E402
from attacks_probe import _points, _value, best_peer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--lrs", default="scaled,0.1,0.03,0.2,0.5,1.0")
    ap.add_argument("--alm-steps", type=int, default=300)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0, help="first point (0: the benchmark's points, stored peers)")
    ap.add_argument("--ref-steps", type=int, default=1332, help="steps of the long peer runs when --offset > 0")
    ap.add_argument("--set", action="append", default=[], help="extra input_margin option key=value (int if it parses)")
    ap.add_argument("--raw", default="runs/bench_attacks/per_sample.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from marginkit.attacks import input_margin

    models, x, y = _points(args.offset + args.points)
    x, y = x[args.offset:], y[args.offset:]
    model = models[args.model]
    m64 = copy.deepcopy(model).double().eval()
    best = best_peer(args.model, model, x, y, args.norm, args.offset, args.raw, args.ref_steps)
    extra = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    names = args.lrs.split(",")
    vals = []
    for name in names:
        lr = None if name == "scaled" else float(name)
        res = input_margin(model, x, norm=args.norm, alm_steps=args.alm_steps, alma_lrs=(lr,), alma_more=(), alma_long=0,
                           agree_rtol=-1.0, return_adv=True, **extra)
        vals.append(ac.judge(m64, x, y, res.adversarial, args.norm))
        r = vals[-1] / best
        print(f"{args.model} {args.norm} one {args.alm_steps}-step ALMA run, initial step {name}: median {np.median(r):.4f} "
              f"p95 {np.quantile(r, 0.95):.4f} passes {res.passes.float().mean():.0f}", flush=True)
    vals = np.stack(vals)
    print("| runs | subsets | p95 ratio to the best peer: best / median / worst subset | best subset |")
    print("|---|---|---|---|")
    for k in range(1, len(names) + 1):
        q = sorted((float(np.quantile(vals[list(c)].min(0) / best, 0.95)), c) for c in itertools.combinations(range(len(names)), k))
        print(f"| {k} | {len(q)} | {q[0][0]:.4f} / {q[len(q) // 2][0]:.4f} / {q[-1][0]:.4f} | {', '.join(names[i] for i in q[0][1])} |")


if __name__ == "__main__":
    main()
