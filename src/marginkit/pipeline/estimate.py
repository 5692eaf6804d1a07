"""Input margins of a batch by the estimator named in :mod:`marginkit.margins.estimators`.

The one dispatch of the package from an estimator name to the code that computes it:

* ``exact`` on an affine model: the closed form (:func:`marginkit.margins.affine_input_margin`);
* ``exact`` on a network: ``marginkit.verify.exact_margin`` (MILP), started from the attack's upper bound;
* ``attack``: ``marginkit.attacks.input_margin`` (an upper bound);
* ``certify``: the attack's upper bound, then ``marginkit.verify.certify`` for a certified lower bound;
* ``none``: nothing.

Each returns the input-margin columns of the results table (:data:`marginkit.results.COLUMNS`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..margins.affine import affine_input_margin
from ..norms import Norm
from ..results.status import EXACT, NOT_COMPUTED, STATUSES

__all__ = ["EstimatorUnavailable", "input_margin_columns", "verify_function"]


class EstimatorUnavailable(RuntimeError):
    """The estimator asked for needs a package that is not installed or not built yet."""


def verify_function(name: str) -> Callable[..., Any]:
    """``marginkit.verify.<name>`` (``certify`` or ``exact_margin``), or :class:`EstimatorUnavailable`."""
    try:
        from .. import verify
    except ImportError as exc:
        raise EstimatorUnavailable(
            f"the verify package (marginkit.verify) is not available, so {name} cannot run; "
            "use estimator 'attack' for upper bounds (or 'exact' on affine models)") from exc
    fn = getattr(verify, name, None)
    if fn is None:
        raise EstimatorUnavailable(f"marginkit.verify has no {name}(); this build of the verify package is incomplete")
    return fn


def _attack(model: nn.Module, xb: torch.Tensor, norm: Norm, bounds: tuple[float, float],
            options: dict[str, Any]) -> Any:
    from ..attacks import input_margin

    return input_margin(model, xb, None, norm, bounds=bounds, **options)


def _per_sample(values: Any, n: int, dtype: Any) -> np.ndarray:
    """A scalar or a length-n sequence / tensor as a length-n array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=dtype)
    return np.full(n, arr.item(), dtype=dtype) if arr.ndim == 0 else arr.reshape(n)


def _verified_columns(res: Any, n: int, attack_seconds: np.ndarray) -> dict[str, np.ndarray]:
    """Columns from a verify result (per-sample ``lower``, ``upper``, ``status``, ``seconds``, ``method``)."""
    for attr in ("lower", "upper", "status", "seconds", "method"):
        if not hasattr(res, attr):
            raise TypeError(f"the verify result {type(res).__name__} has no {attr!r}")
    status = _per_sample(res.status, n, object)
    unknown = sorted({str(s) for s in status} - set(STATUSES))
    if unknown:
        raise ValueError(f"the verify package returned unknown status(es) {unknown}; expected {STATUSES}")
    return {"input_margin_lower": _per_sample(res.lower, n, np.float64),
            "input_margin_upper": _per_sample(res.upper, n, np.float64),
            "status": status,
            "seconds": attack_seconds + _per_sample(res.seconds, n, np.float64),
            "method": _per_sample(res.method, n, object)}


def input_margin_columns(model: nn.Module, xb: torch.Tensor, norm: Norm, estimator: str, *,
                         bounds: tuple[float, float], affine_map: tuple[torch.Tensor, torch.Tensor] | None = None,
                         attack_options: dict[str, Any] | None = None,
                         verify_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Input-margin columns for the batch ``xb`` (margins of the model's own decision).

    ``estimator`` is a resolved name (``exact`` | ``attack`` | ``certify`` | ``none``, never ``auto``);
    ``affine_map`` is the model's (A, c) when it is affine (then ``exact`` is the closed form).
    Without a ``seconds`` column in the result (``none`` and the closed form, which cost one batched
    pass) the caller times the batch.
    """
    n = xb.shape[0]
    if estimator == "none":
        return {"method": np.full(n, "none", dtype=object), "status": np.full(n, NOT_COMPUTED, dtype=object)}
    if estimator == "exact" and affine_map is not None:
        res = affine_input_margin(affine_map, xb, None, norm, bounds=bounds)
        m = res.margin.detach().cpu().numpy().astype(np.float64)
        return {"input_margin_upper": m, "input_margin_lower": m.copy(),
                "method": np.full(n, "affine-exact", dtype=object), "status": np.full(n, EXACT, dtype=object)}
    if estimator not in ("exact", "attack", "certify"):
        raise ValueError(f"input_margin_columns needs a resolved estimator, got {estimator!r}")
    verify_opts = dict(verify_options or {})
    # The verify functions are looked up before the attack runs, so a missing package fails fast.
    fn = None if estimator == "attack" else verify_function("certify" if estimator == "certify" else "exact_margin")
    att = _attack(model, xb, norm, bounds, dict(attack_options or {}))
    cols = att.columns()  # upper bound, status, per-sample method, seconds, class reached, passes
    if fn is None:
        return cols
    upper = att.upper.detach().double().cpu()
    if estimator == "certify":
        res = fn(model, xb, None, norm, upper=upper, bounds=bounds, **verify_opts)
    else:
        res = fn(model, xb, None, norm, upper=upper, bounds=bounds, **verify_opts)
    cols.update(_verified_columns(res, n, np.asarray(cols["seconds"], dtype=np.float64)))
    return cols
