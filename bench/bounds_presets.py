"""Run the paper's experiments (marginkit.bounds.presets) end to end: train each preset's models with
marginkit.training (cached under runs/models/presets), compute the layer-wise bounds, print the tables.

    python bench/bounds_presets.py fig2-first-linear fig11-cnn-first-conv --out runs/bounds/presets
    python bench/bounds_presets.py fig6-width --layers input,fc1
    python bench/bounds_presets.py fig3-layers-standard --quick --neighbours 1

Prints Markdown (cross-entropy and 0-1 bounds per model, layer and eps) and the models' test accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch


def _trainer(dataset, input_shape, num_classes, seed, cache, accuracies):
    from marginkit.bounds.presets import build_extractor
    from marginkit.models import load_torch_file
    from marginkit.training import TrainConfig, get_method, train_model

    def train(recipe):
        key = hashlib.sha256(json.dumps({**recipe.to_dict(), "seed": seed, "data": dataset.fingerprint()},
                                        sort_keys=True).encode()).hexdigest()[:12]
        path = os.path.join(cache, f"{recipe.arch}-{recipe.label}-{key}.pt")
        model = build_extractor(recipe, input_shape, num_classes, seed)
        if os.path.exists(path):
            state = load_torch_file(path, what="cached preset model")
            model.load_state_dict(state["model"])
            accuracies[recipe.label] = state["test_accuracy"]
            return model.eval()
        res = train_model(model, dataset, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, seed=seed),
                          get_method(recipe.method, **dict(recipe.params)))
        os.makedirs(cache, exist_ok=True)
        torch.save({"model": res.model.state_dict(), "test_accuracy": res.test_accuracy}, path)
        accuracies[recipe.label] = res.test_accuracy
        return res.model.eval()

    return train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("presets", nargs="+")
    ap.add_argument("--out", default="runs/bounds/presets")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--neighbours", type=int, default=0, help="0: every candidate pair")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", default=None, help="comma-separated layers replacing the presets' own")
    args = ap.parse_args()

    from marginkit.bounds.presets import get_preset, run_preset
    from marginkit.data import load_dataset

    torch.set_num_threads(1)
    for name in args.presets:
        p = get_preset(name)
        ds = load_dataset(p.dataset, classes=p.classes, seed=args.seed)
        acc: dict = {}
        t0 = time.perf_counter()
        res = run_preset(p, os.path.join(args.out, name + ("-quick" if args.quick else "")),
                         train=_trainer(ds, ds.input_shape, ds.num_classes, args.seed, "runs/models/presets", acc),
                         quick=args.quick, neighbours=args.neighbours or None, seed=args.seed,
                         layers=tuple(args.layers.split(",")) if args.layers else None)
        df = res.to_frame()
        print(f"## {name} ({p.figure}), {res.settings['points']} points, {time.perf_counter() - t0:.0f} s\n")
        print("test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()) + "\n")
        searched = {f"{s['model']}/{s['layer']}": (s.get("searched", 0), s.get("settled", 0)) for s in res.layers
                    if s.get("method") == "descent"}
        if searched:
            print("descent: searched / settled pairs per layer: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in searched.items()) + "\n")
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
