"""marginkit's per-sample ratio to the best peer, against subsets of the peers of the last full
``bench/attacks_compare.py`` run (its stored per-sample norms): all peers (the benchmark's target), the
peers at their documented settings only, and the pass-matched peer runs only (whose lengths follow
marginkit's pass count). Prints a Markdown table of median and p95 per model and norm:

    python bench/peer_subsets.py [--raw runs/bench_attacks/per_sample.csv]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", default="runs/bench_attacks/per_sample.csv")
    args = ap.parse_args()
    raw = pd.read_csv(args.raw)
    print("| model | norm | vs all peers: median / p95 | vs documented settings: median / p95 | vs pass-matched runs: median / p95 |")
    print("|---|---|---|---|---|")
    for (model, norm), d in raw.groupby(["model", "norm"], sort=False):
        wide = d.pivot_table(index="sample", columns="method", values="value")
        ours = [c for c in wide.columns if c.startswith("marginkit")]
        if not ours:
            continue
        mk = wide[ours[0]]
        peers = wide.drop(columns=ours)
        subsets = [list(peers.columns), [c for c in peers.columns if "[matched" not in c], [c for c in peers.columns if "[matched" in c]]
        cells = []
        for cols in subsets:
            if not cols:
                cells.append("-")
                continue
            r = (mk / peers[cols].min(axis=1)).to_numpy()
            cells.append(f"{np.median(r):.4f} / {np.quantile(r, 0.95):.4f}")
        print(f"| {model} | {norm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
