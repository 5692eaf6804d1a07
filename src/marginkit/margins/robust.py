"""Robust accuracy read from input margins: the one formula of the package.

A sample is robust at radius eps when it is classified correctly and its input margin exceeds eps:
robust accuracy(eps) = mean_i [correct_i and d_in(x_i) > eps] (seed paper, section 2; Table 1 of the
min-vs-average margin paper reads it off minimal-norm margins at every eps at once). With upper bounds
on d_in (attacks) the value is an upper bound on the true robust accuracy; with certified lower bounds
it is a lower bound. ``inf`` (no flipping point exists or none was found) counts as robust.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["robust_accuracy", "robust_accuracy_curve", "BracketRobustness", "bracket_robustness"]


def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _margins_and_correct(margins: Any, correct: Any | None) -> tuple[np.ndarray, np.ndarray]:
    d = _as_array(margins, "margins").astype(np.float64).reshape(-1)
    if np.isnan(d).any():
        raise ValueError(f"margins has {int(np.isnan(d).sum())} NaN value(s) (input margin not computed); "
                         "drop those samples first")
    if (d < 0).any():
        raise ValueError("margins has negative values; an input margin is a norm (>= 0)")
    if correct is None:
        c = np.ones(d.shape[0], dtype=bool)
    else:
        c = _as_array(correct, "correct").astype(bool).reshape(-1)
        if c.shape[0] != d.shape[0]:
            raise ValueError(f"correct has {c.shape[0]} entries for {d.shape[0]} margins")
    return d, c


def _check_eps(eps: Any) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}") from None
    if not np.isfinite(e) or e < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return e


def robust_accuracy(margins: Any, eps: float, correct: Any | None = None) -> float:
    """Fraction of samples with ``correct`` and ``margins > eps``.

    ``margins``: (N,) input margins (tensor or array; ``inf`` allowed, NaN and negatives refused).
    ``correct``: (N,) bool mask of correctly classified samples; None when every margin is already one of
    a correctly classified sample (or misclassified samples carry margin 0).
    """
    d, c = _margins_and_correct(margins, correct)
    if d.shape[0] == 0:
        raise ValueError("robust accuracy of an empty set of samples is undefined")
    return float(np.mean(c & (d > _check_eps(eps))))


def robust_accuracy_curve(margins: Any, eps: Sequence[float], correct: Any | None = None) -> list[float]:
    """:func:`robust_accuracy` at every radius in ``eps`` (one pass over the margins)."""
    d, c = _margins_and_correct(margins, correct)
    if d.shape[0] == 0:
        raise ValueError("robust accuracy of an empty set of samples is undefined")
    return [float(np.mean(c & (d > _check_eps(e)))) for e in eps]


@dataclass(frozen=True)
class BracketRobustness:
    """Robustness at each radius read from a bracket lower <= d_in <= upper.

    ``certified``: share of samples correct with lower > eps (a lower bound on robust accuracy);
    ``attack``: share correct with upper > eps (an upper bound); the true robust accuracy lies between.
    ``decided``: share of samples whose robust / non-robust label at eps is certain: misclassified, or
    lower > eps (robust for sure), or upper <= eps (a verified flip within eps).
    """

    eps: tuple[float, ...]
    certified: tuple[float, ...]
    attack: tuple[float, ...]
    decided: tuple[float, ...]
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bracket_robustness(lower: Any, upper: Any, eps: Sequence[float], correct: Any | None = None) -> BracketRobustness:
    """Certified and attack-based robust accuracy and the decided share at every radius in ``eps``.

    ``lower``: (N,) certified lower bounds (NaN where none was computed: nothing is certified there);
    ``upper``: (N,) verified upper bounds (``inf`` where no flip was found); both by the same formula
    as :func:`robust_accuracy`.
    """
    lo = _as_array(lower, "lower").astype(np.float64).reshape(-1)
    lo = np.where(np.isnan(lo), 0.0, lo)
    up, c = _margins_and_correct(upper, correct)
    if lo.shape != up.shape:
        raise ValueError(f"lower has {lo.shape[0]} entries for {up.shape[0]} upper bounds")
    if (lo > up * (1 + 1e-9) + 1e-12).any():
        raise ValueError(f"{int((lo > up).sum())} sample(s) have a lower bound above the upper bound; a bracket needs lower <= upper")
    if up.shape[0] == 0:
        raise ValueError("robust accuracy of an empty set of samples is undefined")
    es = [_check_eps(e) for e in eps]
    cert = [float(np.mean(c & (lo > e))) for e in es]
    att = [float(np.mean(c & (up > e))) for e in es]
    dec = [float(np.mean(~c | (lo > e) | (up <= e))) for e in es]
    return BracketRobustness(tuple(es), tuple(cert), tuple(att), tuple(dec), int(up.shape[0]))
