"""Margin consistency and non-robust sample detection metrics (seed paper sections 2.2-2.3, Table 1).

Conventions used everywhere in :mod:`marginkit.consistency`:

* a *score* is any per-sample margin-like array where **larger means further from the decision
  boundary** (logit margin d_out of eq. 4, feature margin of eq. 2, a learned pseudo-margin, ...);
* ``input_margin`` is the estimated input margin d_in (eq. 1), usually the ``input_margin_upper``
  column of a results table. ``inf`` means the attack found no flipping perturbation: as far as we
  know the sample is robust at every finite eps, so it counts as robust (a negative) at every eps and
  ranks above every finite margin. It is never treated as 0. ``NaN`` means "not computed" and is
  refused: filter those rows first (:func:`finite_rows` does it and says how many it dropped);
* the positive class of the detection task is *non-robust*: ``d_in <= eps`` (section 2.3). Since a
  small score flags a non-robust sample, sklearn receives ``-score`` as the decision function.

Ranking and area metrics come from scipy (``kendalltau``, ``spearmanr``, ``bootstrap``) and
scikit-learn (``roc_auc_score``, ``average_precision_score``, ``roc_curve``,
``precision_recall_curve``, ``auc``). What they lack is written here: FPR at a TPR level with linear
interpolation between ROC points, degenerate-case messages, and the eps sweep.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "DegenerateMetricError",
    "Correlation",
    "Consistency",
    "DetectionMetrics",
    "BinnedConsistency",
    "as_score_array",
    "as_margin_array",
    "finite_rows",
    "margin_consistency",
    "non_robust_labels",
    "fpr_at_tpr",
    "detection_metrics",
    "eps_sweep",
    "binned_consistency",
    "PAPER_LINF_EPS",
]

# The eps grid of the paper's appendix B.2 for CIFAR in linf: {2, 4, 8, 12, 16, 32} / 255.
PAPER_LINF_EPS: tuple[float, ...] = tuple(k / 255 for k in (2, 4, 8, 12, 16, 32))


class DegenerateMetricError(ValueError):
    """A metric is undefined on these data (no positives, only positives, a constant array...)."""


def _to_numpy(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor on any device
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == object:
        raise TypeError(f"{name} must be numeric, got an object array")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per sample), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return arr.astype(np.float64)


def as_score_array(score: Any, name: str = "score") -> np.ndarray:
    """A score as a float64 vector; NaN or infinite values are refused (a score is read from one pass)."""
    arr = _to_numpy(score, name)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} NaN or infinite value(s) (first at index "
                         f"{int(np.flatnonzero(bad)[0])}); a margin score must be finite for every sample")
    return arr


def as_margin_array(input_margin: Any, name: str = "input_margin") -> np.ndarray:
    """Estimated input margins as float64: ``inf`` (attack failed) is kept, NaN and negatives refused."""
    arr = _to_numpy(input_margin, name)
    nan = np.isnan(arr)
    if nan.any():
        raise ValueError(f"{name} has {int(nan.sum())} NaN value(s) (input margin not computed); drop those "
                         "samples first, e.g. with marginkit.consistency.finite_rows")
    if (arr < 0).any() or np.isneginf(arr).any():
        raise ValueError(f"{name} has negative values; an input margin is a norm (>= 0)")
    return arr


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError("arrays must have one value per sample, got lengths " +
                         ", ".join(f"{k}={n}" for k, n in lengths.items()))
    return next(iter(lengths.values()))


def finite_rows(input_margin: Any) -> tuple[np.ndarray, int]:
    """Mask of samples whose input margin was computed (not NaN) and how many were dropped."""
    arr = _to_numpy(input_margin, "input_margin")
    keep = ~np.isnan(arr)
    return keep, int((~keep).sum())


# ----------------------------------------------------------------------------------------------
# Margin consistency: rank correlation (section 2.2)
# ----------------------------------------------------------------------------------------------


@dataclass
class Correlation:
    """A rank correlation with its bootstrap confidence interval."""

    name: str  # "kendall_tau" or "spearman_rho"
    value: float
    pvalue: float
    ci_low: float | None
    ci_high: float | None
    confidence_level: float
    n_resamples: int


@dataclass
class Consistency:
    """Margin consistency of a score against estimated input margins (Definition 2, measured by tau)."""

    kendall: Correlation
    spearman: Correlation
    n: int
    n_infinite_margin: int  # samples whose attack failed (d_in = inf): ranked above every finite margin
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def tau(self) -> float:
        return self.kendall.value

    @property
    def rho(self) -> float:
        return self.spearman.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spearman_vectorized(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along ``axis`` (Pearson correlation of average ranks), for vectorised bootstrap."""
    from scipy.stats import rankdata

    rx = rankdata(x, axis=axis)
    ry = rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _kendall_stat(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def margin_consistency(
    score: Any,
    input_margin: Any,
    *,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    ci_method: str = "percentile",
    seed: int = 0,
) -> Consistency:
    """Kendall tau (tau-b, ties handled) and Spearman rho between ``score`` and ``input_margin``
    (seed paper section 2.2: tau = 1 is perfect margin consistency), with paired bootstrap CIs
    from :func:`scipy.stats.bootstrap` (``n_resamples=0`` skips them).

    ``inf`` input margins (failed attacks) take part as the largest values (tied among themselves).
    A constant score or constant input margins leave the correlation undefined:
    :class:`DegenerateMetricError` says which.
    """
    from scipy.stats import bootstrap, kendalltau, spearmanr

    s = as_score_array(score)
    d = as_margin_array(input_margin)
    n = _check_same_length(score=s, input_margin=d)
    if n < 3:
        raise DegenerateMetricError(f"rank correlation needs at least 3 samples, got {n}")
    for name, arr in (("score", s), ("input_margin", d)):
        if np.all(arr == arr[0]):
            raise DegenerateMetricError(f"{name} is constant over all {n} samples: Kendall tau and Spearman rho are undefined")
    n_inf = int(np.isinf(d).sum())
    # Ranks are all that matter; replacing inf by a finite value above the maximum keeps every rank and
    # tie and lets scipy work in ordinary floats.
    d_rank = d.copy()
    if n_inf:
        finite_max = d[np.isfinite(d)].max() if n_inf < n else 0.0
        d_rank[np.isinf(d)] = finite_max + 1.0
    kt = kendalltau(s, d_rank)
    sr = spearmanr(s, d_rank)
    kci: tuple[float | None, float | None] = (None, None)
    sci: tuple[float | None, float | None] = (None, None)
    if n_resamples > 0:
        rng = np.random.default_rng(seed)
        kb = bootstrap((s, d_rank), _kendall_stat, paired=True, vectorized=False, n_resamples=n_resamples,
                       confidence_level=confidence_level, method=ci_method, rng=rng)
        sb = bootstrap((s, d_rank), _spearman_vectorized, paired=True, vectorized=True, n_resamples=n_resamples,
                       confidence_level=confidence_level, method=ci_method, rng=np.random.default_rng(seed + 1))
        kci = _ci(kb)
        sci = _ci(sb)
    settings = {"n_resamples": n_resamples, "confidence_level": confidence_level, "ci_method": ci_method, "seed": seed}
    return Consistency(
        kendall=Correlation("kendall_tau", float(kt.statistic), float(kt.pvalue), kci[0], kci[1], confidence_level, n_resamples),
        spearman=Correlation("spearman_rho", float(sr.statistic), float(sr.pvalue), sci[0], sci[1], confidence_level, n_resamples),
        n=n,
        n_infinite_margin=n_inf,
        settings=settings,
    )


def _ci(res: Any) -> tuple[float | None, float | None]:
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    # A CI is NaN when resamples are degenerate (e.g. a score constant on most points): say "none".
    return (None if math.isnan(lo) else lo, None if math.isnan(hi) else hi)


# ----------------------------------------------------------------------------------------------
# Non-robust detection (section 2.3, Table 1, appendix B.2)
# ----------------------------------------------------------------------------------------------


def non_robust_labels(input_margin: Any, eps: float) -> np.ndarray:
    """Ground truth of the detection task: 1 where ``d_in <= eps`` (non-robust), 0 otherwise.

    ``inf`` margins (no flip found) are robust at every finite eps.
    """
    if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(float(eps)) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return (as_margin_array(input_margin) <= float(eps)).astype(np.int64)


def _check_binary(labels: np.ndarray, what: str = "detection") -> None:
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise DegenerateMetricError(f"{what} is undefined: no positive (non-robust) sample among {len(labels)}")
    if n_pos == len(labels):
        raise DegenerateMetricError(f"{what} is undefined: all {len(labels)} samples are positive (non-robust), no negative")


def fpr_at_tpr(labels: Any, decision: Any, level: float = 0.95, interpolate: bool = True) -> float:
    """False positive rate when the true positive rate reaches ``level`` (FPR@95 for 0.95).

    ``decision`` is larger for more likely positives (as for sklearn). The ROC points come from
    :func:`sklearn.metrics.roc_curve` with every threshold kept. With ``interpolate`` the FPR is read
    by linear interpolation between the last ROC point below ``level`` and the first at or above it
    (the randomised classifier between two thresholds reaches any intermediate point exactly). Without
    it, it is the FPR of the first threshold whose TPR >= ``level`` (an achievable deterministic
    threshold, what the paper's code reports).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(labels).astype(np.int64)
    s = as_score_array(decision, "decision")
    _check_same_length(labels=y, decision=s)
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must lie in (0, 1], got {level}")
    _check_binary(y, "FPR at fixed TPR")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    k = int(np.argmax(tpr >= level - 1e-12))  # tpr ends at 1, so this index exists
    if not interpolate or k == 0 or tpr[k] <= level + 1e-12:
        return float(fpr[k])
    t0, t1, f0, f1 = tpr[k - 1], tpr[k], fpr[k - 1], fpr[k]
    return float(f0 + (level - t0) / (t1 - t0) * (f1 - f0))


@dataclass
class DetectionMetrics:
    """Detection of non-robust samples (d_in <= eps) by a score, one eps (Table 1 columns).

    ``aupr`` is average precision (sklearn ``average_precision_score``: step-wise, no interpolation);
    ``aupr_trapezoid`` is the trapezoid area under the precision-recall curve (``auc(recall,
    precision)``), the definition used by the paper's code. When the task is degenerate at this eps
    (no positives or no negatives) every metric is ``None`` and ``message`` says why.
    """

    eps: float
    n: int
    n_positive: int
    auroc: float | None
    aupr: float | None
    aupr_trapezoid: float | None
    fpr_at_95_tpr: float | None
    fpr_at_95_tpr_step: float | None
    message: str = ""
    curves: dict[str, list[float]] | None = None

    @property
    def defined(self) -> bool:
        return self.auroc is not None

    @property
    def positive_rate(self) -> float:
        return self.n_positive / self.n

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not curves:
            d.pop("curves")
        return d


def detection_metrics(score: Any, input_margin: Any, eps: float, *, keep_curves: bool = False) -> DetectionMetrics:
    """AUROC, AUPR (average precision and trapezoid), FPR@95 of ``score`` at detecting ``d_in <= eps``.

    Low scores flag non-robust samples. Theorem 1: if ``score`` is a strictly increasing function of
    d_in, AUROC = 1 at every eps with both classes present. A degenerate eps (no positive or no
    negative sample) returns a result with ``None`` metrics and a ``message`` instead of NaN.
    With ``keep_curves`` the ROC and PR curves are kept for plotting.
    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    s = as_score_array(score)
    y = non_robust_labels(input_margin, eps)
    n = _check_same_length(score=s, input_margin=y)
    n_pos = int(y.sum())
    try:
        _check_binary(y, f"detection at eps={eps:.6g}")
    except DegenerateMetricError as exc:
        return DetectionMetrics(float(eps), n, n_pos, None, None, None, None, None, message=str(exc))
    decision = -s
    precision, recall, _ = precision_recall_curve(y, decision)
    curves = None
    if keep_curves:
        fpr, tpr, _ = roc_curve(y, decision)
        curves = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "precision": precision.tolist(), "recall": recall.tolist()}
    return DetectionMetrics(
        eps=float(eps),
        n=n,
        n_positive=n_pos,
        auroc=float(roc_auc_score(y, decision)),
        aupr=float(average_precision_score(y, decision)),
        aupr_trapezoid=float(auc(recall, precision)),
        fpr_at_95_tpr=fpr_at_tpr(y, decision, 0.95, interpolate=True),
        fpr_at_95_tpr_step=fpr_at_tpr(y, decision, 0.95, interpolate=False),
        curves=curves,
    )


