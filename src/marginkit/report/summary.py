"""Summary of a per-sample results table: accuracy, margin statistics, histograms."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..results.jsonio import dumps, write_json
from ..results.provenance import atomic_write_text
from .plotting import pyplot, save_figure

__all__ = ["summarize_table", "write_summary", "MARGIN_COLUMNS"]

MARGIN_COLUMNS = {
    "logit_margin": "logit margin d_out (top-1 minus top-2 logit)",
    "feature_margin": "feature margin (distance to the head's nearest hyperplane)",
    "input_margin_upper": "input margin d_in (upper bound; exact for affine models)",
    "input_margin_lower": "input margin d_in (certified lower bound)",
}
_QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}


def _stats(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    out: dict[str, Any] = {"count": int(values.size), "finite": int(finite.size),
                           "infinite": int(np.isinf(values).sum()), "missing": int(np.isnan(values).sum())}
    if finite.size:
        out["mean"] = float(finite.mean())
        out.update({k: float(np.quantile(finite, q)) for k, q in _QUANTILES.items()})
    return out


def summarize_table(df: pd.DataFrame) -> dict[str, Any]:
    """Accuracy and margin statistics over correctly classified samples (a misclassified sample's
    margins describe a wrong decision, so they are summarised apart)."""
    n = int(len(df))
    correct = (df["label"] == df["prediction"]).to_numpy()
    out: dict[str, Any] = {"samples": n, "correct": int(correct.sum()),
                           "accuracy": float(correct.mean()) if n else float("nan"), "margins": {}}
    for col in MARGIN_COLUMNS:
        if col in df and df[col].notna().any():
            vals = df[col].to_numpy(dtype=float)
            out["margins"][col] = {"correct": _stats(vals[correct]), "misclassified": _stats(vals[~correct])}
    if "status" in df:
        out["status_counts"] = {str(k): int(v) for k, v in df["status"].value_counts().items()}
    if "norm" in df and len(df):
        out["norm"] = str(df["norm"].iloc[0])
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _markdown(summary: Mapping[str, Any], title: str, settings: Mapping[str, Any] | None) -> str:
    lines = [f"# {title}", "", f"- samples: {summary['samples']}",
             f"- accuracy: {summary['accuracy']:.4f} ({summary['correct']} correct)"]
    if "norm" in summary:
        lines.append(f"- norm: {summary['norm']}")
    if summary.get("status_counts"):
        lines.append("- input-margin status: " + ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items()))
    if settings and settings.get("split_description"):
        lines.append(f"- data ({settings.get('split', 'test')} split): {settings['split_description']}")
    lines += ["", "## Margins of correctly classified samples", "",
              "| margin | finite | mean | min | p05 | p25 | median | p75 | p95 | max |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for col, parts in summary["margins"].items():
        s = parts["correct"]
        if s.get("finite"):
            lines.append(f"| {MARGIN_COLUMNS[col]} | {s['finite']}/{s['count']} | " +
                         " | ".join(_fmt(s[k]) for k in ("mean", "min", "p05", "p25", "median", "p75", "p95", "max")) + " |")
    if settings and settings.get("feature_margin_reason") and "feature_margin" not in summary["margins"]:
        lines += ["", f"No feature margins: {settings['feature_margin_reason']}"]
    if settings:
        lines += ["", "## Settings", "", "```json", dumps(settings), "```"]
    lines += ["", "![margin histograms](margins_hist.png)", ""]
    return "\n".join(lines)


def plot_histograms(df: pd.DataFrame, path: str) -> str:
    """Histograms of each available margin column, correct and misclassified samples overlaid."""
    plt = pyplot()
    cols = [c for c in MARGIN_COLUMNS if c in df and np.isfinite(df[c].to_numpy(dtype=float)).any()]
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(4.5 * max(len(cols), 1), 3.4), squeeze=False)
    correct = (df["label"] == df["prediction"]).to_numpy()
    for ax, col in zip(axes[0], cols):
        vals = df[col].to_numpy(dtype=float)
        finite = np.isfinite(vals)
        bins = np.histogram_bin_edges(vals[finite], bins=40)
        ax.hist(vals[finite & correct], bins=bins, alpha=0.75, label="correct")
        if (finite & ~correct).any():
            ax.hist(vals[finite & ~correct], bins=bins, alpha=0.75, label="misclassified")
        ax.set_xlabel(MARGIN_COLUMNS[col])
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_summary(df: pd.DataFrame, out_dir: str, title: str = "marginkit summary",
                  settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write ``summary.json``, ``summary.md`` and ``margins_hist.png`` into ``out_dir``."""
    summary = summarize_table(df)
    paths = {"json": os.path.join(out_dir, "summary.json"), "markdown": os.path.join(out_dir, "summary.md"),
             "histogram": os.path.join(out_dir, "margins_hist.png")}
    write_json(paths["json"], {"summary": summary, "settings": settings or {}})
    atomic_write_text(paths["markdown"], _markdown(summary, title, settings))
    plot_histograms(df, paths["histogram"])
    return paths
