"""Plots of a margin-consistency evaluation (seed paper Figs. 2, 5/10, 6, 9), PNG via matplotlib Agg."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .plotting import pyplot, save_figure

__all__ = ["plot_binned_consistency", "plot_detection_curves", "plot_auroc_vs_eps", "plot_algorithm1_errors",
           "plot_isometry", "write_consistency_plots"]


def plot_binned_consistency(report: Any, path: str) -> str:
    """Fig. 2: input margin in quantile bins (x) against the mean score with its standard error (y),
    one panel per score, Kendall tau in the title."""
    plt = pyplot()
    items = [(k, r) for k, r in report.scores.items() if r.binned is not None]
    if not items:
        raise ValueError("no score has a binned consistency to plot")
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.6), squeeze=False)
    for ax, (_, r) in zip(axes[0], items):
        b = r.binned
        ax.errorbar(b.centers, b.mean_score, yerr=b.stderr, fmt="o-", capsize=3, ms=4)
        tau = f"tau = {r.consistency.tau:.3f}" if r.consistency else "tau n/a"
        ax.set_title(f"{r.name} ({tau})", fontsize=10)
        ax.set_xlabel(f"input margin d_in ({report.norm}), bin median")
        ax.set_ylabel(f"mean {r.name} +- s.e.")
        ax.axvline(report.eps, color="grey", ls=":", lw=1)
        if b.n_infinite_margin:
            ax.text(0.02, 0.95, f"{b.n_infinite_margin} with d_in = inf not binned", transform=ax.transAxes,
                    fontsize=7, va="top")
    return save_figure(fig, path)


def plot_detection_curves(report: Any, path: str) -> str:
    """ROC and precision-recall curves of each score at the report's eps."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    drawn = 0
    for r in report.scores.values():
        c = r.detection.curves
        if not c:
            continue
        drawn += 1
        ax1.plot(c["fpr"], c["tpr"], label=f"{r.name} (AUROC {100 * r.detection.auroc:.1f})")
        ax2.plot(c["recall"], c["precision"], label=f"{r.name} (AP {100 * r.detection.aupr:.1f})")
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no detection curves at eps={report.eps:.6g} (degenerate: no positive or no negative sample)")
    ax1.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax1.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax1.set_xlabel("false positive rate")
    ax1.set_ylabel("true positive rate")
    ax1.set_title(f"ROC, non-robust = d_in <= {report.eps:.4g}", fontsize=10)
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    ax2.set_title("precision-recall", fontsize=10)
    for ax in (ax1, ax2):
        ax.legend(fontsize=8, loc="lower right" if ax is ax1 else "lower left")
    return save_figure(fig, path)


def plot_auroc_vs_eps(report: Any, path: str) -> str:
    """Appendix B.2 / Fig. 9: AUROC of each score against eps (undefined eps are left out)."""
    plt = pyplot()
    series = [(r.name, [(m.eps, m.auroc) for m in r.sweep if m.defined]) for r in report.scores.values()]
    series = [(name, pts) for name, pts in series if pts]
    if not series:
        raise ValueError("AUROC is undefined at every eps of the sweep")
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for name, pts in series:
        e, a = zip(*pts)
        ax.plot(e, a, "o-", label=name)
    ax.set_xlabel(f"eps ({report.norm})")
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.0, 1.02)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.legend(fontsize=8)
    ax.set_title("non-robust detection over eps", fontsize=10)
    return save_figure(fig, path)


def plot_algorithm1_errors(report: Any, path: str) -> str:
    """Figs. 5/10: absolute error (percentage points) of Algorithm 1 per subset size, logit margin."""
    plt = pyplot()
    groups = [(r.name, a) for r in report.scores.values() for a in r.algorithm1 if a.quantity == "robust_accuracy"]
    if not groups:
        raise ValueError("the report has no Algorithm 1 evaluation")
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(groups) + 2), 3.8))
    ax.boxplot([100 * np.asarray(a.abs_errors) for _, a in groups])
    ax.set_xticks(range(1, len(groups) + 1), [f"{n}\nn={a.n_subset}" for n, a in groups], fontsize=8)
    ax.set_ylabel("|estimate - full-set robust acc.| (pp)")
    ax.set_title(f"Algorithm 1 at eps={report.eps:.4g}, {groups[0][1].repeats} subsets each", fontsize=10)
    return save_figure(fig, path)


def plot_isometry(isometry: Any, path: str) -> str:
    """Fig. 6: ||x - x'|| against ||h(x) - h(x')|| for each sample and its adversarial example."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    ax.scatter(isometry.input_distance, isometry.feature_distance, s=6, alpha=0.6)
    ax.set_xlabel(f"||x - x'||_{isometry.norm}")
    ax.set_ylabel(f"||h(x) - h(x')||_{isometry.norm}")
    ax.set_title(f"local isometry: tau {isometry.kendall_tau:.3f}, r {isometry.pearson_r:.3f}", fontsize=10)
    return save_figure(fig, path)


def write_consistency_plots(report: Any, out_dir: str, isometry: Any = None) -> dict[str, str]:
    """Write every plot that the report supports into ``out_dir``; returns name -> file name.

    A plot that is undefined for these data (e.g. no positives at eps) is skipped, not faked.
    """
    jobs = {"binned": plot_binned_consistency, "detection": plot_detection_curves, "auroc_vs_eps": plot_auroc_vs_eps,
            "algorithm1": plot_algorithm1_errors}
    out: dict[str, str] = {}
    for name, fn in jobs.items():
        try:
            fn(report, os.path.join(out_dir, f"{name}.png"))
            out[name] = f"{name}.png"
        except ValueError:
            continue
    if isometry is not None:
        plot_isometry(isometry, os.path.join(out_dir, "isometry.png"))
        out["isometry"] = "isometry.png"
    return out
