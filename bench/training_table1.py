"""Table 1 analogue of the min-vs-average margin paper on mnist5k: Std / LCR / AMR for an MLP and a CNN.

For each model: clean accuracy, l2 PGD robust accuracy at eps 0.5, 1.0, 1.5, 2.0, the robust accuracy
read from minimal-norm margins (input-margin engine), and the average margin of correctly classified
test points (the paper's Theorem 3 Lipschitz estimate, and the engine's upper bound).

    python bench/training_table1.py                  # cpu-* presets, 250 test points (docs/dynamics.md)
    python bench/training_table1.py --n-test 100 --epochs 2   # smoke run

Trained models are cached under --out (resumable); results go to --out/table1.json and table1.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from marginkit.models.checkpoint import load_checkpoint, save_checkpoint
from marginkit.results import library_versions
from marginkit.training import lipschitz_margin, pgd_robust_accuracy
from marginkit.training.presets import get_preset, train_preset

EPS = (0.5, 1.0, 1.5, 2.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mlp,cnn")
    ap.add_argument("--methods", default="std,lcr,amr")
    ap.add_argument("--prefix", default="cpu-mnist")
    ap.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    ap.add_argument("--n-test", type=int, default=250)
    ap.add_argument("--pgd-steps", type=int, default=50)
    ap.add_argument("--engine-budget", type=int, default=300, help="passes per sample for the input-margin engine")
    ap.add_argument("--lip-samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/table1")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for arch in args.archs.split(","):
        for meth in args.methods.split(","):
            name = f"{args.prefix}-{arch}-{meth}"
            preset = get_preset(name)
            over = {} if args.epochs is None else {"epochs": args.epochs}
            tag = f"{name}-e{args.epochs or preset.train['epochs']}-s{args.seed}"
            path = os.path.join(args.out, f"{tag}.pt")
            row_path = os.path.join(args.out, f"{tag}-n{args.n_test}-k{args.pgd_steps}-b{args.engine_budget}.json")
            if os.path.exists(row_path):  # evaluated before with the same settings: reuse (resumable runs)
                with open(row_path) as f:
                    rows.append(json.load(f))
                print(json.dumps(rows[-1]), flush=True)
                continue
            if os.path.exists(path):
                model, ck = load_checkpoint(path)
                meta = ck.metadata
            else:
                t0 = time.perf_counter()
                res, spec, ds = train_preset(name, seed=args.seed, progress=True,
                                             checkpoint_dir=os.path.join(args.out, f"{tag}-state"), **over)
                meta = {"preset": name, "train_seconds": time.perf_counter() - t0, "history": res.history,
                        "test_accuracy_full": res.test_accuracy, "settings": res.settings}
                save_checkpoint(path, res.model, spec, meta)
                model, _ = load_checkpoint(path)
            model.eval()
            from marginkit.data import load_dataset

            ds = load_dataset("mnist5k", seed=args.seed)
            x, y = ds.x_test[: args.n_test], ds.y_test[: args.n_test]
            t0 = time.perf_counter()
            ra = pgd_robust_accuracy(model, x, y, "l2", EPS, steps=args.pgd_steps, margins="attack", seed=args.seed,
                                 engine_options={"budget": args.engine_budget})
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            lip = lipschitz_margin(model, x, y, "l2", radius=5.0, samples=args.lip_samples, seed=args.seed).bound
            eng = ra.margins
            row = {"arch": arch, "method": meth, "preset": name, "epochs": args.epochs or preset.train["epochs"],
                   "clean": ra.clean_accuracy, "test_accuracy_full": meta.get("test_accuracy_full"),
                   **{f"pgd@{e}": float(v) for e, v in zip(EPS, ra.table["pgd_robust_accuracy"])},
                   **{f"margin@{e}": float(v) for e, v in zip(EPS, ra.table["margin_robust_accuracy"])},
                   "avg_margin_lipschitz": float(lip[correct].mean()),
                   "avg_margin_engine": float(eng[correct][torch.isfinite(eng[correct])].mean()),
                   "engine_failed": int((~torch.isfinite(eng[correct])).sum()),
                   "train_seconds": meta.get("train_seconds"), "eval_seconds": time.perf_counter() - t0}
            with open(row_path, "w") as f:
                json.dump(row, f)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows, "args": vars(args), "versions": library_versions(), "command": " ".join(sys.argv)}
    with open(os.path.join(args.out, "table1.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| model | method | clean | " + " | ".join(f"PGD eps={e}" for e in EPS) + " | "
             + " | ".join(f"margin eps={e}" for e in EPS) + " | avg margin (Lipschitz) | avg margin (engine) |",
             "|" + "---|" * (4 + 2 * len(EPS) + 1)]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['method']} | {100 * r['clean']:.1f} | "
                     + " | ".join(f"{100 * r[f'pgd@{e}']:.1f}" for e in EPS) + " | "
                     + " | ".join(f"{100 * r[f'margin@{e}']:.1f}" for e in EPS)
                     + f" | {r['avg_margin_lipschitz']:.3f} | {r['avg_margin_engine']:.3f} |")
    md = "\n".join(lines)
    with open(os.path.join(args.out, "table1.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
