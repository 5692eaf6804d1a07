"""marginkit's presets against exact input margins: median / p95 of upper / exact per model, norm and preset.

    OMP_NUM_THREADS=1 python bench/engine_vs_exact.py                 # every stored exact file
    OMP_NUM_THREADS=1 python bench/engine_vs_exact.py --affine 50 --search-only   # affine model (closed form)

Exact margins are read from ``bench/reference/exact/<model>-<norm>.npz`` (arrays ``index``: int64 into the
dataset split, ``exact``: float64, NaN where not solved, ``lower``, ``upper``, ``status``), the models from
``bench/reference/models/<model>.pt`` (``marginkit.models.checkpoint.load_model``). The dataset and split of
a model come from ``--dataset MODEL=SPEC[:SPLIT]``, else from ``dataset`` / ``split`` arrays in the npz, else
from the checkpoint's metadata, else from the line of ``bench/reference/exact/README.md`` that names the model
(the first built-in dataset name and the word "train" or "test" on it). Only samples with a finite, positive
exact margin and status "exact" count.

``--affine N`` writes the same files for the demo linear model on mnist5k (exact margins in closed form,
:func:`marginkit.margins.affine_input_margin`) into a temporary folder and runs the same evaluation on them:
the reader and the table are checked end to end while no MILP file exists. ``--search-only`` adds rows for
the presets without their affine shortcut, so that the search stages themselves are judged on affine models.
Writes ``--out`` (default bench/engine_vs_exact.md).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("fast", "default", "thorough")


def _dataset_of(model: str, npz: dict, meta: dict, readme: str, given: dict[str, str]) -> tuple[str, str]:
    from marginkit.data import BUILTIN

    spec = given.get(model)
    if spec is None and "dataset" in npz:
        spec = str(npz["dataset"]) + (":" + str(npz["split"]) if "split" in npz else "")
    if spec is None and meta.get("dataset"):
        spec = str(meta["dataset"]) + (":" + str(meta["split"]) if meta.get("split") else "")
    if spec is None:
        for line in readme.splitlines():
            hit = re.search(rf"(?<![\w-]){re.escape(model)}(?![\w-])", line)
            if hit:
                # the built-in dataset named nearest after the model on that line
                after = line[hit.end():]
                names = sorted((after.find(b), b) for b in BUILTIN if b in after)
                names = [b for _, b in names]
                if names:
                    split = "train" if re.search(r"\btrain\b", line) and not re.search(r"\btest\b", line) else "test"
                    spec = f"{names[0]}:{split}"
                    break
    if spec is None:
        raise SystemExit(f"no dataset known for model {model!r}: pass --dataset {model}=NAME[:SPLIT]")
    name, _, split = spec.partition(":")
    if split and split not in ("train", "test"):  # a file spec such as npz:PATH has its own colon
        name, split = spec, "test"
    return name, split or "test"


def evaluate(exact_dir: str, models_dir: str, presets: tuple[str, ...], given: dict[str, str], limit: int | None,
             search_only: bool = False) -> list[dict]:
    from marginkit.attacks import AffineExact, input_margin, preset
    from marginkit.data import load_dataset
    from marginkit.models.checkpoint import load_model

    readme_path = os.path.join(exact_dir, "README.md")
    readme = open(readme_path).read() if os.path.exists(readme_path) else ""
    rows = []
    for path in sorted(glob.glob(os.path.join(exact_dir, "*.npz"))):
        stem = os.path.basename(path)[:-4]
        model_name, _, norm = stem.rpartition("-")
        if norm not in ("l1", "l2", "linf"):
            print(f"skipped {path}: name is not <model>-<norm>.npz")
            continue
        data = dict(np.load(path, allow_pickle=False))
        ckpt = os.path.join(models_dir, f"{model_name}.pt")
        if not os.path.exists(ckpt):
            print(f"skipped {path}: no model file {ckpt}")
            continue
        model, info = load_model(ckpt)
        model.eval()
        meta = dict(info.metadata or {})
        ds_name, split = _dataset_of(model_name, data, meta, readme, given)
        x_all, _ = load_dataset(ds_name, seed=int(meta.get("dataset_seed", 0))).split(split)
        status = data["status"].astype(str)
        exact = data["exact"].astype(np.float64)
        keep = (status == "exact") & np.isfinite(exact) & (exact > 0)
        index = data["index"].astype(np.int64)[keep]
        exact = exact[keep]
        if limit is not None:
            index, exact = index[:limit], exact[:limit]
        if len(index) == 0:
            print(f"skipped {path}: no solved sample")
            continue
        x = x_all[torch.from_numpy(index)]
        for name in presets:
            t0 = time.perf_counter()
            sched = tuple(s for s in preset(name, norm) if not (search_only and isinstance(s.stage, AffineExact)))
            res = input_margin(model, x, norm=norm, schedule=sched)
            dt = time.perf_counter() - t0
            r = res.upper.numpy() / exact
            r = np.where(np.isfinite(r), r, 1e300)
            below = int((r < 1 - 1e-6).sum())  # an upper bound below the exact margin: one of the two is wrong
            q = np.quantile(r, [0.5, 0.95])
            rows.append(dict(model=model_name, norm=norm, preset=name + (" (search only)" if search_only else ""), dataset=f"{ds_name}:{split}", n=len(index),
                             median=float(q[0]), p95=float(q[1]), max=float(r.max()), below=below,
                             seconds=dt, passes=float(res.passes.float().mean())))
            print(f"{model_name} {norm} {name}: n {len(index)} median {q[0]:.5f} p95 {q[1]:.5f} max {r.max():.5f} "
                  f"below exact {below} {dt:.1f}s", flush=True)
    return rows


def write_affine(points: int, exact_dir: str, models_dir: str) -> None:
    """Exact-margin files of the demo linear model (closed form), in the MILP files' format."""
    from marginkit.data import load_dataset
    from marginkit.margins import affine_input_margin
    from marginkit.models.checkpoint import save_checkpoint
    from marginkit.training import demo_model

    model, ck = demo_model("linear")
    model.eval()
    save_checkpoint(os.path.join(models_dir, "linear.pt"), model, ck.spec, {"dataset": "mnist5k", "split": "test"})
    x, _ = load_dataset("mnist5k").split("test")
    idx = np.arange(points)
    for norm in ("l2", "linf", "l1"):
        m = affine_input_margin(model, x[:points], norm=norm, bounds=(0.0, 1.0)).margin.double().numpy()
        np.savez(os.path.join(exact_dir, f"linear-{norm}.npz"), index=idx, exact=m, lower=m, upper=m,
                 status=np.array(["exact"] * points))
    with open(os.path.join(exact_dir, "README.md"), "w") as fh:
        fh.write("linear: mnist5k test split (closed-form exact margins of the demo linear model)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exact-dir", default=os.path.join(HERE, "reference", "exact"))
    ap.add_argument("--models-dir", default=os.path.join(HERE, "reference", "models"))
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--dataset", action="append", default=[], help="MODEL=SPEC[:SPLIT], repeatable")
    ap.add_argument("--limit", type=int, default=None, help="at most this many solved samples per file")
    ap.add_argument("--affine", type=int, default=0, help="check on the demo linear model with N points instead")
    ap.add_argument("--search-only", action="store_true", help="drop the presets' affine shortcut (judge the search itself)")
    ap.add_argument("--out", default=os.path.join(HERE, "engine_vs_exact.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    given = dict(d.split("=", 1) for d in args.dataset)
    presets = tuple(args.presets.split(","))
    tmp = None
    if args.affine:
        tmp = tempfile.TemporaryDirectory()
        args.exact_dir = args.models_dir = tmp.name
        write_affine(args.affine, tmp.name, tmp.name)
    rows = evaluate(args.exact_dir, args.models_dir, presets, given, args.limit)
    if args.search_only:
        rows += evaluate(args.exact_dir, args.models_dir, presets, given, args.limit, search_only=True)
    import marginkit

    cmd = "OMP_NUM_THREADS=1 python bench/engine_vs_exact.py " + " ".join(sys.argv[1:])
    lines = ["# Input-margin engine vs exact margins", "",
             f"Produced by `{cmd.strip()}` (marginkit {marginkit.__version__}, torch {torch.__version__}, one torch thread, "
             "a 2-core machine; seconds are wall time and vary with the load on it).", "",
             "ratio = marginkit's upper bound / the exact margin, per sample with a solved exact margin; "
             "below = samples whose upper bound is under the exact margin (must be 0). "
             "Target of the default preset: median <= 1.002 and p95 <= 1.02 in every norm.", "",
             "| model | dataset | norm | preset | n | median | p95 | max | below | seconds | passes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['norm']} | {r['preset']} | {r['n']} | {r['median']:.5f} | "
                     f"{r['p95']:.5f} | {r['max']:.5f} | {r['below']} | {r['seconds']:.1f} | {r['passes']:.0f} |")
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
