"""Benchmark: the batched descent engine against the per-pair Clarabel engine, on the same pairs.

Pairs of 2-class MNIST (3 vs 7) training points (different classes, drawn with a seed from the 400-point
vertex set of the documented run) after relu1 / relu2 / relu3 of the demo MLP 784-64-64-64 (standard and
PGD l2 eps 2; ``--models fcnn``: the paper's FCNN 300-200 of the presets). The per-pair engine (one Clarabel program at a time, ``engine="per-pair"``) runs on the first
``--ref-pairs`` pairs; the batched engine on the same pairs (budgets, programs and statuses compared) and on
all ``--pairs`` pairs (throughput). Single-threaded torch; wall and CPU seconds (``time.process_time``) of
the search itself (the layer's geometry, one SVD per call, is built once before the timing).

    python bench/bounds_batched.py --pairs 2000 --ref-pairs 60
    python bench/bounds_batched.py --pairs 1000 --ref-pairs 40 --cvxpy-pairs 20   # also the cvxpy per-pair engine
    python bench/bounds_batched.py --models fcnn --layers relu1,relu2 --pairs 100 --ref-pairs 8   # FCNN 300-200

Prints Markdown (copied into bench/bounds.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--ref-pairs", type=int, default=60)
    ap.add_argument("--layers", default="relu1,relu2,relu3")
    ap.add_argument("--models", default="standard,pgd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cvxpy-pairs", type=int, default=0,
                    help="also time the per-pair engine through cvxpy (the engine when issue 17 was filed) on this many pairs")
    args = ap.parse_args()

    from marginkit.bounds import balanced_subset, feature_chain, find_collisions
    from marginkit.bounds.budgets import all_pairs
    from marginkit.data import load_dataset
    from marginkit.training import demo_model

    import scipy.optimize  # noqa: F401  (imported by the engine on first use; outside the timing)

    torch.set_num_threads(1)
    ds = load_dataset("mnist5k", classes=(3, 7), seed=args.seed)
    x, y = ds.split("train")
    idx = balanced_subset(y, 200, args.seed)
    xs = x[idx].reshape(len(idx), -1).double().numpy()
    ys = y[idx].numpy()
    i, j = all_pairs(ys)
    pick = np.random.default_rng(args.seed).choice(len(i), size=min(args.pairs, len(i)), replace=False)
    a, b = xs[i[pick]], xs[j[pick]]
    n_ref = min(args.ref_pairs, len(a))
    print(f"{len(a)} pairs (of {len(i)}), per-pair engine on the first {n_ref}\n")
    print("| model | layer | engine | pairs | wall s | CPU s | programs | Clarabel fallbacks | collisions / s (CPU) "
          "| speed-up (CPU, same pairs) | max abs budget diff | same programs / status | x cvxpy per-pair (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mname in args.models.split(","):
        if mname == "fcnn":  # the paper's FCNN 300-200 (preset recipe "standard", cached by the presets)
            from marginkit.bounds.presets import ModelRecipe
            from marginkit.pipeline import preset_trainer

            model = preset_trainer(ds, "runs/models/bounds-presets", seed=args.seed)(ModelRecipe("standard"))
        else:
            kw = {"method": mname, "method_params": {"eps": 2.0}} if mname == "pgd" else {}
            model, _ = demo_model("mlp", classes=(3, 7), depth=3, hidden=64, seed=args.seed, **kw)
        for layer in args.layers.split(","):
            if layer not in dict(model.named_children()):
                continue
            ch = feature_chain(model, layer, (1, 28, 28))
            find_collisions(ch, a[:2], b[:2], engine="per-pair")  # imports and the layer's SVD outside the timing
            find_collisions(ch, a[:2], b[:2], engine="batched")

            def timed(n, engine):
                w0, c0 = time.perf_counter(), time.process_time()
                r = find_collisions(ch, a[:n], b[:n], engine=engine)
                return r, time.perf_counter() - w0, time.process_time() - c0

            ref, rw, rc = timed(n_ref, "per-pair")
            n_cv = min(args.cvxpy_pairs, len(a))
            cv_rate = None
            if n_cv:
                find_collisions(ch, a[:2], b[:2], engine="per-pair", direct=False)
                w0, c0 = time.perf_counter(), time.process_time()
                cvx = find_collisions(ch, a[:n_cv], b[:n_cv], engine="per-pair", direct=False)
                cw, cc = time.perf_counter() - w0, time.process_time() - c0
                cv_rate = n_cv / cc
                cdiff = float(np.abs(cvx.budget - ref.budget[:n_cv]).max()) if n_cv <= n_ref else float("nan")
                print(f"| {mname} | {layer} | per-pair, cvxpy | {n_cv} | {cw:.1f} | {cc:.1f} | {cvx.programs} | - | "
                      f"{cv_rate:.1f} | {cv_rate / (n_ref / rc):.2f} | {cdiff:.1e} | - | 1 |")
            same, sw, sc = timed(n_ref, "batched")
            full, fw, fc = timed(len(a), "batched")
            diff = float(np.abs(same.budget - ref.budget).max())
            agree = np.mean((same.iterations == ref.iterations) & np.array([p == q for p, q in zip(same.status, ref.status)]))
            vs_cvx = (lambda rate: f"{rate / cv_rate:.0f}") if cv_rate else (lambda rate: "")
            print(f"| {mname} | {layer} | per-pair | {n_ref} | {rw:.1f} | {rc:.1f} | {ref.programs} | - | {n_ref / rc:.1f} | 1 | 0 | - "
                  f"| {vs_cvx(n_ref / rc)} |")
            print(f"| {mname} | {layer} | batched | {n_ref} | {sw:.2f} | {sc:.2f} | {same.programs} | "
                  f"{same.settings['fallback_programs']} | {n_ref / sc:.1f} | {rc / sc:.1f} | {diff:.1e} | {100 * agree:.0f} % "
                  f"| {vs_cvx(n_ref / sc)} |")
            print(f"| {mname} | {layer} | batched | {len(a)} | {fw:.1f} | {fc:.1f} | {full.programs} | "
                  f"{full.settings['fallback_programs']} | {len(a) / fc:.1f} | {(rc / n_ref) / (fc / len(a)):.1f} | "
                  f"| | {vs_cvx(len(a) / fc)} |", flush=True)


if __name__ == "__main__":
    main()
