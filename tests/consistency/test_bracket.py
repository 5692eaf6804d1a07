"""Consistency against both ends of a certified bracket."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from marginkit.consistency import bracket_markdown, bracket_summary, evaluate_consistency


def _table(n: int = 60, seed: int = 0, lower: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    up = rng.uniform(0.1, 2.0, n)
    label = rng.integers(0, 3, n)
    pred = label.copy()
    pred[:5] = (label[:5] + 1) % 3
    up[:5] = 0.0
    df = pd.DataFrame({"index": np.arange(n), "label": label, "prediction": pred, "input_margin_upper": up,
                       "logit_margin": up + rng.normal(0, 0.3, n), "feature_margin": np.nan})
    if lower:
        lo = up * rng.uniform(0.3, 1.0, n)
        lo[40:] = np.nan  # only the first 40 rows were certified
        df["input_margin_lower"] = lo
    return df


def test_bracket_summary_reads_both_ends_on_the_certified_rows():
    df = _table()
    s = bracket_summary(df, [0.25, 0.5, 1.0])
    assert s is not None and s.n == 40 and s.n_table == 60
    sub = df.iloc[:40]
    lo, up = sub["input_margin_lower"].to_numpy(), sub["input_margin_upper"].to_numpy()
    correct = (sub["label"] == sub["prediction"]).to_numpy()
    for e, cert, att, dec in zip(s.robustness.eps, s.robustness.certified, s.robustness.attack, s.robustness.decided):
        assert cert == pytest.approx(np.mean(correct & (lo > e)))
        assert att == pytest.approx(np.mean(correct & (up > e)))
        assert cert <= att and dec == pytest.approx(np.mean(~correct | (lo > e) | (up <= e)))
    assert s.tau_lower == pytest.approx(kendalltau(sub["logit_margin"], lo).statistic)
    assert s.tau_upper == pytest.approx(kendalltau(sub["logit_margin"], up).statistic)
    assert 0.3 <= s.median_lower_over_upper <= 1.0
    text = "\n".join(bracket_markdown(s))
    assert "40 of 60" in text and "certified robust accuracy" in text


def test_no_lower_bounds_means_no_bracket():
    assert bracket_summary(_table(lower=False), [0.5]) is None
    df = _table()
    df["input_margin_lower"] = np.nan
    assert bracket_summary(df, [0.5]) is None


def test_a_lower_bound_above_the_upper_is_refused():
    df = _table()
    df.loc[10, "input_margin_lower"] = df.loc[10, "input_margin_upper"] + 1.0
    with pytest.raises(ValueError, match="lower bound above the upper"):
        bracket_summary(df, [0.5])


def test_consistency_report_has_the_bracket_section_only_with_lower_bounds():
    rep = evaluate_consistency(_table(), 0.5, norm="l2", n_resamples=0, subset_sizes=(20,), repeats=2)
    assert rep.extras["bracket"]["n"] == 40
    assert 0.5 in rep.extras["bracket"]["robustness"]["eps"]
    assert "## Certified bracket" in rep.to_markdown()
    rep = evaluate_consistency(_table(lower=False), 0.5, norm="l2", n_resamples=0, subset_sizes=(20,), repeats=2)
    assert "bracket" not in rep.extras and "Certified bracket" not in rep.to_markdown()
