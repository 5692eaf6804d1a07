"""Run the paper's experiments (marginkit.bounds.presets) end to end through
marginkit.pipeline.run_bounds_preset (the same path as ``marginkit bounds --preset NAME``): train each
preset's models (cached under runs/models/bounds-presets), compute the layer-wise bounds with every candidate
pair searched, print the tables.

    python bench/bounds_presets.py fig2-first-linear fig11-cnn-first-conv --out runs/bounds/presets
    python bench/bounds_presets.py fig6-width --layers input,fc1
    python bench/bounds_presets.py fig3-layers-standard --quick
    python bench/bounds_presets.py fig4-layers-pgd fig5-relu2-methods fig6-width --quick --workers 2

Prints Markdown (cross-entropy and 0-1 bounds per model, layer and eps), the models' test accuracy and the
share of pairs searched per layer.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("presets", nargs="+")
    ap.add_argument("--out", default="runs/bounds/presets")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--neighbours", type=int, default=0, help="0: every candidate pair")
    ap.add_argument("--no-settle", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", default=None, help="comma-separated layers replacing the presets' own")
    ap.add_argument("--workers", type=int, default=None, help="spread the pair searches over N local Ray workers")
    args = ap.parse_args()

    from marginkit.bounds.presets import get_preset
    from marginkit.pipeline import run_bounds_preset
    from marginkit.report.bounds_plots import write_bounds_report

    torch.set_num_threads(1)
    executor = None
    if args.workers:
        from marginkit.parallel import ExecutorConfig

        executor = ExecutorConfig(workers=args.workers)
    for name in args.presets:
        p = get_preset(name)
        out = os.path.join(args.out, name + ("-quick" if args.quick else ""))
        t0 = time.perf_counter()
        run = run_bounds_preset(name, out, quick=args.quick, settle=not args.no_settle, seed=args.seed, executor=executor,
                                neighbours=args.neighbours or None,
                                layers=tuple(args.layers.split(",")) if args.layers else None)
        write_bounds_report(run, out)
        df = run.table
        print(f"## {name} ({p.figure}), {run.settings['points']} points, {time.perf_counter() - t0:.0f} s\n")
        print("test accuracy: " + ", ".join(f"{k} {v['test_accuracy']:.4f}" for k, v in run.settings["models"].items())
              + "\n")
        rows = [s for s in run.settings["layer_stats"] if s.get("method") == "descent"]
        if rows:
            print("| model | layer | pairs | searched | settled | share searched or settled | programs | search s |")
            print("|---|---|---|---|---|---|---|---|")
            for s in rows:
                share = (s.get("searched", 0) + s.get("settled", 0)) / max(s["pairs"], 1)
                print(f"| {s['model']} | {s['layer']} | {s['pairs']} | {s.get('searched', 0)} | {s.get('settled', 0)} | "
                      f"{100 * share:.1f} % | {s.get('programs', 0)} | {s.get('search_seconds', 0):.1f} |")
            print()
        for loss in ("cross_entropy", "zero_one"):
            t = df.pivot_table(index="eps", columns=["model", "layer"], values=loss, sort=False)
            print(f"### {loss}\n")
            cols = [f"{m}/{layer}" for m, layer in t.columns]
            print("| eps | " + " | ".join(cols) + " |")
            print("|---|" + "---|" * len(cols))
            for eps, row in t.iterrows():
                print(f"| {eps:g} | " + " | ".join(f"{v:.4f}" for v in row.to_numpy()) + " |")
            print()


if __name__ == "__main__":
    main()