def eps_sweep(score: Any, input_margin: Any, eps_values: Sequence[float]) -> list[DetectionMetrics]:
    """:func:`detection_metrics` over several eps (appendix B.2, Fig. 9); degenerate eps keep their message."""
    if len(eps_values) == 0:
        raise ValueError("eps_values is empty")
    s = as_score_array(score)
    d = as_margin_array(input_margin)
    _check_same_length(score=s, input_margin=d)
    return [detection_metrics(s, d, float(e)) for e in eps_values]


# ----------------------------------------------------------------------------------------------
# Binned view of Fig. 2
# ----------------------------------------------------------------------------------------------


@dataclass
class BinnedConsistency:
    """Quantile bins of d_in (x) with the mean score and its standard error in each bin (Fig. 2)."""

    edges: list[float]
    centers: list[float]  # median d_in in each bin
    mean_score: list[float]
    stderr: list[float]
    count: list[int]
    n_infinite_margin: int  # not binned: samples whose attack found no flip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binned_consistency(score: Any, input_margin: Any, n_bins: int = 10) -> BinnedConsistency:
    """Bin finite d_in into ``n_bins`` quantile bins and summarise the score in each (Fig. 2).

    Tied d_in values can merge bins (pandas ``qcut`` with duplicate edges dropped); infinite margins
    are left out of the bins and counted. The standard error of a single-sample bin is 0.
    """
    import pandas as pd

    s = as_score_array(score)
    d = as_margin_array(input_margin)
    _check_same_length(score=s, input_margin=d)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    fin = np.isfinite(d)
    if fin.sum() < 1:
        raise DegenerateMetricError("no finite input margin to bin (every attack failed)")
    if np.unique(d[fin]).size == 1:  # qcut cannot cut a constant array: one bin holds everything
        codes, edges = np.zeros(int(fin.sum()), dtype=np.int64), np.array([d[fin][0], d[fin][0]])
    else:
        codes, edges = pd.qcut(d[fin], q=min(n_bins, int(fin.sum())), retbins=True, labels=False, duplicates="drop")
    frame = pd.DataFrame({"bin": codes, "d": d[fin], "s": s[fin]})
    g = frame.groupby("bin")
    stats = g.agg(center=("d", "median"), mean=("s", "mean"), std=("s", "std"), count=("s", "size"))
    stderr = (stats["std"].fillna(0.0) / np.sqrt(stats["count"])).tolist()
    return BinnedConsistency(
        edges=[float(e) for e in edges],
        centers=stats["center"].astype(float).tolist(),
        mean_score=stats["mean"].astype(float).tolist(),
        stderr=[float(v) for v in stderr],
        count=stats["count"].astype(int).tolist(),
        n_infinite_margin=int((~fin).sum()),
    )
