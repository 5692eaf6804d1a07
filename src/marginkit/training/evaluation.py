"""Robust accuracy at a list of budgets, from PGD and from minimal-norm margins, in one table.

The min-vs-average margin paper reports l2 PGD robust accuracy at eps = 0.5, 1.0, 1.5, 2.0 (Table 1).
A fixed-budget attack answers one eps at a time; a minimal-norm margin d(x) answers every eps at once:
a correctly classified x is robust at eps iff d(x) > eps. Both columns are upper bounds on the true
robust accuracy (attacks can miss); the ``robust_accuracy`` column counts a sample as robust only when
neither attack broke it, the tightest of the three. For affine models the margin column is exact. The
formula reading robust accuracy off margins is :func:`marginkit.margins.robust.robust_accuracy_curve`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..attacks.pgd import pgd
from ..checks import check_inputs, check_labels, check_logits, check_model_mode, model_device
from ..margins.robust import robust_accuracy_curve
from ..norms import Norm, as_norm

__all__ = ["RobustAccuracy", "pgd_robust_accuracy", "accuracy_from_margins"]


@dataclass
class RobustAccuracy:
    """``table``: DataFrame with columns eps, pgd_robust_accuracy, margin_robust_accuracy,
    robust_accuracy (robust under both), plus the clean accuracy. ``margins``: the per-sample
    minimal-norm margins used (None when not computed); ``pgd_robust``: (N, len(eps)) bool."""

    table: Any
    clean_accuracy: float
    margins: torch.Tensor | None
    pgd_robust: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)


def accuracy_from_margins(margins: torch.Tensor, correct: torch.Tensor, eps: Sequence[float]) -> list[float]:
    """Fraction of samples that are correct and have margin > eps, for each eps (the robust-accuracy curve
    of :func:`marginkit.margins.robust.robust_accuracy_curve`)."""
    return robust_accuracy_curve(margins, eps, correct)


def pgd_robust_accuracy(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    norm: Norm | str = "l2",
    eps: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    *,
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = 1,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    margins: str | torch.Tensor | None = "auto",
    batch_size: int = 500,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
) -> RobustAccuracy:
    """PGD robust accuracy at every ``eps`` and the curve read from minimal-norm margins, side by side.

    PGD: ``steps`` iterations of step ``step_size`` (default 2.5 eps / steps), ``restarts`` random
    starts; a sample counts as broken if any restart misclassifies it. ``margins``: an estimator of
    :mod:`marginkit.margins.estimators` -- ``"auto"`` (exact for affine models, else the attack engine),
    ``"exact"`` (affine models) or ``"attack"`` -- a precomputed (N,) tensor of margins w.r.t.
    ``labels``, or None to skip the margin column.
    """
    norm = as_norm(norm)
    check_inputs(inputs)
    check_model_mode(model)
    eps = [float(e) for e in eps]
    if not eps or any(e < 0 for e in eps):
        raise ValueError(f"eps must be a non-empty list of non-negative budgets, got {eps}")
    device = model_device(model)
    n = inputs.shape[0]
    with torch.no_grad():
        logits = torch.cat([model(inputs[s : s + batch_size].to(device)) for s in range(0, n, batch_size)])
    check_logits(logits, n)
    labels = check_labels(labels, n, logits.shape[1]).to(device)
    correct = (logits.argmax(1) == labels).cpu()
    t0 = time.perf_counter()
    robust = torch.zeros(n, len(eps), dtype=torch.bool)
    for j, e in enumerate(eps):
        ok = correct.clone()
        for r in range(restarts):
            for s in range(0, n, batch_size):
                idx = torch.nonzero(ok[s : s + batch_size]).squeeze(1) + s
                if idx.numel() == 0:
                    continue
                xb, yb = inputs[idx].to(device), labels[idx.to(device)]
                adv = pgd(model, xb, yb, norm, e, steps=steps, step_size=step_size, random_start=restarts > 1 or r > 0,
                          seed=seed + r, bounds=bounds)
                with torch.no_grad():
                    ok[idx] = (model(adv).argmax(1) == yb).cpu()
        robust[:, j] = ok
    pgd_seconds = time.perf_counter() - t0

    margin_tensor = None
    source = None
    if isinstance(margins, torch.Tensor):
        margin_tensor, source = margins.detach().double().cpu(), "given"
        if margin_tensor.shape != (n,):
            raise ValueError(f"margins must have shape ({n},), got {tuple(margin_tensor.shape)}")
    elif margins is not None:
        from ..margins.estimators import check_estimator, resolve_estimator
        from .dynamics import estimate_margins

        est = resolve_estimator(check_estimator(margins, ("auto", "exact", "attack")), model, tuple(inputs.shape[1:]))
        margin_tensor, _ = estimate_margins(model, inputs, labels, est, norm,
                                            bounds=bounds or (0.0, 1.0), seed=seed, engine_options=engine_options)
        source = est
    import pandas as pd

    rows = []
    from_margin = accuracy_from_margins(margin_tensor, correct, eps) if margin_tensor is not None else [None] * len(eps)
    for j, e in enumerate(eps):
        both = robust[:, j] & correct
        if margin_tensor is not None:
            both = both & (margin_tensor > e)
        rows.append({"eps": e, "clean_accuracy": float(correct.double().mean()),
                     "pgd_robust_accuracy": float(robust[:, j].double().mean()),
                     "margin_robust_accuracy": from_margin[j], "robust_accuracy": float(both.double().mean())})
    settings = {"norm": str(norm), "eps": eps, "steps": steps, "step_size": step_size, "restarts": restarts,
                "bounds": list(bounds) if bounds else None, "margins": source, "seed": seed, "n": n,
                "pgd_seconds": pgd_seconds}
    return RobustAccuracy(pd.DataFrame(rows), float(correct.double().mean()), margin_tensor, robust, settings)
