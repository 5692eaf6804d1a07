"""MMA training: direct input-space margin maximisation (Ding, Sharma, Lui & Huang, ICLR 2020).

MMA maximises the input margin d(x) of correctly classified points. Its gradient with respect to the
weights is, up to a positive per-sample factor, the gradient of a classification loss evaluated at the
closest point of the decision boundary, x + delta* with ||delta*|| = d(x) (Ding et al., Proposition 2.1
and eq. 4). The training objective (their eq. 8, "MMA loss", combined with the clean loss as in their
MNIST experiments) is, for a batch of n points,

    L = w * (1/n) sum_i CE(f(x_i), y_i)
        + (1 - w) * (1/n) [ sum_{i correct} CE(f(x_i + delta*_i), y_i) + sum_{i misclassified} CE(f(x_i), y_i) ]

where delta*_i is the minimal-norm adversarial perturbation of x_i capped at ``d_max``: a point whose
margin exceeds ``d_max`` is trained on the perturbation of length ``d_max`` in the same direction. Ding et
al. also stop at d_max (their AN-PGD searches eps in [0, d_max], and a point with no flip within d_max
is trained on its PGD point at d_max), so that no margin is pushed beyond d_max; here the engine's
direction, shortened, stands in for that PGD point, so one search serves every point.

The paper finds delta* with AN-PGD (PGD at an adaptively chosen eps per sample). Here it comes from the
library's minimal-norm engine (:func:`marginkit.attacks.input_margin`) with a short schedule of
boundary projections (``steps`` per sample), so the search is the same minimal-norm search used to
measure margins; points where the engine finds no flip get an l_p PGD perturbation of length ``d_max``.
The search runs with the model in eval mode and without weight gradients; the loss is then evaluated
in train mode at the found points (delta* is held fixed, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import RuntimeOptions, input_margin
from ..attacks.pgd import pgd
from ..attacks.schedule import Step
from ..attacks.stages import Projection
from ..norms import as_norm, batch_norm
from .methods import register_method

__all__ = ["MMATraining", "MMASearch"]


@dataclass(frozen=True)
class MMASearch:
    """The boundary points of one batch: ``x_boundary`` (inputs to train on: x + delta* capped at d_max,
    the clean x for misclassified points), ``margin`` (found minimal-norm margin, 0 for misclassified
    points, inf where no flip was found), ``correct`` (clean decision right), ``capped`` (margin > d_max:
    the perturbation was shortened, or drawn by PGD at d_max where no flip was found)."""

    x_boundary: torch.Tensor
    margin: torch.Tensor
    correct: torch.Tensor
    capped: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class MMATraining:
    """MMA training (module docstring). ``norm``: l2 or linf; ``d_max``: margin cap; ``clean_weight``:
    weight w of the clean cross-entropy (Ding et al. use 1/3 on MNIST); ``steps``: boundary-projection
    steps per sample of the engine's search; ``pgd_steps``: PGD steps for points without a found flip;
    ``bounds``: input box."""

    norm: str = "l2"
    d_max: float = 2.0
    clean_weight: float = 1.0 / 3.0
    steps: int = 10
    pgd_steps: int = 10
    bounds: Optional[tuple[float, float]] = (0.0, 1.0)
    name: str = "mma"

    def __post_init__(self) -> None:
        self.norm = as_norm(self.norm).value
        if not self.d_max > 0:
            raise ValueError(f"d_max must be > 0, got {self.d_max}")
        if not 0.0 <= self.clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {self.clean_weight}")
        if self.steps < 1 or self.pgd_steps < 1:
            raise ValueError(f"steps and pgd_steps must be >= 1, got {self.steps}, {self.pgd_steps}")
        if self.bounds is not None:
            self.bounds = (float(self.bounds[0]), float(self.bounds[1]))

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MMASearch:
        """Minimal-norm perturbations of the batch, capped at ``d_max`` (no weight gradients)."""
        norm = as_norm(self.norm)
        was_training = model.training
        model.eval()
        try:
            box = self.bounds if self.bounds is not None else (float(x.min()) - 1.0, float(x.max()) + 1.0)
            res = input_margin(model, x.detach(), y, norm, schedule=(Step(Projection(steps=self.steps, topk=3, prune=1.1)),),
                               bounds=box, return_adv=True, runtime=RuntimeOptions(min_rows=1))
            margin = res.upper.to(x.device, torch.float64)
            correct = margin > 0
            adv = res.adversarial
            assert adv is not None  # return_adv=True
            adv = adv.to(x.device, x.dtype)
            xb = x.detach().clone()
            found = correct & torch.isfinite(margin)
            delta = torch.where(found.view(-1, *[1] * (x.dim() - 1)), adv - x, torch.zeros_like(x))
            # Shorten perturbations longer than d_max to length d_max (same direction; the box is convex and
            # contains x and x + delta, so the shortened point stays inside it).
            lengths = batch_norm(delta, norm).to(x.device, torch.float64)
            scale = torch.where(found & (margin > self.d_max), self.d_max / lengths.clamp_min(1e-12),
                                torch.ones_like(margin)).to(x.dtype)
            xb = xb + delta * scale.view(-1, *[1] * (x.dim() - 1))
            lost = correct & ~torch.isfinite(margin)
            if lost.any():
                idx = torch.nonzero(lost).squeeze(1)
                xb[idx] = pgd(model, x[idx].detach(), y[idx], norm, self.d_max, steps=self.pgd_steps, seed=None,
                              bounds=self.bounds, keep_best=False).to(x.dtype)
            capped = correct & (margin > self.d_max)
        finally:
            model.train(was_training)
        return MMASearch(xb.detach(), margin, correct, capped,
                         {"passes": float(res.passes.double().mean()), "no_flip": int(lost.sum())})

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        found = self.search(model, x, y)
        n = x.shape[0]
        clean = F.cross_entropy(model(x), y)
        # Misclassified points keep x_boundary = x, so one cross-entropy covers both sums of the MMA loss.
        mma = F.cross_entropy(model(found.x_boundary), y, reduction="sum") / n
        return self.clean_weight * clean + (1.0 - self.clean_weight) * mma


register_method("mma")(MMATraining)
