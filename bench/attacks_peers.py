"""Run the public minimal-norm attacks once and store their per-sample norms in bench/reference/peers/.

    OMP_NUM_THREADS=1 python bench/attacks_peers.py --points 50 --models mlp,cnn,mlp-at --norms l2,linf

Peers (installed with --no-deps so they cannot replace torch):
    pip install --no-deps -c constraints.txt adv-lib==0.2.8 torchattacks==3.5.1 foolbox==3.3.4 eagerpy

Every peer runs at its documented settings and, where it is iterative, at one fixed long budget
(``--long-steps``, 1000 by default); the wrappers are those of ``bench/attacks_compare.py``. Each
(model, norm, peer configuration) gets one JSON file: the mnist5k test-split indices, the per-sample norm of
the returned point judged as in ``attacks_compare.judge`` (float64 model, [0, 1] box; ``null`` where it does
not flip), forward + backward passes per sample, wall time of the whole call (one torch thread), the
settings and the library versions. ``bench/attacks_compare.py`` reads these files; the peers are never rerun
with marginkit's pass count.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import json
import os
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attacks_compare import Counted, _stub_modules, judge, load_models, peers, select_points  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "reference", "peers")


def config_file(model: str, norm: str, library: str, name: str, setting: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9]+", "-", f"{library}-{name}-{setting.split('(')[0].strip()}").strip("-").lower()
    return os.path.join(OUT, f"{model}-{norm}-{tag}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--models", default="mlp,cnn,mlp-at")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--long-steps", type=int, default=1000)
    ap.add_argument("--only", default="", help="comma list of peer keys to run")
    ap.add_argument("--skip-existing", action="store_true")
    ap.add_argument("--no-long", default="fab-t", help="comma list of peer keys run at their documented settings only "
                    "(adv-lib's FAB with targeted restarts: 9 targets x the steps, too slow at the long budget here)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _stub_modules()
    models, notes = load_models(args.models.split(","))
    idx, x, y = select_points(models, args.points)
    vers = {k: md.version(k) for k in ["torch", "adv-lib", "torchattacks", "foolbox", "eagerpy"]}
    os.makedirs(OUT, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    cmd = "OMP_NUM_THREADS=1 python bench/attacks_peers.py " + " ".join(sys.argv[1:])
    for mname, model in models.items():
        model64 = copy.deepcopy(model).double().eval()
        for norm in args.norms.split(","):
            for run in peers(norm, int(model(x[:1]).shape[1]), args.long_steps):
                if only and run.name not in only:
                    continue
                if run.setting.startswith("long") and run.name in args.no_long.split(","):
                    continue
                path = config_file(mname, norm, run.library, run.name, run.setting)
                if args.skip_existing and os.path.exists(path):
                    continue
                counted = Counted(model).eval()
                torch.manual_seed(0)
                t0 = time.perf_counter()
                try:
                    adv, err = run.fn(counted, x.clone(), y.clone()), ""
                except Exception as exc:  # a peer crashing is a result too; record it
                    adv, err = torch.full_like(x, float("nan")), f"{type(exc).__name__}: {exc}"[:200]
                dt = time.perf_counter() - t0
                v = judge(model64, x, y, adv, norm)
                rec = {"model": mname, "norm": norm, "library": run.library, "attack": run.name, "setting": run.setting,
                       "dataset": "mnist5k", "split": "test", "index": idx.tolist(),
                       "values": [float(a) if np.isfinite(a) else None for a in v],
                       "passes_per_sample": counted.rows / x.shape[0], "seconds": dt, "error": err,
                       "versions": vers, "command": cmd, "threads": 1, "notes": notes.get(mname, ""),
                       "machine": "shared 2-core CPU machine (other jobs running)"}
                with open(path, "w") as fh:
                    json.dump(rec, fh, indent=1)
                print(f"{mname} {norm} {run.library} {run.name} [{run.setting}]: success {np.isfinite(v).mean():.2f} "
                      f"median {np.median(v):.4f} passes {rec['passes_per_sample']:.0f} {dt:.1f}s {err}", flush=True)


if __name__ == "__main__":
    main()
