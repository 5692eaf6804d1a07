"""Branch and bound vs alpha-CROWN: certified radii on adversarially trained MLPs, at several time budgets.

For each model and norm, the first n test points (dataset seed 0; the reference class is the
model's prediction) get the attack engine's verified upper bound (``marginkit.attacks.input_margin``,
default schedule), the alpha-CROWN certified radius (``marginkit.verify.certified_radius``, rtol 0.01,
20 alpha steps, float64; batched over the samples, seconds = time / n), and for every budget B the
branch-and-bound radius (``marginkit.verify.bab.bab_radius`` started from the alpha-CROWN radius, rtol
0.01, B seconds per sample; ``--clock cpu``, the default, counts the process's CPU time, because wall-clock
budgets on a shared machine measure the other jobs; one thread). Models:

- ``mlp-pgd``: ``demo_model("mlp", method="pgd")`` (784-256-256-10, l2 PGD training), the model of the
  certified-bounds table in bench/verify.md;
- ``mnist-mlp-pgd``: bench/reference/models/mnist-mlp-pgd.pt (784-32-32-10, linf PGD training), whose
  exact margins are in bench/reference/exact/ (linf and l1), so lower / exact is reported too;
- ``digits-mlp-pgd`` (and the other bench/reference/models): the digits test split instead of mnist5k;
  exact l2 margins (SCIP's MIQP) exist for its first 40 points.

Every sample's result is appended to a JSON-lines file as soon as it is known (``--out``); a rerun skips
what the file already holds. ``--summary`` prints the Markdown table from the file.

    PYTHONPATH=src python bench/verify_bab.py --models mlp-pgd --norms l2 --budgets 5,20,60 --n 20
    PYTHONPATH=src python bench/verify_bab.py --summary

Bench code may import marginkit.attacks (bench/ sits outside the package layers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(ROOT, "verify_bab.jsonl")


def _model(name: str) -> torch.nn.Module:
    if name == "mlp-pgd":
        from marginkit.training import demo_model

        return demo_model("mlp", method="pgd")[0].eval()
    from marginkit.models.checkpoint import load_model

    path = os.path.join(ROOT, "reference", "models", f"{name}.pt")
    if not os.path.exists(path):
        raise SystemExit(f"unknown model {name!r} (no {path})")
    return load_model(path)[0].eval()


def _exact(name: str, norm: str, n: int) -> np.ndarray | None:
    path = os.path.join(ROOT, "reference", "exact", f"{name}-{norm}.npz")
    if not os.path.exists(path):
        return None
    d = np.load(path, allow_pickle=True)
    out = np.full(n, np.nan)
    for idx, ex in zip(d["index"], d["exact"]):
        if idx < n:
            out[int(idx)] = float(ex)
    return out


def _load(out: str) -> list[dict]:
    if not os.path.exists(out):
        return []
    with open(out) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _append(out: str, row: dict) -> None:
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run(args: argparse.Namespace) -> None:
    from marginkit.attacks import input_margin
    from marginkit.data import load_dataset
    from marginkit.verify import as_relu_network, certified_radius
    from marginkit.verify.bab import BabOptions, bab_radius

    done = {(r["model"], r["norm"], r["method"], r["index"]) for r in _load(args.out) if "index" in r}
    budgets = [float(b) for b in args.budgets.split(",") if b]
    for name in args.models.split(","):
        ds = load_dataset("digits" if name.startswith("digits") else "mnist5k", seed=0)
        x = ds.x_test[:args.n]
        model = _model(name)
        net = as_relu_network(model, tuple(x.shape[1:]))
        with torch.no_grad():
            ref = model(x).argmax(1)
        for norm in args.norms.split(","):
            exact = _exact(name, norm, args.n)
            rows = {(r["method"], r["index"]): r for r in _load(args.out) if r.get("model") == name and r.get("norm") == norm}
            if all(("attack", i) in rows for i in range(args.n)):
                up = torch.tensor([rows[("attack", i)]["value"] for i in range(args.n)], dtype=torch.float64)
            else:
                t0 = time.perf_counter()
                up = input_margin(model, x, None, norm).upper.detach().double().cpu()
                secs = (time.perf_counter() - t0) / args.n
                for i in range(args.n):
                    _append(args.out, {"model": name, "norm": norm, "method": "attack", "index": i, "value": float(up[i]),
                                       "seconds": secs})
                rows.update({("attack", i): {"value": float(up[i])} for i in range(args.n)})
            if all(("alpha-crown", i) in rows for i in range(args.n)):
                start = torch.tensor([rows[("alpha-crown", i)]["value"] for i in range(args.n)], dtype=torch.float64)
            else:
                t0, c0 = time.perf_counter(), time.process_time()
                res = certified_radius(net, x, ref, norm, upper=up, method="alpha-crown", rtol=0.01, alpha_steps=20)
                secs, cpu = (time.perf_counter() - t0) / args.n, (time.process_time() - c0) / args.n
                start = res.lower
                for i in range(args.n):
                    _append(args.out, {"model": name, "norm": norm, "method": "alpha-crown", "index": i, "value": float(start[i]),
                                       "upper": float(up[i]), "exact": None if exact is None else float(exact[i]), "seconds": secs,
                                       "cpu_seconds": cpu})
            for budget in budgets:
                method = f"bab-{budget:g}s" + ("" if args.rtol == 0.01 else f"-rtol{args.rtol:g}") + args.tag
                for i in range(args.n):
                    if (name, norm, method, i) in done:
                        continue
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = bab_radius(net, x[i:i + 1], ref[i:i + 1], norm, upper=up[i:i + 1], start=start[i:i + 1], rtol=args.rtol,
                                     options=BabOptions(time_limit=budget, clock=args.clock))
                    _append(args.out, {"model": name, "norm": norm, "method": method, "index": i, "value": float(res.lower[0]),
                                       "upper": float(up[i]), "exact": None if exact is None else float(exact[i]),
                                       "start": float(start[i]), "seconds": time.perf_counter() - t0,
                                       "cpu_seconds": time.process_time() - c0, "clock": args.clock,
                                       "domains": int(res.evaluations[0]), "load": os.getloadavg()[0]})


def summary(args: argparse.Namespace) -> None:
    rows = [r for r in _load(args.out) if r["method"] != "attack"]
    keys: list[tuple[str, str, str]] = []
    for r in rows:
        k = (r["model"], r["norm"], r["method"])
        if k not in keys:
            keys.append(k)
    crown_secs = {(r["model"], r["norm"]): r.get("cpu_seconds", r["seconds"]) for r in rows if r["method"] == "alpha-crown"}
    print("| model | norm | method | n | median lower/upper (p25-p75) | median lower/exact (n exact) | "
          "share with lower/upper >= 0.5 | CPU s/sample (alpha-CROWN + BaB) | wall s/sample (BaB) | load (1 min, median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, norm, method in keys:
        sel = sorted((r for r in rows if (r["model"], r["norm"], r["method"]) == (model, norm, method)), key=lambda r: r["index"])
        lo = np.array([r["value"] for r in sel])
        up = np.array([r["upper"] for r in sel])
        ok = np.isfinite(up) & (up > 0)
        ratio = np.minimum(lo[ok] / up[ok], 1.0)
        assert bool((lo[ok] <= up[ok] * (1 + 1e-9)).all()), "a certified radius above a verified flip"
        ex = np.array([np.nan if r.get("exact") is None else r["exact"] for r in sel])
        has = np.isfinite(ex) & (ex > 0)
        assert bool((lo[has] <= ex[has] * (1 + 1e-6)).all()), "a certified radius above an exact margin"
        exact_txt = f"{np.median(lo[has] / ex[has]):.3f} ({int(has.sum())})" if has.any() else "n/a"
        secs = np.array([r.get("cpu_seconds", r["seconds"]) for r in sel])
        wall = np.array([r["seconds"] for r in sel])
        extra = crown_secs.get((model, norm), 0.0) if method != "alpha-crown" else 0.0
        load = [r["load"] for r in sel if "load" in r]
        print(f"| {model} | {norm} | {method} | {len(sel)} | {np.median(ratio):.3f} ({np.quantile(ratio, 0.25):.3f}-"
              f"{np.quantile(ratio, 0.75):.3f}) | {exact_txt} | {np.mean(ratio >= 0.5):.2f} | {np.mean(secs) + extra:.1f} | "
              f"{np.mean(wall):.1f} | {np.median(load):.1f} |" if load else
              f"| {model} | {norm} | {method} | {len(sel)} | {np.median(ratio):.3f} ({np.quantile(ratio, 0.25):.3f}-"
              f"{np.quantile(ratio, 0.75):.3f}) | {exact_txt} | {np.mean(ratio >= 0.5):.2f} | {np.mean(secs) + extra:.1f} | {np.mean(wall):.1f} | - |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp-pgd")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--budgets", default="5,20,60", help="seconds per sample for branch and bound, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the method label (to tell code versions apart in one file)")
    ap.add_argument("--rtol", type=float, default=0.01, help="tolerance of the branch-and-bound radius search")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--clock", default="cpu", choices=("wall", "cpu"),
                    help="what the budget counts: the process's CPU time (default; the machine is shared) or wall time")
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args()
    if args.summary:
        summary(args)
        return
    torch.set_num_threads(args.threads)
    print(json.dumps({"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                      "argv": vars(args), "load": os.getloadavg()}), flush=True)
    run(args)


if __name__ == "__main__":
    main()
