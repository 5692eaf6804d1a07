"""The whole margin-consistency evaluation of one per-sample table (seed paper Table 1, Figs. 2, 5, 9).

:func:`evaluate_consistency` reads the arrays of a results table (:func:`marginkit.results.read_results`)
and returns a :class:`ConsistencyReport`: accuracy, robust accuracy at eps, and for every score
(logit margin, feature margin, pseudo-margin, any user column) its margin consistency (Kendall tau,
Spearman rho with bootstrap CIs), its detection of non-robust samples at eps and over an eps grid,
the binned view of Fig. 2, and Algorithm 1's robust-accuracy estimates from small subsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..margins.robust import robust_accuracy
from ..results.jsonio import to_jsonable
from .algorithm1 import DEFAULT_ALPHAS, Algorithm1Evaluation, algorithm1_repeats
from .bracket import bracket_markdown, bracket_summary
from .metrics import (
    BinnedConsistency,
    Consistency,
    DegenerateMetricError,
    DetectionMetrics,
    binned_consistency,
    detection_metrics,
    eps_sweep,
    margin_consistency,
)

__all__ = ["ScoreReport", "ConsistencyReport", "evaluate_consistency", "compare_scores", "DEFAULT_SCORE_COLUMNS"]

DEFAULT_SCORE_COLUMNS = {"logit_margin": "logit margin", "feature_margin": "feature margin"}


@dataclass
class ScoreReport:
    """Everything measured for one score."""

    name: str
    consistency: Consistency | None
    detection: DetectionMetrics
    sweep: list[DetectionMetrics]
    binned: BinnedConsistency | None
    algorithm1: list[Algorithm1Evaluation] = field(default_factory=list)
    message: str = ""

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        return {"name": self.name, "consistency": self.consistency.to_dict() if self.consistency else None,
                "detection": self.detection.to_dict(curves=curves), "sweep": [d.to_dict() for d in self.sweep],
                "binned": self.binned.to_dict() if self.binned else None,
                "algorithm1": [a.to_dict() for a in self.algorithm1], "message": self.message}


@dataclass
class ConsistencyReport:
    """Margin-consistency evaluation of one model / dataset / norm."""

    norm: str
    eps: float
    eps_grid: list[float]
    n: int
    n_dropped: int  # rows without an input margin (NaN: not computed)
    n_infinite_margin: int  # attacks that found no flip (robust at every finite eps as far as we know)
    accuracy: float
    robust_accuracy: float
    scores: dict[str, ScoreReport]
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # equidistance, isometry, pseudo-margin, ...

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        return to_jsonable({"norm": self.norm, "eps": self.eps, "eps_grid": self.eps_grid, "n": self.n,
                          "n_dropped": self.n_dropped, "n_infinite_margin": self.n_infinite_margin,
                          "accuracy": self.accuracy, "robust_accuracy": self.robust_accuracy,
                          "scores": {k: v.to_dict(curves) for k, v in self.scores.items()},
                          "settings": self.settings, "extras": self.extras})

    def table1_row(self, score: str = "logit_margin") -> dict[str, Any]:
        """The Table 1 columns for one score (percentages as in the paper)."""
        r = self.scores[score]
        pct = (lambda v: None if v is None else 100.0 * v)
        return {"norm": self.norm, "eps": self.eps, "score": r.name,
                "kendall_tau": r.consistency.tau if r.consistency else None,
                "auroc": pct(r.detection.auroc), "aupr_ap": pct(r.detection.aupr),
                "aupr_trapezoid": pct(r.detection.aupr_trapezoid), "fpr95": pct(r.detection.fpr_at_95_tpr),
                "accuracy": 100.0 * self.accuracy, "robust_accuracy": 100.0 * self.robust_accuracy,
                "non_robust_fraction": 100.0 * r.detection.positive_rate}

    def to_markdown(self, title: str = "Margin consistency") -> str:
        return _markdown(self, title)


def compare_scores(scores: Mapping[str, Any], input_margin: Any, eps: float, *, n_resamples: int = 0,
                   seed: int = 0) -> dict[str, dict[str, Any]]:
    """tau, AUROC, AUPR (AP and trapezoid) and FPR@95 of several scores on the same samples
    (seed paper Table 2: learned pseudo-margin against logit margin)."""
    out: dict[str, dict[str, Any]] = {}
    for name, s in scores.items():
        try:
            c = margin_consistency(s, input_margin, n_resamples=n_resamples, seed=seed)
            tau, lo, hi = c.tau, c.kendall.ci_low, c.kendall.ci_high
        except DegenerateMetricError as exc:
            tau, lo, hi = None, None, None
            out.setdefault(name, {})["message"] = str(exc)
        det = detection_metrics(s, input_margin, eps)
        out.setdefault(name, {}).update({"kendall_tau": tau, "tau_ci": [lo, hi], **det.to_dict()})
    return out


def evaluate_consistency(
    table: pd.DataFrame | Mapping[str, Any],
    eps: float,
    *,
    norm: str | None = None,
    eps_grid: Sequence[float] | None = None,
    score_columns: Mapping[str, str] | None = None,
    extra_scores: Mapping[str, Any] | None = None,
    subset_sizes: Sequence[int] = (100, 500),
    repeats: int = 10,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_resamples: int = 1000,
    n_bins: int = 10,
    seed: int = 0,
) -> ConsistencyReport:
    """Evaluate margin consistency on a per-sample table.

    ``table`` has the columns of :data:`marginkit.results.COLUMNS` (at least ``label``,
    ``prediction``, ``input_margin_upper`` and the score columns). Rows whose input margin is NaN (not
    computed) are dropped and counted. ``score_columns`` maps column -> display name (default: logit
    and feature margins; a column that is NaN throughout, such as the feature margin of a model
    without a linear head, is skipped with a note). ``extra_scores`` adds user arrays aligned with the
    table's rows. Algorithm 1 is evaluated for each ``subset_sizes`` with ``repeats`` subsets on
    the logit margin (the score the paper uses) and on every other score.
    """
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(dict(table))
    for col in ("label", "prediction", "input_margin_upper"):
        if col not in df:
            raise ValueError(f"the table has no column {col!r}; it must be a marginkit per-sample results table")
    if len(df) == 0:
        raise ValueError("the table is empty")
    d_all = df["input_margin_upper"].to_numpy(dtype=float)
    keep = ~np.isnan(d_all)
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError("no sample of the table has an input margin (column input_margin_upper is all NaN); "
                         "compute them first (marginkit margins --input-margin attack)")
    d = d_all[keep]
    correct = (df["label"].to_numpy() == df["prediction"].to_numpy())[keep]
    if norm is None:
        norm = str(df["norm"].iloc[0]) if "norm" in df and len(df) else "unknown"
    grid = list(eps_grid) if eps_grid is not None else [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0, 4.0)]
    cols = dict(score_columns) if score_columns is not None else dict(DEFAULT_SCORE_COLUMNS)
    scores: dict[str, tuple[str, np.ndarray | None, str]] = {}
    for col, label in cols.items():
        if col not in df:
            raise ValueError(f"the table has no score column {col!r}")
        v = df[col].to_numpy(dtype=float)[keep]
        if np.isnan(v).all():
            scores[col] = (label, None, f"{col} is NaN for every sample (e.g. no linear head): skipped")
        elif not np.isfinite(v).all():
            raise ValueError(f"score column {col!r} has NaN or infinite values in {int((~np.isfinite(v)).sum())} rows")
        else:
            scores[col] = (label, v, "")
    for name, arr in (extra_scores or {}).items():
        a = np.asarray(arr.detach().cpu() if hasattr(arr, "detach") else arr, dtype=float)
        if a.shape != (len(df),):
            raise ValueError(f"extra score {name!r} must have one value per table row ({len(df)}), got shape {a.shape}")
        scores[name] = (name, a[keep], "")

    reports: dict[str, ScoreReport] = {}
    for key, (label, s, note) in scores.items():
        if s is None:
            reports[key] = ScoreReport(label, None, DetectionMetrics(float(eps), len(d), int((d <= eps).sum()),
                                       None, None, None, None, None, message=note), [], None, [], note)
            continue
        msg = []
        try:
            cons = margin_consistency(s, d, n_resamples=n_resamples, seed=seed)
        except DegenerateMetricError as exc:
            cons = None
            msg.append(str(exc))
        try:
            binned = binned_consistency(s, d, n_bins)
        except DegenerateMetricError as exc:
            binned = None
            msg.append(str(exc))
        # Labelled (robust accuracy) and unlabelled (vulnerable fraction) variants of Algorithm 1.
        algo = [algorithm1_repeats(s, d, eps, n, c, repeats=repeats, seed=seed, alphas=alphas)
                for c in (correct, None) for n in subset_sizes if n <= len(d)]
        skipped = [n for n in subset_sizes if n > len(d)]
        if skipped:
            msg.append(f"Algorithm 1 subset sizes {skipped} exceed the {len(d)} samples: skipped")
        reports[key] = ScoreReport(label, cons, detection_metrics(s, d, eps, keep_curves=True), eps_sweep(s, d, grid),
                                   binned, algo, "; ".join(msg))
    settings = {"eps": eps, "eps_grid": grid, "subset_sizes": list(subset_sizes), "repeats": repeats,
                "alphas": list(alphas), "n_resamples": n_resamples, "n_bins": n_bins, "seed": seed}
    extras: dict[str, Any] = {}
    if "logit_margin" in df:
        bracket = bracket_summary(df[keep], sorted({float(eps), *grid}))
        if bracket is not None:
            extras["bracket"] = bracket.to_dict()
    return ConsistencyReport(norm=str(norm), eps=float(eps), eps_grid=[float(e) for e in grid], n=int(len(d)),
                             n_dropped=n_dropped, n_infinite_margin=int(np.isinf(d).sum()),
                             accuracy=float(correct.mean()), robust_accuracy=robust_accuracy(d, eps, correct),
                             scores=reports, settings=settings, extras=extras)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _markdown(rep: ConsistencyReport, title: str) -> str:
    lines = [f"# {title}", "",
             f"norm **{rep.norm}**, eps = **{rep.eps:.6g}**, {rep.n} samples"
             + (f" ({rep.n_dropped} without an input margin dropped)" if rep.n_dropped else "") + ".",
             f"Accuracy {100 * rep.accuracy:.2f}%, robust accuracy at eps (from the estimated input margins, an upper bound) "
             f"{100 * rep.robust_accuracy:.2f}%.",
             f"{rep.n_infinite_margin} sample(s) have no flip found by the attack (input margin inf): counted robust at every "
             "finite eps, as far as the attack can tell; never as margin 0.", "",
             "## Table 1 (non-robust detection at eps; percentages)", "",
             "| score | Kendall tau [95% CI] | Spearman rho | AUROC | AUPR (AP) | AUPR (trapezoid) | FPR@95 | Acc | Rob. Acc | non-robust |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in rep.scores.items():
        row = rep.table1_row(key)
        c = r.consistency
        tau = "n/a" if c is None else (f"{c.tau:.3f} [{_fmt(c.kendall.ci_low, 3)}, {_fmt(c.kendall.ci_high, 3)}]")
        rho = "n/a" if c is None else f"{c.rho:.3f}"
        lines.append(f"| {r.name} | {tau} | {rho} | {_fmt(row['auroc'])} | {_fmt(row['aupr_ap'])} | "
                     f"{_fmt(row['aupr_trapezoid'])} | {_fmt(row['fpr95'])} | {row['accuracy']:.2f} | "
                     f"{row['robust_accuracy']:.2f} | {row['non_robust_fraction']:.1f} |")
    notes = [f"- {r.name}: {r.message}" for r in rep.scores.values() if r.message]
    notes += [f"- {r.name} at eps: {r.detection.message}" for r in rep.scores.values() if r.detection.message and not r.message]
    if notes:
        lines += ["", *notes]
    lines += ["", "AUPR (AP) is sklearn's average precision; AUPR (trapezoid) is auc(recall, precision), the paper code's "
              "definition. FPR@95 interpolates linearly between ROC points. Positives are non-robust samples "
              "(d_in <= eps); low scores flag them.", "", "## AUROC over eps", "",
              "| eps | non-robust | " + " | ".join(r.name for r in rep.scores.values()) + " |",
              "|---|---|" + "---|" * len(rep.scores)]
    first = next(iter(rep.scores.values()))
    for i, e in enumerate(rep.eps_grid):
        npos = first.sweep[i].n_positive if first.sweep else None
        cells = []
        for r in rep.scores.values():
            if not r.sweep:
                cells.append("n/a")
            else:
                m = r.sweep[i]
                cells.append(_fmt(None if m.auroc is None else 100 * m.auroc) if m.defined else "n/a (" + m.message.split(":")[-1].strip() + ")")
        lines.append(f"| {e:.6g} | {npos} | " + " | ".join(cells) + " |")
    algo_rows = [(r.name, a) for r in rep.scores.values() for a in r.algorithm1]
    if algo_rows:
        lines += ["", f"## Algorithm 1: estimates from the input margins of n of the {rep.n} samples (percentage points)", "",
                  "Robust accuracy uses the labels; the vulnerable fraction (share with d_in <= eps) does not. "
                  "Errors are against the value computed from the input margins of all samples. The last column is the "
                  "baseline without any score: the mean absolute error of the subset's own value.", "",
                  "| score | quantity | n | repeats | full-set value | mean estimate | mean abs. error | std abs. error | max abs. error | subset-only mean abs. error |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, a in algo_rows:
            lines.append(f"| {name} | {a.quantity.replace('_', ' ')} | {a.n_subset} | {a.repeats} | {100 * a.full_value:.2f} | "
                         f"{100 * np.mean(a.estimates):.2f} | {100 * a.mean_abs_error:.2f} | {100 * a.std_abs_error:.2f} | "
                         f"{100 * a.max_abs_error:.2f} | {100 * a.subset_mean_abs_error:.2f} |")
    ex = rep.extras
    if "equidistance" in ex and "pairs" in ex["equidistance"]:  # else no linear head: {"message": why}
        e = ex["equidistance"]
        lines += ["", "## Head equidistance (appendix B.5)", "",
                  f"||w_i - w_j||_q over {e['pairs']} class pairs (q dual of {rep.norm}): median {e['median']:.4g}, "
                  f"IQR {e['iqr']:.4g}, IQR/median {e['relative_iqr']:.3f}."]
    if "isometry" in ex:
        i = ex["isometry"]
        lines += ["", "## Local isometry (Fig. 6)", "",
                  f"{i['n']} samples: Kendall tau(||x - x'||, ||h(x) - h(x')||) = {i['kendall_tau']:.3f}, Pearson r = "
                  f"{i['pearson_r']:.3f}, median scale kappa = {i['kappa_median']:.4g} (IQR {i['kappa_iqr']:.4g})."]
    if "pseudo_margin" in ex:
        p = ex["pseudo_margin"]
        lines += ["", "## Learned pseudo-margin (section 3.3, Table 2; held-out test samples)", "",
                  f"Trained on {p['n_train_total']} samples ({p['source']}, hidden {p['hidden']}, target {p['transform']}), "
                  f"best validation MSE {_fmt(p.get('best_val_mse'), 5)} after {p.get('epochs_run')} epochs.", "",
                  "| score | Kendall tau | AUROC | AUPR (AP) | AUPR (trapezoid) | FPR@95 |", "|---|---|---|---|---|---|"]
        for name, m in p["comparison"].items():
            pct = (lambda v: None if v is None else 100 * v)
            lines.append(f"| {name} | {_fmt(m['kendall_tau'], 3)} | {_fmt(pct(m['auroc']))} | {_fmt(pct(m['aupr']))} | "
                         f"{_fmt(pct(m['aupr_trapezoid']))} | {_fmt(pct(m['fpr_at_95_tpr']))} |")
    if "bracket" in ex:
        lines += ["", "## Certified bracket (lower <= input margin <= upper)", "", *bracket_markdown(ex["bracket"])]
    if "plots" in ex:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in ex["plots"].items()]
    lines += ["", "## Settings", "", "```", *(f"{k}: {v}" for k, v in rep.settings.items()), "```", ""]
    return "\n".join(lines)
