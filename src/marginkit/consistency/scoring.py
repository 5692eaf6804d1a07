"""Vulnerability scoring for deployment: one forward pass per batch flags likely non-robust inputs.

The seed paper's point (section 1): with a margin-consistent model, d_out(x) <= lambda flags inputs
with d_in(x) <= eps without running any attack at deployment time. :class:`VulnerabilityScorer`
bundles the model, the score (logit margin, feature margin or a fitted :class:`PseudoMargin`) and a
threshold lambda calibrated on samples whose input margins were estimated.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..models.checkpoint import load_torch_file
from ..norms import as_norm
from .algorithm1 import DEFAULT_ALPHAS, threshold_at_tpr, tune_threshold
from .metrics import as_margin_array, non_robust_labels
from .pseudo_margin import PseudoMargin
from .scores import SCORES, compute_score

__all__ = ["Assessment", "VulnerabilityScorer"]

FORMAT = "marginkit-vulnerability-scorer"


@dataclass
class Assessment:
    """Scores of a batch of inputs and which ones are flagged as likely non-robust."""

    score: torch.Tensor
    prediction: torch.Tensor
    flagged: torch.Tensor  # bool: score <= threshold


@dataclass
class VulnerabilityScorer:
    """A model plus a score and a threshold: ``flagged = score(x) <= threshold`` (likely d_in <= eps)."""

    model: nn.Module
    threshold: float
    kind: str = "logit"
    norm: str = "l2"
    eps: float | None = None
    pseudo_margin: PseudoMargin | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.norm = str(as_norm(self.norm))
        if self.kind not in SCORES:
            raise ValueError(f"unknown score {self.kind!r}; choose one of {', '.join(SCORES)}")
        if self.kind == "pseudo" and self.pseudo_margin is None:
            raise ValueError("kind='pseudo' needs a pseudo_margin")

    def score(self, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        s, _ = compute_score(self.model, inputs, self.kind, norm=self.norm, pseudo_margin=self.pseudo_margin, batch_size=batch_size)
        return torch.from_numpy(s)

    def assess(self, inputs: torch.Tensor, batch_size: int = 1024) -> Assessment:
        s, pred = compute_score(self.model, inputs, self.kind, norm=self.norm, pseudo_margin=self.pseudo_margin, batch_size=batch_size)
        st = torch.from_numpy(s)
        return Assessment(score=st, prediction=pred.cpu(), flagged=st <= self.threshold)

    def flag(self, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Boolean mask of inputs flagged as likely non-robust at the calibrated eps."""
        return self.assess(inputs, batch_size).flagged

    @classmethod
    def calibrate(cls, model: nn.Module, inputs: torch.Tensor, input_margin: Any, eps: float, *, kind: str = "logit",
                  norm: str = "l2", tpr: float | None = 0.95, labels: torch.Tensor | None = None,
                  alphas: Sequence[float] = DEFAULT_ALPHAS, pseudo_margin: PseudoMargin | None = None,
                  batch_size: int = 1024) -> "VulnerabilityScorer":
        """Choose the threshold on calibration samples whose input margins are known.

        ``tpr=alpha`` (default 0.95): lambda catches that fraction of the calibration set's non-robust
        samples. ``tpr=None``: Algorithm 1's tuning over ``alphas`` to reproduce the calibration set's
        robust accuracy (with ``labels``) or vulnerable fraction (without).
        """
        s, pred = compute_score(model, inputs, kind, norm=norm, pseudo_margin=pseudo_margin, batch_size=batch_size)
        d = as_margin_array(input_margin)
        if len(d) != len(s):
            raise ValueError(f"input_margin has {len(d)} values for {len(s)} inputs")
        y = non_robust_labels(d, eps)
        if tpr is not None:
            lam = threshold_at_tpr(s, y, tpr)
            info: dict[str, Any] = {"rule": f"TPR >= {tpr}", "alpha": tpr}
        else:
            correct = None if labels is None else (pred.cpu() == labels.cpu()).numpy()
            t = tune_threshold(s, d, eps, correct, alphas)
            lam, info = t.threshold, {"rule": "algorithm1", "alpha": t.alpha, "message": t.message}
        flagged = s <= lam
        info.update({"n": int(len(s)), "n_non_robust": int(y.sum()),
                     "calibration_tpr": float(flagged[y == 1].mean()) if y.any() else None,
                     "calibration_fpr": float(flagged[y == 0].mean()) if (y == 0).any() else None})
        return cls(model, float(lam), kind, norm, float(eps), pseudo_margin, info)

    def save(self, path: str | os.PathLike) -> str:
        """Write threshold, settings and pseudo-margin (not the model: pass it again to :meth:`load`)."""
        from ..results import atomic_write_bytes

        payload = {"format": FORMAT, "version": 1, "threshold": self.threshold, "kind": self.kind, "norm": self.norm,
                   "eps": self.eps, "calibration": {k: v for k, v in self.calibration.items() if v is not None},
                   "pseudo_margin": self.pseudo_margin.state() if self.pseudo_margin is not None else None}
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module) -> "VulnerabilityScorer":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no vulnerability scorer at {path}")
        payload = load_torch_file(path, what="vulnerability scorer")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a marginkit vulnerability scorer")
        pm = PseudoMargin.from_state(payload["pseudo_margin"]) if payload.get("pseudo_margin") else None
        return cls(model, float(payload["threshold"]), payload["kind"], payload["norm"], payload["eps"], pm,
                   dict(payload.get("calibration", {})))
