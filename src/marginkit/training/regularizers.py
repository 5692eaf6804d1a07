"""The average-margin regulariser (AMR) and the orthogonality / Lipschitz-constant regulariser (LCR).

Min-vs-average margin paper (Wu & Yu), eq. (15), per mini-batch of n samples:

    (1/n) sum_i [ CE(y_i, f(x_i)) - lambda * 1{yhat_i = y_i} * [ min_{k != y_i} (w_{y_i} - w_k)^T Phi(x_i) ]_0^tau ]
        + beta * sum_l ||W_l W_l^T - I||_F^2

with w_k = W_head[k] / ||W_head[k]||_2 (the normalised head rows, eq. 14), Phi the features before the
head, [t]_0^tau = min(max(t, 0), tau), and the sum over every dense and convolutional layer, the head
included (conv filters flattened to (out_channels, in_channels * kh * kw)). The data terms are
averaged over the batch, as in the paper's experiments; beta then acts per batch (beta = 1e-3 there).

Deliberate differences from the authors' public code (see docs/dynamics.md): the margin term rewards
*correctly classified* points (the code penalised only misclassified ones), it uses normalised head
rows (the code used raw logit gaps), and each layer's orthogonality penalty is counted once (the
code counted it twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models.head import split_head
from .methods import register_method

__all__ = [
    "AverageMarginRegularizer",
    "LipschitzRegularizer",
    "feature_margin_term",
    "orthogonality_penalty",
    "regularized_layers",
    "truncate_margin",
]


def truncate_margin(t: torch.Tensor, tau: float) -> torch.Tensor:
    """[t]_0^tau = min(max(t, 0), tau) (paper eq. 9)."""
    return t.clamp(min=0.0, max=tau)


def feature_margin_term(features: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """min_{k != y} (w_y - w_k)^T Phi(x) with normalised head rows w_k (paper eq. 14), shape (N,).

    ``features`` is Phi(x) (N, m), ``head_weight`` the head's W (C, m). Differentiable in both.
    """
    w = head_weight / head_weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scores = features @ w.T  # (N, C): w_k^T Phi(x)
    gaps = scores.gather(1, labels[:, None]) - scores
    gaps = gaps.scatter(1, labels[:, None], float("inf"))
    return gaps.min(dim=1).values


def regularized_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose weights the orthogonality penalty covers: every nn.Linear and nn.Conv{1,2,3}d."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def orthogonality_penalty(model_or_layers: nn.Module | Iterable[nn.Module]) -> torch.Tensor:
    """sum_l ||W_l W_l^T - I||_F^2 over the layers (paper eq. 15, third term), each layer counted once.

    For W of shape (o, i), tr((W W^T)^2) = tr((W^T W)^2) and tr(W W^T) = tr(W^T W), so
    ||W W^T - I_o||^2 = ||W^T W - I_i||^2 + (o - i): the smaller Gram matrix gives the same value
    (after adding o - i) and the same gradient at a fraction of the cost for wide layers.
    """
    layers = regularized_layers(model_or_layers) if isinstance(model_or_layers, nn.Module) else list(model_or_layers)
    total: Optional[torch.Tensor] = None
    for layer in layers:
        weight: torch.Tensor = layer.weight  # type: ignore[assignment]  # a Linear or Conv layer's Parameter
        w = weight.reshape(weight.shape[0], -1)
        o, i = w.shape
        gram = w @ w.T if o <= i else w.T @ w
        eye = torch.eye(gram.shape[0], dtype=w.dtype, device=w.device)
        term = (gram - eye).pow(2).sum() + max(o - i, 0)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the model has no nn.Linear or nn.Conv layer to regularise")
    return total


@dataclass
class AverageMarginRegularizer:
    """AMR, paper eq. (15): cross-entropy - lam * truncated feature margin of correct points + beta * orthogonality.

    Paper hyperparameters: lam = 0.1, beta = 1e-3, tau = 5 (MNIST LR/MLP) or 10 (MNIST CNN).
    The feature extractor Phi and head come from :func:`marginkit.models.split_head`.
    """

    lam: float = 0.1
    tau: float = 5.0
    beta: float = 1e-3
    name: str = "amr"

    def __post_init__(self) -> None:
        if self.lam < 0 or self.tau < 0 or self.beta < 0:
            raise ValueError(f"lam, tau and beta must be >= 0, got lam={self.lam}, tau={self.tau}, beta={self.beta}")

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms of eq. (15) (batch-averaged data terms), for inspection and tests."""
        split = split_head(model)
        phi = split.features(x).flatten(1)
        logits = split.head(phi)
        correct = (logits.detach().argmax(1) == y).to(phi.dtype)
        margin = feature_margin_term(phi, split.weight, y)
        out = {"cross_entropy": F.cross_entropy(logits, y),
               "margin": (correct * truncate_margin(margin, self.tau)).mean()}
        out["orthogonality"] = orthogonality_penalty(model) if self.beta > 0 else logits.new_zeros(())
        return out

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.terms(model, x, y)
        return t["cross_entropy"] - self.lam * t["margin"] + self.beta * t["orthogonality"]


@dataclass
class LipschitzRegularizer:
    """LCR: cross-entropy + beta * sum_l ||W_l W_l^T - I||_F^2 (the orthogonality term of eq. 15 alone)."""

    beta: float = 1e-3
    name: str = "lcr"

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + self.beta * orthogonality_penalty(model)


register_method("amr")(AverageMarginRegularizer)
register_method("lcr")(LipschitzRegularizer)
