"""Diagnostics of why margin consistency holds or not (seed paper eq. 3, appendix B.5, Fig. 6).

* Equidistance of the head: eq. (3) turns the logit margin into the feature-space margin up to a
  constant when ||w_i - w_j||_q is the same for all class pairs; the spread of those distances
  (interquartile range over the median) says how far the head is from that assumption. The summary
  itself lives in :func:`marginkit.margins.equidistance_summary`; this module only applies it to a model.
* Local isometry (section 3.2, Fig. 6): if ||h(x) - h(x')|| grows like kappa ||x - x'|| between a
  sample and its closest adversarial example x', the feature extractor preserves the order of margins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import check_inputs
from ..margins.output import Equidistance, equidistance_summary
from ..models import split_head
from ..norms import Norm, as_norm, batch_norm

__all__ = ["head_equidistance", "Isometry", "local_isometry"]


def head_equidistance(model_or_weight: nn.Module | torch.Tensor, norm: Norm | str = "l2") -> Equidistance:
    """Distribution of ||w_i - w_j||_q over class pairs of the model's linear head (q = dual of ``norm``)."""
    weight = model_or_weight if isinstance(model_or_weight, torch.Tensor) else split_head(model_or_weight).weight
    if weight.dim() != 2 or weight.shape[0] < 2:
        raise ValueError(f"head weight must have shape (classes >= 2, feature_dim), got {tuple(weight.shape)}")
    return equidistance_summary(weight, norm)


@dataclass
class Isometry:
    """Input distances ||x - x'||_p against feature distances ||h(x) - h(x')||_p (Fig. 6)."""

    norm: str
    n: int
    kendall_tau: float
    pearson_r: float
    kappa_median: float  # median of ||h(x) - h(x')|| / ||x - x'||: the local scaling factor
    kappa_iqr: float
    input_distance: list[float]
    feature_distance: list[float]

    def to_dict(self, values: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not values:
            d.pop("input_distance")
            d.pop("feature_distance")
        return d


@torch.no_grad()
def local_isometry(model: nn.Module, inputs: torch.Tensor, adversarial: torch.Tensor, norm: Norm | str = "l2", *,
                   valid: torch.Tensor | None = None, batch_size: int = 1024) -> Isometry:
    """Correlation between ||x - x_adv||_p and ||h(x) - h(x_adv)||_p (seed paper Fig. 6).

    ``adversarial`` holds the closest adversarial example found for each input (e.g. the
    ``adversarial`` field of :func:`marginkit.attacks.input_margin` with ``return_adv=True``);
    ``valid`` (bool) excludes samples whose attack failed. The feature distance uses the same norm as
    the input distance, as in the paper.
    """
    from scipy.stats import kendalltau, pearsonr

    norm = as_norm(norm)
    check_inputs(inputs)
    check_inputs(adversarial, "adversarial")
    if adversarial.shape != inputs.shape:
        raise ValueError(f"adversarial must have the inputs' shape {tuple(inputs.shape)}, got {tuple(adversarial.shape)}")
    keep = torch.ones(inputs.shape[0], dtype=torch.bool) if valid is None else valid.detach().cpu().bool()
    if keep.shape != (inputs.shape[0],):
        raise ValueError(f"valid must have shape ({inputs.shape[0]},), got {tuple(keep.shape)}")
    x, xa = inputs[keep], adversarial[keep]
    if x.shape[0] < 3:
        raise ValueError(f"local isometry needs at least 3 samples with an adversarial example, got {x.shape[0]}")
    feats = split_head(model).features
    dev = next(iter(model.parameters()), torch.empty(0)).device
    fd = []
    for start in range(0, x.shape[0], batch_size):
        a = feats(x[start : start + batch_size].to(dev))
        b = feats(xa[start : start + batch_size].to(dev))
        fd.append(batch_norm(a - b, norm))
    feat_dist = torch.cat(fd).double().cpu().numpy()
    in_dist = batch_norm((x - xa).double(), norm).cpu().numpy()
    if np.any(in_dist <= 0):
        raise ValueError("some adversarial examples equal their input (zero distance): mark failed attacks with valid=...")
    ratio = feat_dist / in_dist
    q1, med, q3 = np.quantile(ratio, [0.25, 0.5, 0.75])
    return Isometry(norm=str(norm), n=int(x.shape[0]), kendall_tau=float(kendalltau(in_dist, feat_dist).statistic),
                    pearson_r=float(pearsonr(in_dist, feat_dist).statistic), kappa_median=float(med),
                    kappa_iqr=float(q3 - q1), input_distance=in_dist.tolist(), feature_distance=feat_dist.tolist())
