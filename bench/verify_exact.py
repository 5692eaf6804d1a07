"""Exact input margins (MILP, marginkit.verify.exact_margin) of small ReLU networks, and the attack
engine's tightness against them.

Trains (or reloads) four MLPs with marginkit.training, fixed seeds:

  digits-mlp       digits  64-32-32-10, standard training
  digits-mlp-pgd   digits  64-32-32-10, PGD adversarial training (linf, eps 0.1, 7 steps)
  mnist-mlp        mnist5k 784-32-32-10, standard training
  mnist-mlp-pgd    mnist5k 784-32-32-10, PGD adversarial training (linf, eps 0.05, 7 steps)

saved to bench/reference/models/<model>.pt (marginkit.models.load_model reloads them by path). For the
first ``--n`` points of the test split (dataset seed 0; the reference class is the model's prediction) it
runs the attack engine (marginkit.attacks.input_margin, default budget) for verified upper bounds, then
exact_margin with those as cutoff and ``--time-limit`` seconds per sample, and stores
bench/reference/exact/<model>-<norm>.npz (index, exact, lower, upper, status, attack, seconds, method).

    PYTHONPATH=src python bench/verify_exact.py --models digits-mlp,digits-mlp-pgd --norms linf,l1
    PYTHONPATH=src python bench/verify_exact.py --summary      # the Markdown table of stored results
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from marginkit.data import load_dataset
from marginkit.models.checkpoint import load_model, save_checkpoint
from marginkit.models.zoo import ModelSpec, build_model
from marginkit.training.adversarial import PGDTraining
from marginkit.training.trainer import TrainConfig, evaluate_accuracy, train_model

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(ROOT, "reference", "models")
EXACT_DIR = os.path.join(ROOT, "reference", "exact")

MODELS = {
    # name: (dataset, hidden, depth, adversarial training or None, epochs)
    "digits-mlp": ("digits", 32, 2, None, 60),
    "digits-mlp-pgd": ("digits", 32, 2, dict(norm="linf", eps=0.1, steps=7), 60),
    "mnist-mlp": ("mnist5k", 32, 2, None, 20),
    "mnist-mlp-pgd": ("mnist5k", 32, 2, dict(norm="linf", eps=0.05, steps=7), 30),
}


def get_model(name: str, retrain: bool = False) -> tuple[torch.nn.Module, object]:
    """Load bench/reference/models/<name>.pt, training and saving it first when missing."""
    ds_name, hidden, depth, adv, epochs = MODELS[name]
    ds = load_dataset(ds_name, seed=0)
    path = os.path.join(MODELS_DIR, f"{name}.pt")
    if retrain or not os.path.exists(path):
        spec = ModelSpec("mlp", ds.input_shape, ds.num_classes, hidden=hidden, depth=depth)
        model = build_model(spec, seed=0)
        method = PGDTraining(**adv) if adv else None
        t0 = time.perf_counter()
        train_model(model, ds, TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=0), method)
        model.eval()
        acc = evaluate_accuracy(model, ds.x_test, ds.y_test)
        os.makedirs(MODELS_DIR, exist_ok=True)
        save_checkpoint(path, model, spec, {"dataset": ds_name, "dataset_seed": 0, "train_seed": 0, "epochs": epochs,
                                            "method": f"pgd {adv}" if adv else "standard", "test_accuracy": acc,
                                            "train_seconds": time.perf_counter() - t0})
    model, _ = load_model(path)
    return model, ds


def run(name: str, norm: str, n: int, time_limit: float, solver: str) -> dict:
    from marginkit.attacks import input_margin
    from marginkit.verify.exact import exact_margin

    model, ds = get_model(name)
    x = ds.x_test[:n]
    t0 = time.perf_counter()
    att = input_margin(model, x, None, norm)
    t_att = time.perf_counter() - t0
    parts = []
    for start in range(0, n, 10):  # stored after every 10 samples, so a stopped run keeps what it solved
        parts.append(exact_margin(model, x[start:start + 10], None, norm, upper=att.upper[start:start + 10],
                                  time_limit=time_limit, solver=solver))
        save(name, norm, parts, att, t_att, time_limit)
    return summarize(name, norm)


def save(name: str, norm: str, parts: list, att, t_att: float, time_limit: float) -> None:
    k = sum(len(p.status) for p in parts)
    cat = lambda f: np.concatenate([f(p) for p in parts])  # noqa: E731
    out = {
        "index": np.arange(k, dtype=np.int64),
        "exact": cat(lambda p: p.exact.numpy()),
        "lower": cat(lambda p: p.lower.numpy()),
        "upper": cat(lambda p: p.upper.numpy()),
        "status": np.array(sum((p.status for p in parts), []), dtype=str),
        "method": np.array(sum((p.method for p in parts), []), dtype=str),
        "attack": att.upper[:k].numpy().astype(np.float64),
        "seconds": cat(lambda p: p.seconds.numpy()),
        "binaries": cat(lambda p: p.binaries.numpy()),
    }
    os.makedirs(EXACT_DIR, exist_ok=True)
    np.savez(os.path.join(EXACT_DIR, f"{name}-{norm}.npz"), **out)
    meta = {"model": name, "norm": norm, "n": k, "time_limit": time_limit, "attack_seconds": t_att,
            "attack_settings": att.settings, "settings": parts[-1].settings,
            "messages": sum((p.messages for p in parts), [])}
    with open(os.path.join(EXACT_DIR, f"{name}-{norm}.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)


def summarize(name: str, norm: str) -> dict:
    d = np.load(os.path.join(EXACT_DIR, f"{name}-{norm}.npz"))
    ok = d["status"] == "exact"
    finite = ok & np.isfinite(d["exact"]) & (d["lower"] > 0)
    # against the proven optimum (lower): the exact column is the verified point's norm or the attack's,
    # whichever is smaller, so attack / exact would hide the attack's excess where the attack was optimal
    ratio = d["attack"][finite] / d["lower"][finite]
    return {
        "model": name, "norm": norm, "n": len(d["index"]), "exact": int(ok.sum()),
        "bracketed": int((d["status"] == "bracketed").sum()),
        "other": int((~ok & (d["status"] != "bracketed")).sum()),
        "sec_median": float(np.median(d["seconds"])), "sec_p95": float(np.percentile(d["seconds"], 95)),
        "sec_max": float(d["seconds"].max()),
        "binaries": float(np.median(d["binaries"])),
        "ratio_median": float(np.median(ratio)) if ratio.size else float("nan"),
        "ratio_p95": float(np.percentile(ratio, 95)) if ratio.size else float("nan"),
        "ratio_max": float(ratio.max()) if ratio.size else float("nan"),
        "attack_below_lower": int((d["attack"] < d["lower"] * (1 - 1e-6)).sum()),
        "gap_median_bracketed": float(np.median(((d["upper"] - d["lower"]) / d["upper"])[d["status"] == "bracketed"]))
        if (d["status"] == "bracketed").any() else float("nan"),
    }


def table(rows: list[dict]) -> str:
    head = ("| model | norm | n | exact | bracketed | other | s/sample median | p95 | max | binaries (median) "
            "| attack/exact median | p95 | max | bracketed: median (upper-lower)/upper |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r['model']} | {r['norm']} | {r['n']} | {r['exact']} | {r['bracketed']} | {r['other']} "
                     f"| {r['sec_median']:.2f} | {r['sec_p95']:.2f} | {r['sec_max']:.2f} | {r['binaries']:.0f} "
                     f"| {r['ratio_median']:.6f} | {r['ratio_p95']:.4f} | {r['ratio_max']:.4f} | {r['gap_median_bracketed']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--norms", default="linf,l1")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--summary", action="store_true", help="print the table of the stored results only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        if args.train_only:
            model, ds = get_model(name)
            from marginkit.training.trainer import evaluate_accuracy as acc

            print(name, "test accuracy", acc(model, ds.x_test, ds.y_test), flush=True)
            continue
        for norm in args.norms.split(","):
            if args.summary:
                if os.path.exists(os.path.join(EXACT_DIR, f"{name}-{norm}.npz")):
                    rows.append(summarize(name, norm))
                continue
            t0 = time.perf_counter()
            rows.append(run(name, norm, args.n, args.time_limit, args.solver))
            print(json.dumps(rows[-1]), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if rows:
        print(table(rows))


if __name__ == "__main__":
    main()
