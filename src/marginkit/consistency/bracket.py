"""Consistency read from a certified bracket lower <= d_in <= upper (issue: certified and exact margins).

When a table has certified lower bounds (``input_margin_lower``, from ``--input-margin certify`` /
``exact`` or the main job's bracket), every analysis that reads input margins can be done against both
ends: robust accuracy from the lower bounds (certified, a lower bound on the truth) next to the one from
the upper bounds (attack, an upper bound), the share of samples whose robust / non-robust label at eps is
certain, and Kendall tau of the logit margin against each end on the same samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..margins.robust import BracketRobustness, bracket_robustness

__all__ = ["BracketSummary", "bracket_markdown", "bracket_summary"]


@dataclass(frozen=True)
class BracketSummary:
    """The bracket of the rows that have a certified lower bound (``n`` of ``n_table``)."""

    n: int
    n_table: int
    median_lower_over_upper: float | None  # over rows with finite, positive upper bounds
    robustness: BracketRobustness
    tau_lower: float | None  # Kendall tau(score, lower) on these rows
    tau_upper: float | None  # Kendall tau(score, upper) on the same rows
    score: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tau(s: np.ndarray, v: np.ndarray) -> float | None:
    from scipy.stats import kendalltau

    keep = np.isfinite(s) & np.isfinite(v)
    if keep.sum() < 3 or np.ptp(v[keep]) == 0 or np.ptp(s[keep]) == 0:
        return None
    return float(kendalltau(s[keep], v[keep]).statistic)


def bracket_summary(table: pd.DataFrame, eps: Sequence[float], *, score: str = "logit_margin") -> BracketSummary | None:
    """Certified vs attack robust accuracy, decided share and tau against both ends at every eps, over
    the rows of ``table`` with a lower bound (not NaN); None when no row has one."""
    for col in ("label", "prediction", "input_margin_upper", score):
        if col not in table:
            raise ValueError(f"the table has no column {col!r}")
    if "input_margin_lower" not in table:
        return None
    lo_all = table["input_margin_lower"].to_numpy(dtype=float)
    up_all = table["input_margin_upper"].to_numpy(dtype=float)
    rows = ~np.isnan(lo_all) & ~np.isnan(up_all)
    if not rows.any():
        return None
    t = table[rows]
    lo, up = lo_all[rows], up_all[rows]
    correct = (t["label"] == t["prediction"]).to_numpy()
    pos = np.isfinite(up) & (up > 0)
    ratio = float(np.median(lo[pos] / up[pos])) if pos.any() else None
    s = t[score].to_numpy(dtype=float)
    return BracketSummary(int(rows.sum()), int(len(table)), ratio, bracket_robustness(lo, up, eps, correct),
                          _tau(s, lo), _tau(s, up), score)


def bracket_markdown(b: BracketSummary | dict[str, Any]) -> list[str]:
    """Markdown lines of a bracket summary (the object or its ``to_dict()``): a table over eps and the taus."""
    d = b.to_dict() if isinstance(b, BracketSummary) else b
    r = d["robustness"]
    fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
    pct = (lambda vs: " | ".join(f"{100 * v:.1f}%" for v in vs))
    return [f"{d['n']} of {d['n_table']} samples have a certified lower bound; median lower / upper "
            f"{fmt(d['median_lower_over_upper'])}.", "",
            "| eps | " + " | ".join(f"{e:.4g}" for e in r["eps"]) + " |", "|---|" + "---|" * len(r["eps"]),
            "| certified robust accuracy (lower bounds) | " + pct(r["certified"]) + " |",
            "| attack robust accuracy (upper bounds) | " + pct(r["attack"]) + " |",
            "| samples whose label at eps is decided | " + pct(r["decided"]) + " |", "",
            f"Kendall tau of the {d['score'].replace('_', ' ')} against the lower bound {fmt(d['tau_lower'])} "
            f"and against the upper bound {fmt(d['tau_upper'])} (same {d['n']} samples).", ""]
