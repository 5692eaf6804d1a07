"""Issue 19: Table 1 of the min-vs-average margin paper with seeds, CIs, the CNN row and a gradient-masking check.

For each preset (``cpu-mnist-{mlp,cnn}-{std,lcr,amr}``, optionally ``cpu-mnist-mlp-pgd``) and seed, the
model is trained through the zoo (``marginkit.pipeline.zoo.train_zoo``: cached by settings, resumable)
and evaluated on the same mnist5k test points: clean accuracy, l2 PGD robust accuracy at eps 0.5, 1, 1.5,
2 (``--pgd-steps`` steps of 2.5 eps / steps, one start), the robust accuracy read from the input-margin
engine's minimal-norm margins at the same eps, and the average margin of correctly classified points
(Theorem 3 Lipschitz estimate with r = 5 and ``--lip-samples`` samples, and the engine's upper bound).
The gradient-masking check is the difference PGD minus margin at eps 2: positive means PGD calls
points robust on which the engine found a flip within eps 2.

    OMP_NUM_THREADS=1 python bench/repro_table1.py                          # cpu presets' epochs, 3 seeds
    OMP_NUM_THREADS=1 python bench/repro_table1.py --mlp-epochs 5 --cnn-epochs 3 --points 200   # shortened

The same command continues a stopped run (models, margins and rows are cached under --cache).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import torch

EPS = (0.5, 1.0, 1.5, 2.0)
# The paper's Table 1 (MNIST): clean, PGD at eps 0.5 / 1 / 1.5 / 2, average margin.
PAPER = {
    ("mlp", "std"): (98.24, 89.26, 49.23, 15.78, 5.06, 0.80),
    ("mlp", "lcr"): (95.99, 91.12, 80.62, 60.56, 34.07, 1.36),
    ("mlp", "amr"): (96.01, 91.18, 81.01, 62.93, 38.44, 1.41),
    ("cnn", "std"): (99.14, 95.95, 90.48, 88.72, 87.52, 1.01),
    ("cnn", "lcr"): (99.29, 97.21, 87.83, 58.30, 26.96, 1.34),
    ("cnn", "amr"): (99.25, 97.90, 97.60, 97.51, 97.33, 1.40),
}


def mean_ci(values):
    from scipy import stats

    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def fmt(m, h, scale=100.0, digits=1):
    if math.isnan(m):
        return "n/a"
    return f"{scale * m:.{digits}f}" if math.isnan(h) else f"{scale * m:.{digits}f} ± {scale * h:.{digits}f}"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mlp,cnn")
    ap.add_argument("--methods", default="std,lcr,amr")
    ap.add_argument("--with-pgd", action="store_true", help="add the cpu-mnist-mlp-pgd row (PGD-AT l2 eps 2)")
    ap.add_argument("--prefix", default="cpu-mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--mlp-epochs", type=int, default=None, help="override the MLP presets' epochs")
    ap.add_argument("--cnn-epochs", type=int, default=None, help="override the CNN presets' epochs")
    ap.add_argument("--points", type=int, default=250)
    ap.add_argument("--pgd-steps", type=int, default=50)
    ap.add_argument("--preset", default="default", help="input-margin engine preset")
    ap.add_argument("--lip-samples", type=int, default=64)
    ap.add_argument("--cache", default="runs/table1-zoo")
    ap.add_argument("--out", default="bench/repro_table1.md")
    args = ap.parse_args()

    from marginkit.models.checkpoint import load_checkpoint
    from marginkit.pipeline.zoo import evaluate_zoo, train_zoo, zoo_margins, zoo_test_points
    from marginkit.results import library_versions
    from marginkit.results.jsonio import read_json, write_json
    from marginkit.training import lipschitz_margin
    from marginkit.training.model_zoo import ZooEntry

    t_start = time.perf_counter()
    load_start = uptime()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [(a, m) for a in args.archs.split(",") for m in args.methods.split(",")]
    if args.with_pgd:
        names.append(("mlp", "pgd"))
    entries, rows_of = [], []
    for arch, meth in names:
        epochs = args.mlp_epochs if arch == "mlp" else args.cnn_epochs
        for s in seeds:
            entries.append(ZooEntry.from_preset(f"{args.prefix}-{arch}-{meth}", seed=s, epochs=epochs))
            rows_of.append((arch, meth))
    t0 = time.perf_counter()
    models = train_zoo(entries, args.cache, progress=True)
    train_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    mets = evaluate_zoo(models, n_points=args.points, eps=EPS, norm="l2", seed=0, detection_eps=1.0,
                        engine_preset=args.preset, pgd_steps=args.pgd_steps, progress=True)
    # Average margins of correctly classified points: Theorem 3's estimate and the engine's upper bound.
    avg = []
    for zm_model, met in zip(models, mets):
        path = os.path.join(args.cache, f"{zm_model.entry.key()}.avgmargin-n{args.points}-s{args.lip_samples}.json")
        if os.path.exists(path):
            avg.append(read_json(path))
            continue
        zm = zoo_margins(zm_model, split="test", n_points=args.points, seed=0, norm="l2", preset=args.preset)
        model, _ = load_checkpoint(zm_model.path)
        model.eval()
        x, y = zoo_test_points(zm_model.entry, args.points, 0)
        lip = lipschitz_margin(model, x, y, "l2", radius=5.0, samples=args.lip_samples, seed=0).bound
        c = torch.as_tensor(zm.correct)
        d = zm.margin[zm.correct]
        rec = {"lipschitz": float(lip[c].double().mean()), "engine": float(d[np.isfinite(d)].mean()),
               "engine_no_flip": int((~np.isfinite(d)).sum())}
        write_json(path, rec)
        avg.append(rec)
    eval_wall = time.perf_counter() - t0

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, key in enumerate(rows_of):
        groups[key].append(i)
    L: list[str] = []
    add = L.append
    add("# Table 1 of the min-vs-average margin paper: seeds, CIs, the CNN row and a gradient-masking check")
    add("")
    add("Produced by")
    add("")
    add(f"    OMP_NUM_THREADS=1 PYTHONPATH=src python {' '.join(sys.argv)}")
    add("")
    e_mlp = next((e for e in entries if e.arch == "mlp"), None)
    e_cnn = next((e for e in entries if e.arch == "cnn"), None)
    add(f"Presets `{args.prefix}-*` (training/presets.py: SGD lr 0.01, momentum 0.9, Nesterov, batch 128; AMR lambda 0.1, "
        "beta 1e-3, tau 5 (MLP) / 10 (CNN); LCR beta 1e-3). "
        + (f"MLP 784-1024-10 trained {e_mlp.epochs} epochs (paper: 200). " if e_mlp else "")
        + (f"CNN 2 x (conv3x3, ReLU, maxpool) with 16/32 channels and dense 128, {e_cnn.epochs} epochs (paper: the "
           "Carlini-Wagner CNN, 32/64 channels twice and dense 200, 200 epochs). " if e_cnn else "")
        + f"Data: mnist5k (4000 train digits vs the paper's 60,000), split seed 0. Seeds {seeds}; mean ± 95% t-interval over "
        f"seeds. Evaluation on the same n = {mets[0].n} test points for every model: l2 PGD with {args.pgd_steps} steps of "
        f"2.5 eps / steps from x (paper: 1000 steps of 0.01), robust accuracy read from the engine's margins (preset "
        f"`{args.preset}`), average margin over correctly classified points (Theorem 3 estimate, r = 5, "
        f"{args.lip_samples} samples; engine upper bound).")
    add("")
    add(f"Machine: 2 shared CPU cores; load at start `{load_start}`.")
    add("")
    hdr = ["model", "method", "seeds", "clean %"] + [f"PGD {e:g} %" for e in EPS] + [f"margin {e:g} %" for e in EPS] + [
        "PGD - margin @2 (pts)", "avg margin (Thm 3)", "avg margin (engine)"]
    add("| " + " | ".join(hdr) + " |")
    add("|" + "---|" * len(hdr))
    for (arch, meth), idx in groups.items():
        ms = [mets[i] for i in idx]
        cells = [arch, meth, str(len(ms)), fmt(*mean_ci([m.accuracy for m in ms]))]
        cells += [fmt(*mean_ci([m.robust_acc_pgd[e] for m in ms])) for e in EPS]
        cells += [fmt(*mean_ci([m.robust_acc_margin[e] for m in ms])) for e in EPS]
        cells += [fmt(*mean_ci([m.pgd_excess[2.0] for m in ms]))]
        cells += [fmt(*mean_ci([avg[i]["lipschitz"] for i in idx]), scale=1.0, digits=3),
                  fmt(*mean_ci([avg[i]["engine"] for i in idx]), scale=1.0, digits=3)]
        add("| " + " | ".join(cells) + " |")
        if (arch, meth) in PAPER:
            p = PAPER[(arch, meth)]
            add(f"| paper | {meth} | ? | {p[0]:.2f} | " + " | ".join(f"{v:.2f}" for v in p[1:5]) + " | | | | | | "
                f"{p[5]:.2f} | |")
    add("")
    add("Per seed (PGD / margin robust accuracy at eps 2, and the excess):")
    add("")
    add("| model | method | seed | key | clean % | PGD@2 % | margin@2 % | excess (pts) | train s |")
    add("|---|---|---|---|---|---|---|---|---|")
    for i, (m, zm_model) in enumerate(zip(mets, models)):
        arch, meth = rows_of[i]
        add(f"| {arch} | {meth} | {m.entry.seed} | `{m.key}` | {100 * m.accuracy:.1f} | {100 * m.robust_acc_pgd[2.0]:.1f} | "
            f"{100 * m.robust_acc_margin[2.0]:.1f} | {100 * m.pgd_excess[2.0]:+.1f} | {zm_model.seconds:.0f} |")
    add("")
    total = time.perf_counter() - t_start
    add(f"Wall time of this invocation: {total:.0f} s (training {train_wall:.0f} s, evaluation {eval_wall:.0f} s; cached "
        f"parts cost nothing). Load at the end: `{uptime()}`.")
    md = "\n".join(L) + "\n"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(md)
    write_json(os.path.join(args.cache, "table1.json"), {
        "args": vars(args), "models": [m.to_dict() for m in mets], "avg_margin": avg, "versions": library_versions(),
        "seconds": {"total": total, "train": train_wall, "evaluate": eval_wall}})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
