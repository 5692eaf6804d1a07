"""Quick probe: marginkit's input margins vs the stored per-sample peer norms of the last full
``bench/attacks_compare.py`` run (runs/bench_attacks/per_sample.csv), on one or more models and one norm.

    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models cnn --norm l2
    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models cnn --norm l1 --alma-runs scaled
    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models cnn --norm l2 --set extra_rounds=2
    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models cnn --norm l2 --alma-more none
    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models mlp-at --norm l2 --profile 12
    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models cnn --norm l1 --set method=ball --set ball_steps=100

Same 100 points as attacks_compare.py (correct under every model of the full run). The peers are NOT rerun,
so the "matched" peer runs keep the pass budget of the stored run; rerun attacks_compare.py for final numbers.

``--offset K`` probes the points K, K+1, ... of the same list instead (a selection set the benchmark does not
report, to choose a schedule on); their reference is the per-sample best of the long peer runs of
:func:`reference`, computed once and cached under runs/bench_attacks/:

    OMP_NUM_THREADS=1 python bench/attacks_probe.py --models cnn --norm l1 --offset 100
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(__file__))
import attacks_compare as ac  # noqa: E402


def _value(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _points(n: int):
    """The demo models of the full run and its first ``n`` test points (correct under all four models)."""
    from marginkit.data import load_dataset
    from marginkit.training import demo_model

    ds = load_dataset("mnist5k")
    x_test, y_test = ds.split("test")
    allm = {name: demo_model(name)[0].eval() for name in ("linear", "mlp", "cnn")}
    allm["mlp-at"] = ac.adversarially_trained_mlp()[0]
    with torch.no_grad():
        correct = torch.stack([m(x_test).argmax(1) == y_test for m in allm.values()]).all(0)
    idx = correct.nonzero().squeeze(1)[:n]
    return allm, x_test[idx], y_test[idx]


def reference(name: str, model, x, y, norm: str, offset: int, steps: int = 1332, cache: str = "runs/bench_attacks") -> np.ndarray:
    """Per-sample best norm of long peer runs on points outside the stored benchmark run: adv-lib ALMA (1000
    and ``steps`` steps, l2 / l1), FMN (``steps``), FAB (100 iterations), DDN (``steps``, l2): the peers that
    were best per sample on the benchmark's points. Cached per model, norm, points and steps."""
    path = os.path.join(cache, f"reference_{name}_{norm}_{offset}_{x.shape[0]}_{steps}.npy")
    if os.path.exists(path):
        return np.load(path)
    m64 = copy.deepcopy(model).double().eval()
    ac._stub_modules()
    import adv_lib.attacks as al

    p = {"l2": 2, "l1": 1, "linf": float("inf")}[norm]
    runs = [lambda: al.fmn(model, x, y, norm=p, steps=steps), lambda: al.fab(model, x, y, norm=p, n_iter=100)]
    if norm in ("l2", "l1"):
        runs += [lambda: al.alma(model, x, y, distance=norm, num_steps=1000),
                 lambda: al.alma(model, x, y, distance=norm, num_steps=steps)]
    if norm == "l2":
        runs.append(lambda: al.ddn(model, x, y, steps=steps, levels=None))
    best = np.min(np.stack([ac.judge(m64, x, y, run(), norm) for run in runs]), 0)
    os.makedirs(cache, exist_ok=True)
    np.save(path, best)
    return best


def best_peer(name: str, model, x, y, norm: str, offset: int, raw_csv: str, steps: int = 1332) -> np.ndarray:
    """Per-sample best peer norm: from the stored full run on the benchmark's points (``offset`` 0), else the
    cached long peer runs of :func:`reference`."""
    if offset:
        return reference(name, model, x, y, norm, offset, steps)
    raw = pd.read_csv(raw_csv)
    peers = raw[(raw.model == name) & (raw.norm == norm) & ~raw.method.str.startswith("marginkit")]
    return peers.groupby("sample").value.min().reindex(range(x.shape[0])).to_numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn")
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--alm-steps", type=int, default=None, help="override input_margin's alm_steps")
    ap.add_argument("--set", action="append", default=[], help="extra input_margin option key=value (int if it parses)")
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--alma-runs", default=None,
                    help="comma list of initial step sizes of the ALMA runs of the schedule's step 5 in --norm, "
                         "'scaled' for the paper's schedule stretched to the run length (default: the engine's choice)")
    ap.add_argument("--alma-more", default=None,
                    help="comma list of step sizes of the further l2 ALMA runs ('none': no further runs; default: the engine's)")
    ap.add_argument("--profile", type=int, default=0, help="print the N functions with the most own time (cProfile)")
    ap.add_argument("--offset", type=int, default=0, help="first point (0: the benchmark's points and their stored peers)")
    ap.add_argument("--raw", default="runs/bench_attacks/per_sample.csv")
    ap.add_argument("--save", default=None, help="write marginkit's per-sample norms to this .npy file (one model)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import marginkit.attacks.engine as engine
    from marginkit.attacks import input_margin

    # count the samples each round of ALMA runs goes to (the first round, then the gated further runs)
    rounds: list[tuple[int, int]] = []
    alma_round = engine._alma_round

    def counted(oracle, best, samples, lrs, *rest, **kw):
        rounds.append((int(samples.numel()), len(lrs)))
        return alma_round(oracle, best, samples, lrs, *rest, **kw)

    engine._alma_round = counted

    allm, x, y = _points(args.offset + args.points)
    x, y = x[args.offset:], y[args.offset:]
    for name in args.models.split(","):
        model = allm[name]
        t0 = time.perf_counter()
        kw = {} if args.alm_steps is None else {"alm_steps": args.alm_steps}
        kw.update({k: _value(v) for k, v in (a.split("=", 1) for a in args.set)})
        if args.alma_runs is not None:
            kw["alma_lrs"] = tuple(None if v == "scaled" else float(v) for v in args.alma_runs.split(","))
        if args.alma_more is not None:
            kw["alma_more"] = () if args.alma_more == "none" else tuple(float(v) for v in args.alma_more.split(","))
        rounds.clear()
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            res = prof.runcall(input_margin, model, x, norm=args.norm, return_adv=True, **kw)
        else:
            res = input_margin(model, x, norm=args.norm, return_adv=True, **kw)
        dt = time.perf_counter() - t0
        val = ac.judge(copy.deepcopy(model).double().eval(), x, y, res.adversarial, args.norm)
        best = best_peer(name, model, x, y, args.norm, args.offset, args.raw)
        r = val / best
        if args.save:
            np.save(args.save, val)
        print(f"{name} {args.norm}: median norm {np.median(val):.4f} vs peers median {np.median(r):.4f} p95 "
              f"{np.quantile(r, 0.95):.4f} max {r.max():.4f} passes {res.passes.float().mean():.0f} {dt:.1f}s", flush=True)
        worst = np.argsort(-r)[:8]
        print("  worst:", ", ".join(f"#{i} {r[i]:.4f} {res.stage[i]} {int(res.passes[i])}p" for i in worst))
        print("  ALMA rounds (samples x runs):", ", ".join(f"{n} x {k}" for n, k in rounds) or "none", f"of {len(val)} samples")
        if args.profile:
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
