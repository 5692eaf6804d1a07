"""The scores of margin consistency: what one forward pass says about how close each decision is.

Logit margin (seed paper eq. 4), feature margin (eq. 2) and a fitted pseudo-margin (section 3.3).
Algorithm 1 and the deployable scorer both read them from here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..margins.output import output_margins
from .pseudo_margin import PseudoMargin

__all__ = ["SCORES", "compute_score"]

SCORES = ("logit", "feature", "pseudo")


@torch.no_grad()
def compute_score(model: nn.Module, inputs: torch.Tensor, kind: str = "logit", *, norm: str = "l2",
                  pseudo_margin: PseudoMargin | None = None, batch_size: int = 1024) -> tuple[np.ndarray, torch.Tensor]:
    """Score of every input from one forward pass per batch, and the predictions.

    ``kind``: "logit" (eq. 4, top-1 minus top-2), "feature" (eq. 2 in the dual of ``norm``; needs a
    linear head) or "pseudo" (needs ``pseudo_margin``). Larger = further from the boundary.
    """
    if kind not in SCORES:
        raise ValueError(f"unknown score {kind!r}; choose one of {', '.join(SCORES)}")
    if kind == "pseudo":
        if pseudo_margin is None:
            raise ValueError("score 'pseudo' needs a fitted pseudo_margin")
        out = output_margins(model, inputs, norm=norm, batch_size=batch_size, keep_features=pseudo_margin.config.source == "features")
        rep = out.features if pseudo_margin.config.source == "features" else out.logits
        if rep is None:
            raise TypeError("the pseudo-margin reads features but the model has no linear head to split off")
        return pseudo_margin.predict(rep).double().cpu().numpy(), out.prediction
    out = output_margins(model, inputs, norm=norm, batch_size=batch_size)
    if kind == "feature":
        if out.feature_margin is None:
            raise TypeError("the model has no linear head, so no feature margin; use score 'logit'")
        return out.feature_margin.double().cpu().numpy(), out.prediction
    return out.logit_margin.double().cpu().numpy(), out.prediction
