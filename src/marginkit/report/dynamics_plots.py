"""Plots of margin dynamics (min-vs-average margin paper, Figures 1a-c, 2, 6, 7), PNG via matplotlib Agg."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .plotting import pyplot as _plt
from .plotting import save_figure as _save

__all__ = ["plot_margin_curves", "plot_margin_histograms", "plot_adversarial_grid", "plot_linear_dynamics",
           "plot_tracker"]


def plot_margin_curves(epochs: Sequence[float], series: dict[str, dict[str, Sequence[float]]], path: str, *,
                       references: dict[str, dict[str, float]] | None = None, logx: bool = False,
                       title: str = "") -> str:
    """Fig. 1a / 2 / 6: minimum (left) and average (right) margin against epoch.

    ``series``: {"min": {"train": [...], "test": [...]}, "avg": {...}}; ``references``: horizontal lines,
    e.g. {"min": {"SVM train": 1.54}}.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for ax, key, label in ((axes[0], "min", "minimum margin"), (axes[1], "avg", "average margin")):
        for name, ys in series.get(key, {}).items():
            ax.plot(epochs[: len(ys)], ys, marker="o", ms=3, label=name)
        for name, val in (references or {}).get(key, {}).items():
            ax.axhline(val, ls="--", color="gray", lw=1, label=name)
        if logx:
            if min(epochs) > 0:
                ax.set_xscale("log")
            else:
                ax.set_xscale("symlog", linthresh=1)
                ax.set_xlim(left=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_margin_histograms(margins: dict[Any, Sequence[float]], path: str, *, extra: dict[str, Sequence[float]] | None = None,
                           bins: int = 30, title: str = "", max_panels: int = 6) -> str:
    """Fig. 1b / 7 / 8: margin histograms at several epochs (shared bins), optional extra panels (e.g. SVM)."""
    plt = _plt()
    keys = list(margins)
    if len(keys) > max_panels:
        pick = np.unique(np.round(np.linspace(0, len(keys) - 1, max_panels)).astype(int))
        keys = [keys[i] for i in pick]
    panels = [(f"epoch {k}", np.asarray(margins[k], dtype=float)) for k in keys]
    panels += [(name, np.asarray(v, dtype=float)) for name, v in (extra or {}).items()]
    allv = np.concatenate([v[np.isfinite(v)] for _, v in panels if v.size]) if panels else np.array([0.0])
    edges = np.linspace(min(0.0, float(allv.min())) if allv.size else 0.0, float(allv.max()) if allv.size else 1.0, bins + 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.6), sharey=True, squeeze=False)
    for ax, (name, v) in zip(axes[0], panels):
        ax.hist(v[np.isfinite(v)], bins=edges, color="tab:blue" if not name.startswith("SVM") else "tab:orange")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("margin")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_adversarial_grid(images: dict[Any, Any], path: str, *, row_labels: Sequence[str] | None = None,
                          title: str = "") -> str:
    """Fig. 1c: minimal adversarial examples (rows: examples, columns: epochs), clipped to [0, 1] for display."""
    plt = _plt()
    keys = list(images)
    first = np.asarray(images[keys[0]])
    rows = first.shape[0]
    fig, axes = plt.subplots(rows, len(keys), figsize=(1.5 * len(keys), 1.6 * rows), squeeze=False)
    for j, k in enumerate(keys):
        arr = np.asarray(images[k])
        for i in range(rows):
            img = arr[i].reshape(arr[i].shape[-2], arr[i].shape[-1]) if arr[i].ndim >= 2 else arr[i]
            axes[i][j].imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if i == 0:
                axes[i][j].set_title(f"epoch {k}", fontsize=8)
            if j == 0 and row_labels:
                axes[i][j].set_ylabel(row_labels[i], fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_linear_dynamics(result: Any, out_dir: str) -> dict[str, str]:
    """All Figure-1 panels of a :class:`marginkit.training.dynamics.LinearDynamics` into ``out_dir``."""
    df = result.frame()
    df = df[df["epoch"] > 0]
    series = {"min": {"train": df["train_min_margin"].tolist(), "test": df["test_min_margin"].tolist()},
              "avg": {"train": df["train_avg_margin"].tolist(), "test": df["test_avg_margin"].tolist()}}
    refs = {"min": {"SVM (train)": result.svm["train_min_margin"]}, "avg": {"SVM (train)": result.svm["train_avg_margin"]}}
    out = {"curves": plot_margin_curves(df["epoch"].tolist(), series, os.path.join(out_dir, "linear_margins.png"),
                                        references=refs, logx=True, title="logistic regression, MNIST 0 vs 1")}
    hist_epochs = [e for e in result.margins if e > 0]
    hist = {e: result.margins[e] for e in hist_epochs}
    out["histograms"] = plot_margin_histograms(hist, os.path.join(out_dir, "linear_histograms.png"),
                                               extra={"SVM": result.svm["margins"]}, title="train margins")
    if result.adversarial:
        labels = [f"class {int(c)}" for c in result.example_labels]
        out["adversarial"] = plot_adversarial_grid(result.adversarial, os.path.join(out_dir, "linear_adversarial.png"),
                                                   row_labels=labels, title="minimal adversarial examples (eq. 7)")
    return out


def plot_tracker(history: Sequence[dict[str, Any]], out_dir: str, *, prefix: str = "", title: str = "") -> dict[str, str]:
    """Curves and per-split histograms from a :class:`MarginTracker` history."""
    splits = sorted({r["split"] for r in history})
    epochs = sorted({r["epoch"] for r in history})
    by = {(r["epoch"], r["split"]): r for r in history}
    series: dict[str, dict[str, Sequence[float]]] = {"min": {}, "avg": {}}
    for s in splits:
        series["min"][s] = [by[(e, s)]["min_margin"] if (e, s) in by else np.nan for e in epochs]
        series["avg"][s] = [by[(e, s)]["avg_margin"] if (e, s) in by else np.nan for e in epochs]
    out = {"curves": plot_margin_curves(epochs, series, os.path.join(out_dir, f"{prefix}margins.png"), title=title)}
    for s in splits:
        hist = {e: by[(e, s)]["margins"] for e in epochs if (e, s) in by}
        out[f"histograms_{s}"] = plot_margin_histograms(hist, os.path.join(out_dir, f"{prefix}histograms_{s}.png"),
                                                        title=f"{title} ({s})".strip())
    return out
