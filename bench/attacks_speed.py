"""Wall time and work of the input-margin engine alone on the demo models (no peers): before/after checks.

Run:

    OMP_NUM_THREADS=1 python bench/attacks_speed.py --models linear,mlp --norms l2,linf --points 100 --repeat 2

``--engine module:function`` times another copy of the engine with the same interface, e.g. an older
commit unpacked as a renamed package; ``--preset`` picks a preset. Points: the first ``--points``
MNIST (mnist5k) test points the model classifies correctly. Prints median norm, mean passes per sample
and the best wall time over ``--repeat`` runs (one torch thread).
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="linear,mlp")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--engine", default="marginkit.attacks:input_margin")
    ap.add_argument("--preset", default=None, help="fast | default | thorough (None: the engine's default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from marginkit.data import load_dataset
    from marginkit.training import demo_model

    mod, fn = args.engine.split(":")
    engine = getattr(importlib.import_module(mod), fn)
    x_all, y_all = load_dataset("mnist5k").split("test")
    print("| model | norm | median norm | passes/sample | best wall s |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model = demo_model(name)[0].eval()
        with torch.no_grad():
            ok = model(x_all).argmax(1) == y_all
        x = x_all[ok][: args.points]
        for norm in args.norms.split(","):
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = engine(model, x, norm=norm, **({} if args.preset is None else {"preset": args.preset}))
                times.append(time.perf_counter() - t0)
            print(f"| {name} | {norm} | {float(res.upper.median()):.5f} | {float(res.passes.float().mean()):.0f} | "
                  f"{min(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
