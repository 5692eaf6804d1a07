"""The main job's report: margins summary plus what the margins say about robustness.

Given a per-sample table with input margins, it adds margin consistency (Kendall tau of logit margin
vs input margin), detection of non-robust samples at ``eps`` and the robust-accuracy curve read from
the minimal-norm margins (seed paper: margin consistency, Table 1 and Algorithm 1).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..results.provenance import atomic_write_text
from .summary import write_summary

__all__ = ["DEFAULT_EPS", "write_quickstart_report"]

# Threat-model radii for MNIST-scale inputs in [0, 1] (784 pixels); users pass their own with --eps.
DEFAULT_EPS = {"l1": 5.0, "l2": 1.0, "linf": 0.05}


def write_quickstart_report(df: pd.DataFrame, out_dir: str, title: str, settings: Mapping[str, Any],
                            eps: float | None = None, seed: int = 0, bracket: Any | None = None) -> dict[str, str]:
    """``summary.md`` (margins, accuracy, robust accuracy curve, consistency), JSON, histograms and the
    consistency plots under ``out_dir/consistency``. Without input margins only the summary is written."""
    from ..consistency import evaluate_consistency
    from ..margins.robust import robust_accuracy_curve
    from ..pipeline.consistency import ConsistencyRun
    from .consistency_report import write_consistency_report

    paths = write_summary(df, out_dir, title, settings)
    d = df["input_margin_upper"].to_numpy(dtype=float)
    if len(df) == 0 or np.isnan(d).all():
        return paths
    norm = str(df["norm"].iloc[0])
    eps = float(DEFAULT_EPS.get(norm, 1.0) if eps is None else eps)
    correct = (df["label"] == df["prediction"]).to_numpy()
    keep = ~np.isnan(d)
    grid = [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
    report = evaluate_consistency(df, eps, norm=norm, eps_grid=grid, subset_sizes=(100,), repeats=10,
                                  n_resamples=200, seed=seed)
    cdir = os.path.join(out_dir, "consistency")
    write_consistency_report(ConsistencyRun(report, eps, norm), cdir, title=f"Margin consistency ({norm}, eps={eps:g})")
    row = report.table1_row("logit_margin")
    fmt = (lambda v: "n/a" if v is None else f"{v:.2f}")
    lines = ["", "## Robustness read from the margins", "",
             f"Robust accuracy = fraction of samples correctly classified whose input margin exceeds eps "
             f"({norm}; {int(np.isinf(d[keep]).sum())} samples with no flip found count as robust).", "",
             "| eps | " + " | ".join(f"{e:g}" for e in grid) + " |", "|---|" + "---|" * len(grid),
             "| robust accuracy | " + " | ".join(f"{100 * v:.1f}%" for v in robust_accuracy_curve(d[keep], grid, correct[keep])) + " |",
             "", f"Margin consistency at eps = {eps:g} (logit margin as the score):", "",
             "| Kendall tau | AUROC | AUPR (AP) | FPR@95 | non-robust samples |", "|---|---|---|---|---|",
             f"| {fmt(row['kendall_tau'])} | {fmt(row['auroc'])} | {fmt(row['aupr_ap'])} | {fmt(row['fpr95'])} | "
             f"{fmt(row['non_robust_fraction'])}% |", "",
             "Details, eps sweep and Algorithm 1 estimates: [consistency/report.md](consistency/report.md).", ""]
    if bracket is not None:
        lines += _bracket_lines(bracket, grid, out_dir)
    with open(paths["markdown"]) as fh:
        text = fh.read()
    marker = "\n## Settings"
    head, sep, tail = text.partition(marker)
    atomic_write_text(paths["markdown"], head.rstrip("\n") + "\n" + "\n".join(lines) + sep + tail)
    paths["consistency"] = os.path.join(cdir, "report.md")
    return paths


def _bracket_lines(bracket: Any, grid: list[float], out_dir: str) -> list[str]:
    """The certified-bracket section: robust accuracy from lower and from upper bounds, the share of
    samples whose label at eps is decided, and Kendall tau of the logit margin against both ends."""
    from ..consistency.bracket import bracket_markdown, bracket_summary

    lines = ["", f"## Certified bracket ({bracket.method}, first samples of the table)", ""]
    if bracket.skipped:
        return lines + [f"Skipped: {bracket.skipped}.", ""]
    t = bracket.table
    atomic_write_text(os.path.join(out_dir, "bracket.csv"), t.to_csv(index=False))
    summary = bracket_summary(t, grid)
    if summary is None:
        return lines + ["No sample got a certified lower bound.", ""]
    return lines + ["Per-sample bracket: [bracket.csv](bracket.csv).", "", *bracket_markdown(summary)]
