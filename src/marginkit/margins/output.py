"""Margins read from one forward pass: logit margin d_out and feature-space margin.

Seed paper (margin consistency, Ngnawe et al.) eq. (4) defines the logit margin
d_out(x) = f^i(x) - max_{j != i} f^j(x) and eq. (2) the distance of the feature vector z = h(x) to the
head's decision hyperplanes, (f^i - f^j) / ||w_i - w_j||_q with q the dual of the input norm p.
Both are computed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_inputs, check_labels, check_logits, check_model_mode, model_device
from ..models.head import split_head
from ..norms import Norm, as_norm, dual, vector_norm
from .gap import pairwise_gaps, reference_class, smallest_gap

__all__ = [
    "OutputMargins",
    "logit_margin",
    "feature_margin",
    "hyperplane_distances",
    "pairwise_gaps",
    "head_distances",
    "equidistance_summary",
    "output_margins",
]


def logit_margin(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Logit margin (eq. 4): reference logit minus the largest other logit, shape (N,).

    With ``labels=None`` the reference is the predicted class and the margin is >= 0 (top-1 minus
    top-2). With labels it is f^y - max_{j != y} f^j, negative on misclassified samples.
    """
    check_logits(logits)
    return smallest_gap(logits, labels)


def hyperplane_distances(
    logits: torch.Tensor,
    weight: torch.Tensor,
    norm: Norm | str = "l2",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Signed distances (f^i - f^j) / ||w_i - w_j||_q to each hyperplane DB_ij (eq. 2), shape (N, C).

    The reference class i gets +inf, and so does any class whose weight row equals w_i (it can never
    overtake i through the features).
    """
    check_logits(logits)
    if weight.dim() != 2 or weight.shape[0] != logits.shape[1]:
        raise ValueError(f"head weight must have shape ({logits.shape[1]}, feature_dim), got {tuple(weight.shape)}")
    ref = reference_class(logits, labels)
    gaps = pairwise_gaps(logits, labels)
    w = weight.to(logits.dtype)
    dist = vector_norm(w[ref][:, None, :] - w[None, :, :], dual(norm), dim=-1)  # (N, C)
    inf = torch.full_like(gaps, float("inf"))
    return torch.where((dist > 0) & torch.isfinite(gaps), gaps / dist.clamp_min(torch.finfo(w.dtype).tiny), inf)


def feature_margin(
    logits: torch.Tensor,
    weight: torch.Tensor,
    norm: Norm | str = "l2",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance of h(x) to the nearest decision hyperplane of the linear head (eq. 2), shape (N,).

    ``min_j (f^i - f^j) / ||w_i - w_j||_q`` with q the dual of ``norm`` (the norm in feature space).
    Negative for misclassified samples when ``labels`` are given.
    """
    return hyperplane_distances(logits, weight, norm, labels).min(dim=1).values


def head_distances(weight: torch.Tensor, norm: Norm | str = "l2") -> torch.Tensor:
    """Matrix of ||w_i - w_j||_q over class pairs, q the dual of ``norm``, shape (C, C)."""
    return vector_norm(weight[:, None, :] - weight[None, :, :], dual(norm), dim=-1)


@dataclass
class Equidistance:
    """How far the head is from the equidistance assumption behind eq. (3)."""

    distances: torch.Tensor  # (C*(C-1)/2,) upper-triangle pairwise distances
    median: float
    iqr: float

    @property
    def relative_iqr(self) -> float:
        """Interquartile range over the median: 0 for perfectly equidistant classifiers."""
        return self.iqr / self.median if self.median > 0 else float("inf")


def equidistance_summary(weight: torch.Tensor, norm: Norm | str = "l2") -> Equidistance:
    """Distribution of pairwise head distances ||w_i - w_j||_q (seed paper appendix B.5)."""
    d = head_distances(weight.detach(), norm)
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1)
    vals = d[iu[0], iu[1]].double().cpu()
    q1, med, q3 = torch.quantile(vals, torch.tensor([0.25, 0.5, 0.75], dtype=vals.dtype)).tolist()
    return Equidistance(distances=vals, median=med, iqr=q3 - q1)


@dataclass
class OutputMargins:
    """Per-sample quantities from one forward pass."""

    logits: torch.Tensor
    prediction: torch.Tensor
    logit_margin: torch.Tensor
    feature_margin: torch.Tensor | None
    features: torch.Tensor | None = None


@torch.no_grad()
def output_margins(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    norm: Norm | str = "l2",
    batch_size: int = 1024,
    keep_features: bool = False,
) -> OutputMargins:
    """Logits, predictions, logit margin and feature margin of ``inputs`` in one pass per batch.

    The feature margin needs a linear head (see :func:`marginkit.models.split_head`); for a model
    without one it is ``None``. Inputs are moved to the model's device; results come back on it too.
    """
    norm = as_norm(norm)
    check_inputs(inputs)
    check_model_mode(model)
    device = model_device(model)
    try:
        split = split_head(model)
    except TypeError:
        split = None
    logits_l, feats_l = [], []
    for start in range(0, inputs.shape[0], batch_size):
        xb = inputs[start : start + batch_size].to(device)
        if split is not None:
            z = split.features(xb)
            z = z.reshape(z.shape[0], -1)
            out = split.head(z)
            if keep_features:
                feats_l.append(z)
        else:
            out = model(xb)
        check_logits(out, xb.shape[0])
        logits_l.append(out)
    logits = torch.cat(logits_l)
    if labels is not None:
        labels = check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
    fm = feature_margin(logits, split.weight, norm, labels) if split is not None else None
    return OutputMargins(
        logits=logits,
        prediction=logits.argmax(1),
        logit_margin=logit_margin(logits, labels),
        feature_margin=fm,
        features=torch.cat(feats_l) if keep_features and feats_l else None,
    )
