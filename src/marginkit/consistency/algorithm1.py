"""Sample-efficient robust accuracy estimation (seed paper section 2.4, Algorithm 1).

Input margins (expensive attacks) are estimated on a random subset of n samples only; a threshold
lambda on the score (logit margin by default) is tuned on that subset, and the robust accuracy of the
whole set is read from the scores alone: A_r = |{x : d_out(x) > lambda and yhat(x) = y}| / N.

Line 6 of Algorithm 1 ("the threshold that gives the best approximation of robust accuracy on X_n")
is implemented as in the paper's text: for each TPR level alpha of a grid (default {0.80, 0.825, ...,
0.95, 0.99}) lambda_alpha is the smallest score threshold whose rule ``score <= lambda`` catches at
least a fraction alpha of the subset's non-robust samples; the alpha whose lambda best reproduces the
subset's robust accuracy (absolute error, first alpha on ties) is kept. Without labels the same
procedure reproduces the subset's *vulnerable fraction* |{d_in <= eps}| / n instead.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..margins.robust import robust_accuracy
from .scores import compute_score
from .metrics import DegenerateMetricError, as_margin_array, as_score_array, non_robust_labels

__all__ = [
    "DEFAULT_ALPHAS",
    "Algorithm1Result",
    "Algorithm1Evaluation",
    "threshold_at_tpr",
    "tune_threshold",
    "algorithm1",
    "algorithm1_repeats",
    "estimate_robust_accuracy",
    "estimate_vulnerability",
    "subset_estimates",
    "paired_difference",
    "compare_with_subset",
]

DEFAULT_ALPHAS: tuple[float, ...] = (0.80, 0.825, 0.85, 0.875, 0.90, 0.925, 0.95, 0.99)


def threshold_at_tpr(score: Any, non_robust: Any, alpha: float) -> float:
    """Smallest lambda such that ``score <= lambda`` flags at least ``alpha`` of the non-robust samples.

    It is the alpha-quantile (inverted-CDF definition, an observed score) of the positives' scores.
    """
    s = as_score_array(score)
    y = np.asarray(non_robust).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"non_robust must have shape {s.shape}, got {y.shape}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    if not y.any():
        raise DegenerateMetricError("no non-robust sample: a threshold at a TPR level is undefined")
    return float(np.quantile(s[y], alpha, method="inverted_cdf"))


@dataclass
class Tuning:
    """Outcome of line 6 of Algorithm 1 on one subset."""

    alpha: float | None
    threshold: float
    subset_value: float  # true robust accuracy (or vulnerable fraction) of the subset
    subset_estimate: float  # the same quantity predicted by the score with the chosen threshold
    table: list[dict[str, float]]  # per alpha: threshold, estimate, abs error
    message: str = ""


def _estimate(score: np.ndarray, threshold: float, correct: np.ndarray | None) -> float:
    robust = score > threshold
    return float(np.mean(robust & correct)) if correct is not None else float(np.mean(~robust))


def tune_threshold(score: Any, input_margin: Any, eps: float, correct: Any | None = None,
                   alphas: Sequence[float] = DEFAULT_ALPHAS) -> Tuning:
    """Line 6 of Algorithm 1 on a subset: choose lambda over the TPR grid ``alphas``.

    With ``correct`` (bool per sample) the reproduced quantity is robust accuracy; without it, the
    vulnerable fraction. A subset without any non-robust sample gets lambda = -inf (flag nothing), the
    only threshold consistent with it, and a message.
    """
    s = as_score_array(score)
    y = non_robust_labels(input_margin, eps).astype(bool)
    c = None if correct is None else np.asarray(correct).astype(bool)
    if c is not None and c.shape != s.shape:
        raise ValueError(f"correct must have shape {s.shape}, got {c.shape}")
    if len(alphas) == 0:
        raise ValueError("alphas is empty")
    true = float(np.mean(c & ~y)) if c is not None else float(np.mean(y))
    if not y.any():
        return Tuning(None, float("-inf"), true, _estimate(s, float("-inf"), c), [],
                      message=f"the subset has no non-robust sample at eps={eps:.6g}; lambda=-inf flags nothing")
    table = []
    for a in alphas:
        lam = threshold_at_tpr(s, y, float(a))
        est = _estimate(s, lam, c)
        table.append({"alpha": float(a), "threshold": lam, "estimate": est, "abs_error": abs(est - true)})
    best = min(range(len(table)), key=lambda i: table[i]["abs_error"])  # first on ties
    return Tuning(table[best]["alpha"], table[best]["threshold"], true, table[best]["estimate"], table)


@dataclass
class Algorithm1Result:
    """One run of Algorithm 1: threshold tuned on a subset, estimate over the whole set."""

    quantity: str  # "robust_accuracy" or "vulnerable_fraction"
    eps: float
    n_subset: int
    n_total: int
    alpha: float | None
    threshold: float
    subset_value: float
    subset_estimate: float
    estimate: float  # over the whole set, from scores alone
    subset_indices: list[int] = field(repr=False, default_factory=list)
    message: str = ""
    seconds_subset_margins: float | None = None

    def to_dict(self, indices: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not indices:
            d.pop("subset_indices")
        return d


def algorithm1(score: Any, subset_indices: Any, subset_input_margin: Any, eps: float, correct: Any | None = None,
               alphas: Sequence[float] = DEFAULT_ALPHAS) -> Algorithm1Result:
    """Algorithm 1 given the scores of all N samples and the input margins of a subset.

    ``score`` (N,) for the whole set (one forward pass), ``subset_indices`` (n,) into it,
    ``subset_input_margin`` (n,) the estimated d_in of those samples; ``correct`` (N,) bool for robust
    accuracy, or ``None`` to estimate the vulnerable fraction of an unlabelled set.
    """
    s = as_score_array(score)
    idx = np.asarray(subset_indices, dtype=np.int64)
    if idx.ndim != 1 or len(idx) == 0:
        raise ValueError("subset_indices must be a non-empty 1-D array of sample indices")
    if idx.min() < 0 or idx.max() >= len(s):
        raise ValueError(f"subset_indices must lie in [0, {len(s)})")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("subset_indices repeat a sample (Algorithm 1 samples without replacement)")
    d = as_margin_array(subset_input_margin, "subset_input_margin")
    if len(d) != len(idx):
        raise ValueError(f"subset_input_margin has {len(d)} values for {len(idx)} subset indices")
    c = None if correct is None else np.asarray(correct.detach().cpu() if hasattr(correct, "detach") else correct).astype(bool)
    if c is not None and c.shape != s.shape:
        raise ValueError(f"correct must have shape {s.shape}, got {c.shape}")
    tune = tune_threshold(s[idx], d, eps, None if c is None else c[idx], alphas)
    return Algorithm1Result(
        quantity="robust_accuracy" if c is not None else "vulnerable_fraction",
        eps=float(eps), n_subset=len(idx), n_total=len(s), alpha=tune.alpha, threshold=tune.threshold,
        subset_value=tune.subset_value, subset_estimate=tune.subset_estimate,
        estimate=_estimate(s, tune.threshold, c), subset_indices=idx.tolist(), message=tune.message,
    )


@dataclass
class Algorithm1Evaluation:
    """Algorithm 1 repeated over random subsets against the full-set value (paper Fig. 5, 10, 11)."""

    quantity: str
    eps: float
    n_subset: int
    n_total: int
    repeats: int
    full_value: float  # from the input margins of every sample
    estimates: list[float]
    abs_errors: list[float]
    mean_abs_error: float
    std_abs_error: float
    max_abs_error: float
    alphas_chosen: list[float | None]
    seed: int
    # Baseline: the subset's own value (what the n attacked samples say without any score) against the
    # full-set value. Algorithm 1 is only worth its score if it beats this sampling error.
    subset_values: list[float] = field(default_factory=list)
    subset_mean_abs_error: float = float("nan")
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def algorithm1_repeats(score: Any, input_margin: Any, eps: float, n: int, correct: Any | None = None, *,
                       repeats: int = 10, seed: int = 0, alphas: Sequence[float] = DEFAULT_ALPHAS) -> Algorithm1Evaluation:
    """Evaluate Algorithm 1 on a set whose input margins are all known: ``repeats`` subsets of size ``n``
    drawn without replacement (seeded), each estimate compared with the full-set value."""
    s = as_score_array(score)
    d = as_margin_array(input_margin)
    if len(d) != len(s):
        raise ValueError(f"input_margin has {len(d)} values for {len(s)} scores")
    N = len(s)
    if not 1 <= n <= N:
        raise ValueError(f"subset size n must lie in [1, {N}], got {n}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    c = None if correct is None else np.asarray(correct).astype(bool)
    full = robust_accuracy(d, eps, c) if c is not None else float(np.mean(non_robust_labels(d, eps)))
    rng = np.random.default_rng(seed)
    ests, alphas_chosen, msgs, subset_vals = [], [], [], []
    for _ in range(repeats):
        idx = rng.choice(N, size=n, replace=False)
        r = algorithm1(s, idx, d[idx], eps, c, alphas)
        ests.append(r.estimate)
        subset_vals.append(r.subset_value)
        alphas_chosen.append(r.alpha)
        if r.message:
            msgs.append(r.message)
    err = np.abs(np.asarray(ests) - full)
    return Algorithm1Evaluation(
        quantity="robust_accuracy" if c is not None else "vulnerable_fraction", eps=float(eps), n_subset=n,
        n_total=N, repeats=repeats, full_value=full, estimates=[float(e) for e in ests],
        abs_errors=err.tolist(), mean_abs_error=float(err.mean()), std_abs_error=float(err.std(ddof=1)) if repeats > 1 else 0.0,
        max_abs_error=float(err.max()), alphas_chosen=alphas_chosen, seed=seed, subset_values=subset_vals,
        subset_mean_abs_error=float(np.mean(np.abs(np.asarray(subset_vals) - full))), messages=sorted(set(msgs)),
    )


def _margin_values(res: Any) -> torch.Tensor:
    """Input margins from whatever the margin function returns (InputMarginResult, AffineMargin, tensor)."""
    for attr in ("upper", "margin"):
        if hasattr(res, attr):
            return getattr(res, attr)
    if isinstance(res, torch.Tensor):
        return res
    raise TypeError(f"the margin function returned {type(res).__name__}; expected a tensor or an object with .upper")


def _default_margin_fn() -> Callable[..., Any]:
    try:
        from ..attacks import input_margin
    except ImportError as exc:
        raise ImportError("marginkit.attacks.input_margin is not available; pass margin_fn=...") from exc
    return input_margin


def subset_estimates(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None, norm: str = "l2",
                     eps: float | None = None, *, n: int = 500, score: str = "logit", seed: int = 0,
                     alphas: Sequence[float] = DEFAULT_ALPHAS, margin_fn: Callable[..., Any] | None = None,
                     margin_kwargs: dict[str, Any] | None = None, batch_size: int = 1024,
                     pseudo_margin: Any = None) -> dict[str, Algorithm1Result]:
    """Algorithm 1 end to end with one attack run: scores of all ``inputs`` from one forward pass per
    batch, input margins of a seeded random subset of ``n`` only, then the vulnerable fraction (no
    labels needed) and, with ``labels``, the robust accuracy of the whole set.

    Returns ``{"vulnerable_fraction": ..., "robust_accuracy": ...}`` (the latter only with labels).
    The margin function is :func:`marginkit.attacks.input_margin` unless ``margin_fn(model, x, None,
    norm, **margin_kwargs)`` is given; margins are taken w.r.t. the model's own decision (eq. 1).
    """
    if eps is None:
        raise ValueError("give eps, the radius at which samples count as non-robust (in the units of norm)")
    N = inputs.shape[0]
    if not 1 <= n <= N:
        raise ValueError(f"subset size n must lie in [1, {N}], got {n}")
    sc, pred = compute_score(model, inputs, score, norm=norm, pseudo_margin=pseudo_margin, batch_size=batch_size)
    idx = np.random.default_rng(seed).choice(N, size=n, replace=False)
    fn = margin_fn or _default_margin_fn()
    t0 = time.perf_counter()
    res = fn(model, inputs[torch.as_tensor(idx)], None, norm, **(margin_kwargs or {}))
    d = _margin_values(res).detach().double().cpu().numpy()
    seconds = time.perf_counter() - t0
    out = {"vulnerable_fraction": algorithm1(sc, idx, d, eps, None, alphas)}
    if labels is not None:
        correct = (pred.cpu() == labels.cpu()).numpy()
        out["robust_accuracy"] = algorithm1(sc, idx, d, eps, correct, alphas)
    for r in out.values():
        r.seconds_subset_margins = seconds
    return out


def estimate_robust_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, norm: str = "l2",
                             eps: float | None = None, *, n: int = 500, score: str = "logit", seed: int = 0,
                             alphas: Sequence[float] = DEFAULT_ALPHAS, margin_fn: Callable[..., Any] | None = None,
                             margin_kwargs: dict[str, Any] | None = None, batch_size: int = 1024,
                             pseudo_margin: Any = None) -> Algorithm1Result:
    """Algorithm 1 end to end: one forward pass over all ``inputs``, input margins (by default
    :func:`marginkit.attacks.input_margin`, or ``margin_fn(model, x, None, norm, **margin_kwargs)``)
    on a random subset of ``n`` only, robust accuracy of the whole set from the ``score``
    ("logit", "feature" or "pseudo" with ``pseudo_margin``)."""
    if labels is None:
        raise ValueError("robust accuracy needs labels; use estimate_vulnerability for an unlabelled set")
    return subset_estimates(model, inputs, labels, norm, eps, n=n, score=score, seed=seed, alphas=alphas,
                            margin_fn=margin_fn, margin_kwargs=margin_kwargs, batch_size=batch_size,
                            pseudo_margin=pseudo_margin)["robust_accuracy"]


def estimate_vulnerability(model: nn.Module, inputs: torch.Tensor, norm: str = "l2", eps: float | None = None, *,
                           n: int = 500, score: str = "logit", seed: int = 0, alphas: Sequence[float] = DEFAULT_ALPHAS,
                           margin_fn: Callable[..., Any] | None = None, margin_kwargs: dict[str, Any] | None = None,
                           batch_size: int = 1024, pseudo_margin: Any = None) -> Algorithm1Result:
    """Algorithm 1 without labels: the fraction of an unlabelled set that is non-robust at ``eps``
    (``d_in <= eps``), estimated from scores after attacking ``n`` samples only."""
    return subset_estimates(model, inputs, None, norm, eps, n=n, score=score, seed=seed, alphas=alphas,
                            margin_fn=margin_fn, margin_kwargs=margin_kwargs, batch_size=batch_size,
                            pseudo_margin=pseudo_margin)["vulnerable_fraction"]


def paired_difference(diff: Any, *, seed: int = 0, resamples: int = 5000) -> dict[str, float]:
    """Mean of paired differences with a t and a percentile-bootstrap 95% CI and the Wilcoxon p-value.

    ``diff`` (R,): one difference per pair (e.g. per random subset). With fewer than 2 pairs the CIs are NaN.
    """
    from scipy import stats

    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"need a non-empty 1-D array of paired differences, got shape {d.shape}")
    mean = float(d.mean())
    if len(d) < 2:
        nan = float("nan")
        return {"mean": mean, "t_lo": nan, "t_hi": nan, "boot_lo": nan, "boot_hi": nan, "p_wilcoxon": nan, "pairs": 1}
    if np.all(d == d[0]):  # no spread: every CI is the point itself
        return {"mean": mean, "t_lo": mean, "t_hi": mean, "boot_lo": mean, "boot_hi": mean,
                "p_wilcoxon": 1.0 if mean == 0 else 0.0, "pairs": len(d)}
    h = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    boot = stats.bootstrap((d,), np.mean, n_resamples=resamples, method="percentile", random_state=seed).confidence_interval
    return {"mean": mean, "t_lo": mean - h, "t_hi": mean + h, "boot_lo": float(boot.low), "boot_hi": float(boot.high),
            "p_wilcoxon": float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0, "pairs": len(d)}


def compare_with_subset(score: Any, input_margin: Any, correct: Any, eps: float, n: int, *, repeats: int = 200,
                        seed: int = 0, alphas: Sequence[float] = DEFAULT_ALPHAS) -> dict[str, Any]:
    """Algorithm 1 against the subset-only estimate of the full-set robust accuracy, paired over subsets.

    On each of ``repeats`` random subsets of size ``n`` (the same subsets for both estimates) the
    difference |A1 - full| - |subset - full| is taken, in points of robust accuracy (negative: Algorithm 1
    is closer). Returns the mean absolute errors of both, the share of subsets where Algorithm 1 is closer,
    and :func:`paired_difference` of the differences (margin-consistency paper, sec. 2.4, Alg. 1, Fig. 5).
    """
    c = np.asarray(correct).astype(bool)
    d = as_margin_array(input_margin)
    full = robust_accuracy(d, eps, c)
    ev = algorithm1_repeats(score, d, eps, n, c, repeats=repeats, seed=seed, alphas=alphas)
    a1 = 100 * np.asarray(ev.abs_errors)
    sub = 100 * np.abs(np.asarray(ev.subset_values) - full)
    return {"eps": float(eps), "n": int(n), "N": int(len(d)), "full": 100 * full, "a1_mae": float(a1.mean()),
            "subset_mae": float(sub.mean()), "a1_closer": float(np.mean(a1 < sub)), "ties": float(np.mean(a1 == sub)),
            "a1_abs_errors": a1.tolist(), **paired_difference(a1 - sub, seed=seed)}
