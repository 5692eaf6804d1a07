import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, mannwhitneyu, spearmanr
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from marginkit.consistency import (
    DegenerateMetricError,
    binned_consistency,
    detection_metrics,
    eps_sweep,
    fpr_at_tpr,
    margin_consistency,
    non_robust_labels,
    robust_accuracy,
)


def _data(seed, n=300, noise=0.4, ties=False):
    rng = np.random.default_rng(seed)
    d = rng.exponential(1.0, n)
    s = d + rng.normal(0, noise, n)
    if ties:  # heavy ties in both arrays
        s = np.round(s, 0)
        d = np.round(d, 1)
    return s, d


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_agrees_with_scipy_and_sklearn(seed, ties):
    s, d = _data(seed, ties=ties)
    c = margin_consistency(s, d, n_resamples=0)
    assert c.tau == pytest.approx(kendalltau(s, d).statistic, abs=1e-12)
    assert c.rho == pytest.approx(spearmanr(s, d).statistic, abs=1e-12)
    eps = float(np.median(d))
    y = (d <= eps).astype(int)
    m = detection_metrics(s, d, eps)
    assert m.n_positive == y.sum()
    assert m.auroc == pytest.approx(roc_auc_score(y, -s))
    assert m.aupr == pytest.approx(average_precision_score(y, -s))
    p, r, _ = precision_recall_curve(y, -s)
    assert m.aupr_trapezoid == pytest.approx(auc(r, p))
    # AUROC is the Mann-Whitney statistic (ties count one half): an independent check incl. ties.
    u = mannwhitneyu(-s[y == 1], -s[y == 0]).statistic
    assert m.auroc == pytest.approx(u / (y.sum() * (1 - y).sum()))


def _brute_fpr_at_tpr(y, s, level):
    """FPR of the best deterministic rule 'score <= t' whose TPR >= level, by enumerating thresholds."""
    best = 1.0
    for t in np.unique(s):
        flag = s <= t
        tpr = flag[y == 1].mean()
        if tpr >= level - 1e-12:
            best = min(best, flag[y == 0].mean())
    return best


@pytest.mark.parametrize("seed", range(4))
def test_fpr_at_tpr_step_matches_enumeration(seed):
    s, d = _data(seed, n=200, ties=seed % 2 == 1)
    y = non_robust_labels(d, float(np.quantile(d, 0.4)))
    assert fpr_at_tpr(y, -s, 0.95, interpolate=False) == pytest.approx(_brute_fpr_at_tpr(y, s, 0.95))
    interp = fpr_at_tpr(y, -s, 0.95)
    assert interp <= fpr_at_tpr(y, -s, 0.95, interpolate=False) + 1e-12
    assert 0.0 <= interp <= 1.0


def test_fpr_interpolation_on_a_hand_example():
    # 4 positives with decisions 4,3,2,1 (TPR steps of 0.25), negatives at 2.5 and 0.5.
    y = np.array([1, 1, 1, 1, 0, 0])
    dec = np.array([4.0, 3.0, 2.0, 1.0, 2.5, 0.5])
    # TPR 0.75 at FPR 0.5 (threshold 2), TPR 1 at FPR 0.5 (threshold 1): level 0.9 -> FPR 0.5.
    assert fpr_at_tpr(y, dec, 0.9) == pytest.approx(0.5)
    # ROC points (TPR, FPR): (.25, 0) (.5, 0) (.5, .5) (.75, .5) (1, .5) (1, 1): level 0.5 is reached
    # at FPR 0; level 0.625 lies between (.5, .5) and (.75, .5) -> FPR 0.5.
    assert fpr_at_tpr(y, dec, 0.5) == pytest.approx(0.0)
    assert fpr_at_tpr(y, dec, 0.625) == pytest.approx(0.5)
    y2 = np.array([1, 1, 0, 1, 1, 0])  # decisions sorted desc: P P N P P N
    dec2 = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    # ROC points (TPR, FPR): (.25, 0) (.5, 0) (.5, .5) (.75, .5) (1, .5) (1, 1): the first point with
    # TPR >= 0.6 is (.75, .5), the one before (.5, .5), so the interpolated FPR is 0.5.
    assert fpr_at_tpr(y2, dec2, 0.6) == pytest.approx(0.5)
    y3 = np.array([1, 0, 1])  # P N P: ROC (0.5,0) (0.5,1) (1,1)
    assert fpr_at_tpr(y3, np.array([3.0, 2.0, 1.0]), 0.75) == pytest.approx(1.0)
    y4 = np.array([1, 1])
    with pytest.raises(DegenerateMetricError, match="all 2 samples are positive"):
        fpr_at_tpr(y4, np.array([1.0, 2.0]))


@pytest.mark.parametrize("transform", [lambda d: d, np.log, lambda d: 3 * np.sqrt(d) - 7, lambda d: d**3])
def test_theorem1_monotone_score_detects_perfectly_at_every_eps(transform):
    rng = np.random.default_rng(5)
    d = rng.uniform(0.01, 2.0, 150)
    s = transform(d)
    grid = np.quantile(d, np.linspace(0.02, 0.98, 15))
    for m in eps_sweep(s, d, grid):
        assert m.defined
        assert m.auroc == 1.0 and m.aupr == pytest.approx(1.0) and m.aupr_trapezoid == pytest.approx(1.0)
        assert m.fpr_at_95_tpr == 0.0 and m.fpr_at_95_tpr_step == 0.0
    assert margin_consistency(s, d, n_resamples=0).tau == pytest.approx(1.0)


