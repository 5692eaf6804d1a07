"""Algorithm 1 against the subset-only estimate, paired over the same subsets (used by the reproduction suite)."""

import numpy as np
import pytest
from scipy import stats

from marginkit.consistency.algorithm1 import compare_with_subset, paired_difference


def test_paired_difference_matches_scipy_and_keeps_its_own_keys():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, 40)
    r = paired_difference(d, seed=1)
    h = stats.t.ppf(0.975, 39) * d.std(ddof=1) / np.sqrt(40)
    assert r["mean"] == pytest.approx(d.mean()) and r["t_lo"] == pytest.approx(d.mean() - h)
    assert r["boot_lo"] < r["mean"] < r["boot_hi"] and r["pairs"] == 40 and "n" not in r
    assert paired_difference(np.zeros(5))["t_lo"] == 0.0 and paired_difference(np.zeros(5))["p_wilcoxon"] == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        paired_difference([])


def test_compare_with_subset_reports_the_subset_size_and_pairs():
    rng = np.random.default_rng(0)
    d_in = rng.exponential(1.0, 600)
    score = d_in * 2 + rng.normal(0, 0.05, 600)  # a strongly consistent score
    correct = rng.random(600) > 0.1
    r = compare_with_subset(score, d_in, correct, 0.5, 50, repeats=30, seed=0)
    assert r["n"] == 50 and r["N"] == 600 and r["pairs"] == 30 and len(r["a1_abs_errors"]) == 30
    assert np.all(np.asarray(r["a1_abs_errors"]) >= 0)  # absolute errors, in points of robust accuracy
    assert r["t_lo"] <= r["mean"] <= r["t_hi"]
    assert 0.0 <= r["a1_closer"] <= 1.0 and r["full"] == pytest.approx(100 * np.mean(correct & (d_in > 0.5)))
