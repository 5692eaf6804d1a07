"""The whole margin-consistency study of one model (seed paper Table 1, section 3.3, appendix B.5, Fig. 6).

:func:`model_consistency` takes a model, the inputs of a per-sample results table and the table itself,
and runs every step that needs the model besides the table: the learned pseudo-margin (fitted on the
input margins of training samples, section 3.3), head equidistance (appendix B.5) and local isometry
(Fig. 6), then :func:`.evaluate.evaluate_consistency` with the pseudo-margin as an extra score. The
command ``marginkit consistency`` is this function plus file loading and writing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .diagnostics import Isometry, head_equidistance, local_isometry
from .evaluate import ConsistencyReport, compare_scores, evaluate_consistency
from .pseudo_margin import PseudoMargin, PseudoMarginConfig

__all__ = ["ModelConsistency", "model_consistency"]


@dataclass
class ModelConsistency:
    """Result of :func:`model_consistency`: the report (``report.extras`` holds the pseudo-margin
    comparison, equidistance and isometry summaries), the isometry data for plots, the fitted
    pseudo-margin (None when not asked for)."""

    report: ConsistencyReport
    isometry: Isometry | None = None
    pseudo_margin: PseudoMargin | None = None


def model_consistency(
    model: nn.Module,
    inputs: torch.Tensor | None,
    table: pd.DataFrame,
    eps: float,
    *,
    norm: str | None = None,
    train: tuple[torch.Tensor, Any] | None = None,
    pseudo_config: PseudoMarginConfig | None = None,
    isometry: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    attack_options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
    **evaluate_options: Any,
) -> ModelConsistency:
    """Margin consistency of ``model`` on the per-sample ``table`` (rows aligned with ``inputs``).

    ``train`` = (training inputs, their input margins; NaN rows are left out) fits a
    pseudo-margin (``pseudo_config``) and adds it as a score next to the logit and feature margins,
    with a side-by-side comparison in ``report.extras["pseudo_margin"]``. ``isometry`` > 0 attacks the
    first that many rows of ``inputs`` again (:func:`marginkit.attacks.input_margin` with
    ``attack_options``, ``bounds`` and ``seed``) to keep their adversarial examples and measures local
    isometry. Equidistance of the head is reported when the model has a linear head. Other keyword
    arguments go to :func:`.evaluate.evaluate_consistency` (``eps_grid``, ``subset_sizes``, ``repeats``,
    ``n_resamples``, ...).
    """
    if inputs is not None and inputs.shape[0] != len(table):
        raise ValueError(f"inputs has {inputs.shape[0]} rows but the table {len(table)}; they must be aligned")
    if (train is not None or isometry > 0) and inputs is None:
        raise ValueError("the pseudo-margin and the isometry check need the table's inputs")
    x_eval = inputs if inputs is not None else torch.empty(0)  # only read when one of them is asked for
    tnorm = norm or (str(table["norm"].iloc[0]) if len(table) and "norm" in table else "l2")
    extra_scores: dict[str, np.ndarray] = {}
    extras: dict[str, Any] = {}
    pm = None
    if train is not None:
        x_train, m_train = train
        m_train = np.asarray(m_train, dtype=np.float64)
        ok = ~np.isnan(m_train)  # not computed; inf (no flip found) is a target the pseudo-margin handles
        if not ok.any():
            raise ValueError("no training sample has an input margin to fit the pseudo-margin on")
        cfg = pseudo_config or PseudoMarginConfig(seed=seed)
        pm = PseudoMargin.fit_model(model, x_train[torch.as_tensor(ok)], m_train[ok], cfg, progress=progress)
        pseudo = pm.score(model, x_eval).double().cpu().numpy()
        extra_scores["pseudo-margin"] = pseudo
        keep = table["input_margin_upper"].notna().to_numpy()
        comp = compare_scores({"logit margin": table["logit_margin"].to_numpy()[keep], "pseudo-margin": pseudo[keep]},
                              table["input_margin_upper"].to_numpy()[keep], eps)
        extras["pseudo_margin"] = {"n_train_total": int(ok.sum()), "source": cfg.source, "hidden": list(cfg.hidden),
                                   "transform": cfg.transform, "best_val_mse": pm.info.get("best_val_mse"),
                                   "epochs_run": pm.info.get("epochs_run"), "comparison": comp}
    report = evaluate_consistency(table, eps, norm=tnorm, extra_scores=extra_scores, seed=seed, **evaluate_options)
    report.extras.update(extras)
    try:
        eq = head_equidistance(model, tnorm)
        report.extras["equidistance"] = {"pairs": int(eq.distances.numel()), "median": eq.median, "iqr": eq.iqr,
                                         "relative_iqr": eq.relative_iqr}
    except TypeError as exc:  # no linear head to read
        report.extras["equidistance"] = {"message": str(exc)}
    iso = None
    if isometry > 0:
        from ..attacks import RuntimeOptions, input_margin

        xi = x_eval[:isometry]
        opts = {"runtime": RuntimeOptions(progress=progress), **(attack_options or {})}
        res = input_margin(model, xi, None, tnorm, bounds=bounds, return_adv=True, **opts)
        if res.adversarial is None:
            raise RuntimeError("the attack engine returned no adversarial examples although return_adv=True")
        valid = torch.isfinite(res.upper) & (res.upper > 0)
        iso = local_isometry(model, xi, res.adversarial, tnorm, valid=valid)
        report.extras["isometry"] = iso.to_dict()
    return ModelConsistency(report=report, isometry=iso, pseudo_margin=pm)
