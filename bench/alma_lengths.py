"""Where one adv-lib ALMA run ends, against its number of steps: the benchmark's pass-matched ALMA runs as
many steps as marginkit spends passes / 2, so every change of marginkit's pass count also changes that
peer's run. This script runs adv-lib's ALMA (its defaults but ``num_steps``) at several lengths on a few of
the benchmark's points, batched together, and prints the judged norm per sample (float64, in the box, as in
``bench/attacks_compare.py``):

    OMP_NUM_THREADS=1 python bench/alma_lengths.py --model cnn --norm l1 --samples 11,94,64,39,92,79 \
        --steps 1000,2000,3000,3876,3922,4000,5000

The same run in a batch of other samples can end elsewhere (the benchmark runs all 100 points together).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import attacks_compare as ac  # noqa: E402
from attacks_probe import _points  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--norm", default="l1", choices=("l1", "l2"))
    ap.add_argument("--samples", default="11,94,64,39,92,79", help="indices among the benchmark's 100 points")
    ap.add_argument("--steps", default="1000,2000,4000")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ac._stub_modules()
    import adv_lib.attacks as al

    idx = [int(v) for v in args.samples.split(",")]
    allm, x, y = _points(max(idx) + 1)
    model = allm[args.model]
    m64 = copy.deepcopy(model).double().eval()
    xs, ys = x[idx], y[idx]
    print(f"{args.model} {args.norm}, samples " + " ".join(f"#{i}" for i in idx))
    print("| steps | " + " | ".join(f"#{i}" for i in idx) + " | s |")
    print("|---|" + "---|" * (len(idx) + 1))
    for steps in (int(v) for v in args.steps.split(",")):
        t0 = time.perf_counter()
        adv = al.alma(model, xs, ys, distance=args.norm, num_steps=steps)
        val = ac.judge(m64, xs, ys, adv, args.norm)
        print(f"| {steps} | " + " | ".join(f"{v:.3f}" for v in val) + f" | {time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
