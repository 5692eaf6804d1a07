"""Adversarial training baselines: PGD adversarial training (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Both are compared against the average-margin regulariser in the min-vs-average margin paper
(section 5.3, Table 2: "Adv" is PGD-AT with l2 eps = 2.0 on MNIST). The inner maximisation reuses
:func:`marginkit.attacks.pgd.pgd`; adversarial points are generated with the model in eval mode (no
batch-norm/dropout drift) and the loss is then evaluated in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import pgd, random_ball
from ..norms import Norm, as_norm, project_ball, steepest_direction
from .methods import register_method

__all__ = ["PGDTraining", "Trades"]


def _check_budget(eps: float, steps: int) -> None:
    if not (eps >= 0 and steps >= 1):
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")


@dataclass
class PGDTraining:
    """Cross-entropy on PGD adversarial examples: min_theta E max_{||delta|| <= eps} CE(f(x + delta), y).

    Defaults are CPU-fast for mnist5k (l2, eps 1.5, 7 steps of 2.5 eps / steps, random start);
    the paper's setting is the preset ``paper-mnist-pgd`` (eps 2.0, 40 steps of 0.01).
    ``clean_weight`` mixes in the clean loss: (1 - w) CE(adv) + w CE(clean) (0 = pure Madry).
    """

    norm: str = "l2"
    eps: float = 1.5
    steps: int = 7
    step_size: Optional[float] = None
    random_start: bool = True
    clean_weight: float = 0.0
    bounds: Optional[tuple[float, float]] = (0.0, 1.0)
    name: str = "pgd"

    def __post_init__(self) -> None:
        self.norm = as_norm(self.norm).value
        _check_budget(self.eps, self.steps)
        if not 0.0 <= self.clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {self.clean_weight}")
        if self.bounds is not None:
            self.bounds = (float(self.bounds[0]), float(self.bounds[1]))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            x_adv = pgd(model, x, y, self.norm, self.eps, steps=self.steps, step_size=self.step_size,
                        random_start=self.random_start, seed=None, bounds=self.bounds, keep_best=False)
        finally:
            model.train(was_training)
        adv_loss = F.cross_entropy(model(x_adv), y)
        if self.clean_weight == 0.0:
            return adv_loss
        return (1 - self.clean_weight) * adv_loss + self.clean_weight * F.cross_entropy(model(x), y)


@dataclass
class Trades:
    """TRADES: CE(f(x), y) + beta * KL(p(x) || p(x')), x' maximising the KL within eps of x.

    The inner maximisation starts at x + 0.001 * (uniform point in the unit ball) as in Zhang et al.
    (their start is a tiny Gaussian) and takes ``steps`` steepest-ascent steps of the KL in ``norm``,
    projected onto the ball and the box. Defaults: l2 eps 1.5, beta 6 (the paper's value), 7 steps.
    """

    norm: str = "l2"
    eps: float = 1.5
    beta: float = 6.0
    steps: int = 7
    step_size: Optional[float] = None
    bounds: Optional[tuple[float, float]] = (0.0, 1.0)
    name: str = "trades"

    def __post_init__(self) -> None:
        self.norm = as_norm(self.norm).value
        _check_budget(self.eps, self.steps)
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.bounds is not None:
            self.bounds = (float(self.bounds[0]), float(self.bounds[1]))

    def adversarial(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The KL-maximising point x' of TRADES' inner problem (model in eval mode while searching)."""
        norm = as_norm(self.norm)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            n = x.shape[0]
            eps = torch.full((n,), float(self.eps), dtype=x.dtype, device=x.device)
            alpha = 2.5 * self.eps / self.steps if self.step_size is None else self.step_size
            delta = random_ball(tuple(x.shape), torch.full_like(eps, 1e-3), norm, dtype=x.dtype, device=x.device)
            for _ in range(self.steps):
                delta.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x + delta), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, delta)
                with torch.no_grad():
                    delta = project_ball(delta + alpha * steepest_direction(grad, norm), eps, norm)
                    if self.bounds is not None:
                        delta = (x + delta).clamp(*self.bounds) - x
            return (x + delta).detach()
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.adversarial(model, x)
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust


register_method("pgd")(PGDTraining)
register_method("trades")(Trades)