def test_theorem1_one_discordant_pair_breaks_perfect_detection():
    d = np.linspace(0.1, 1.0, 10)
    s = d.copy()
    s[[3, 4]] = s[[4, 3]]  # d_out(x4) < d_out(x3) while d_in(x4) > d_in(x3)
    eps = (d[3] + d[4]) / 2  # x3 non-robust, x4 robust
    m = detection_metrics(s, d, eps)
    assert m.auroc < 1.0
    assert margin_consistency(s, d, n_resamples=0).tau < 1.0
    # ... but every eps that does not separate the pair still gives AUROC = 1 (necessity is pairwise).
    for e in (d[1], d[6]):
        assert detection_metrics(s, d, e).auroc == 1.0


def test_degenerate_cases_give_messages_not_nan():
    s, d = _data(0, n=50)
    none = detection_metrics(s, d, 0.0 if d.min() > 0 else -0.0)
    assert not none.defined and "no positive" in none.message and none.auroc is None
    allp = detection_metrics(s, d, float(d.max()))
    assert not allp.defined and "all 50 samples are positive" in allp.message
    json.dumps(allp.to_dict(), allow_nan=False)
    with pytest.raises(DegenerateMetricError, match="score is constant"):
        margin_consistency(np.ones(10), np.arange(10.0))
    with pytest.raises(DegenerateMetricError, match="input_margin is constant"):
        margin_consistency(np.arange(10.0), np.ones(10))
    with pytest.raises(DegenerateMetricError, match="at least 3"):
        margin_consistency([1.0, 2.0], [1.0, 2.0])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([1.0, 2.0, 3.0], [0.1, float("nan"), 0.3], 0.2)
    with pytest.raises(ValueError, match="score has 1 NaN"):
        margin_consistency([1.0, float("nan"), 3.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="lengths"):
        margin_consistency([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="negative"):
        detection_metrics([1.0, 2.0], [-0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match="eps must be"):
        detection_metrics([1.0, 2.0], [0.1, 0.2], float("nan"))
    with pytest.raises(ValueError, match="one-dimensional"):
        detection_metrics(np.ones((2, 2)), [0.1, 0.2], 0.1)


def test_failed_attacks_are_robust_and_rank_on_top():
    s, d = _data(3, n=100)
    d_inf = d.copy()
    top = np.argsort(d)[-10:]
    d_inf[top] = np.inf  # the 10 largest margins become "no flip found"
    c_inf = margin_consistency(s, d_inf, n_resamples=0)
    d_big = d.copy()
    d_big[top] = 1e9  # same ranks with a finite stand-in (ties among them)
    assert c_inf.tau == pytest.approx(kendalltau(s, d_big).statistic)
    assert c_inf.n_infinite_margin == 10
    m = detection_metrics(s, d_inf, 1e6)
    assert m.n_positive == 90  # inf is never <= eps: robust, never margin 0
    correct = np.ones(100, bool)
    assert robust_accuracy(d_inf, 1e6, correct) == pytest.approx(0.10)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    s, d = _data(7, n=200)
    a = margin_consistency(s, d, n_resamples=300, seed=3)
    b = margin_consistency(s, d, n_resamples=300, seed=3)
    assert (a.kendall.ci_low, a.kendall.ci_high) == (b.kendall.ci_low, b.kendall.ci_high)
    assert a.kendall.ci_low < a.tau < a.kendall.ci_high
    assert a.spearman.ci_low < a.rho < a.spearman.ci_high
    small = margin_consistency(s[:40], d[:40], n_resamples=300, seed=3)
    assert (small.kendall.ci_high - small.kendall.ci_low) > (a.kendall.ci_high - a.kendall.ci_low)


def test_binned_consistency_means_and_errors():
    d = np.repeat([1.0, 2.0, 3.0, 4.0], 5).astype(float)
    s = d * 10 + np.tile([-2.0, -1.0, 0.0, 1.0, 2.0], 4)
    d = np.append(d, np.inf)
    s = np.append(s, 99.0)
    b = binned_consistency(s, d, n_bins=4)
    assert b.count == [5, 5, 5, 5] and b.n_infinite_margin == 1
    assert b.mean_score == pytest.approx([10.0, 20.0, 30.0, 40.0])
    assert b.stderr == pytest.approx([np.std([-2, -1, 0, 1, 2], ddof=1) / math.sqrt(5)] * 4)


def test_binned_consistency_of_constant_or_single_margins():
    b = binned_consistency(np.arange(5.0), np.ones(5), n_bins=4)
    assert b.count == [5] and b.mean_score == [2.0]
    b = binned_consistency(np.arange(3.0), np.array([1.0, np.inf, np.inf]), n_bins=4)
    assert b.count == [1] and b.n_infinite_margin == 2
    with pytest.raises(DegenerateMetricError, match="every attack failed"):
        binned_consistency(np.arange(3.0), np.full(3, np.inf))
