"""Fixed-budget projected gradient descent (Madry et al. 2018), l2 / linf (and l1), untargeted.

PGD answers "is there a misclassified point within distance eps?" for a given eps; it is the attack
behind PGD adversarial training, TRADES and the robust-accuracy tables of the min-vs-average margin
paper (section 5.3, Table 1). Minimal-norm questions ("how far is the boundary?") belong to the
input-margin engine, not here.

Each iteration takes a steepest-ascent step of the cross-entropy in the attack norm
(:func:`marginkit.norms.steepest_direction`), projects back onto the eps-ball
(:func:`marginkit.norms.project_ball`) and onto the input box. The best iterate per sample is
kept: a misclassified one beats any correctly classified one, ties broken by higher loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_box, check_inputs, check_labels, check_logits, check_model_mode, model_device
from ..margins.gap import smallest_gap
from ..norms import Norm, as_norm, project_ball, steepest_direction

__all__ = ["pgd", "random_ball"]


def _per_sample(v: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"eps must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t


def random_ball(shape: tuple[int, ...], radius: torch.Tensor, norm: Norm | str, *,
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Points drawn uniformly from the l_p balls of per-sample ``radius`` ((N,)), shape ``shape``.

    linf: independent uniforms; l2: Gaussian direction times ``radius * u^(1/d)``; l1: exponential
    magnitudes with random signs (uniform on the simplex surface) times ``radius * u^(1/d)``.
    Drawn on the CPU from ``generator`` (reproducible across devices), then moved.
    """
    norm = as_norm(norm)
    n, d = shape[0], math.prod(shape[1:])
    r = radius.detach().to("cpu", torch.float64).reshape(n, 1)
    if norm is Norm.LINF:
        out = (torch.rand(n, d, generator=generator, dtype=torch.float64) * 2 - 1) * r
    else:
        if norm is Norm.L2:
            direction = torch.randn(n, d, generator=generator, dtype=torch.float64)
            direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            e = -torch.log(torch.rand(n, d, generator=generator, dtype=torch.float64).clamp_min(1e-300))
            sign = torch.randint(0, 2, (n, d), generator=generator).to(torch.float64) * 2 - 1
            direction = sign * e / e.sum(dim=1, keepdim=True)
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64) ** (1.0 / d)
        out = direction * u * r
    return out.reshape(shape).to(device=device, dtype=dtype)


def pgd(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    norm: Norm | str = "l2",
    eps: torch.Tensor | float = 1.0,
    *,
    steps: int = 10,
    step_size: torch.Tensor | float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    loss: str = "ce",
    keep_best: bool = True,
) -> torch.Tensor:
    """Untargeted PGD within ``eps`` (scalar or per-sample (N,)) of ``inputs``; returns the adversarial batch.

    ``step_size`` defaults to ``2.5 * eps / steps`` (Madry et al.), per sample. ``seed=None`` draws the
    random start from the global torch RNG (used inside training, where the trainer seeds it).
    ``loss="ce"`` maximises cross-entropy; ``loss="margin"`` maximises max_{k != y} f_k - f_y (the
    Carlini-Wagner difference of logits). With ``keep_best`` the returned point per sample is the best
    iterate (misclassified first, then highest loss), else the last iterate. Samples with eps = 0 come
    back unchanged (inside the box). The model's parameter gradients are never touched.
    """
    norm = as_norm(norm)
    check_inputs(inputs)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if loss not in ("ce", "margin"):
        raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
    device = model_device(model)
    x = inputs.detach().to(device)
    n = x.shape[0]
    e = _per_sample(eps, n, x)
    if not torch.isfinite(e).all() or (e < 0).any():
        raise ValueError("eps must be finite and non-negative")
    alpha = 2.5 * e / max(steps, 1) if step_size is None else _per_sample(step_size, n, x)
    if bounds is not None:
        check_box(x, bounds)
    check_model_mode(model)
    with torch.no_grad():
        logits0 = check_logits(model(x), n)
    y = check_labels(labels, n, logits0.shape[1]).to(device)
    view = (-1,) + (1,) * (x.dim() - 1)

    def into_box(delta: torch.Tensor) -> torch.Tensor:
        delta = project_ball(delta, e, norm)
        if bounds is not None:
            # Clipping x + delta to the box only shrinks |delta_k|, so the result stays in the ball.
            delta = (x + delta).clamp(bounds[0], bounds[1]) - x
        return delta

    def objective(logits: torch.Tensor) -> torch.Tensor:
        if loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return -smallest_gap(logits, y)  # max_{k != y} f_k - f_y

    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    if random_start:
        delta = random_ball(tuple(x.shape), e, norm, generator=gen, dtype=x.dtype, device=device)
    else:
        delta = torch.zeros_like(x)
    delta = into_box(delta)
    best = x + delta
    best_score = torch.full((n,), float("-inf"), dtype=x.dtype, device=device)
    for it in range(steps + 1):
        delta.requires_grad_(True)
        logits = model(x + delta)
        obj = objective(logits)
        (grad,) = torch.autograd.grad(obj.sum(), delta)
        with torch.no_grad():
            # Score: wrong decisions rank above every correct one, then by loss.
            score = obj.detach() + torch.where(logits.argmax(1) != y, 1e6, 0.0)
            better = score > best_score if keep_best else torch.ones_like(best_score, dtype=torch.bool)
            best = torch.where(better.reshape(view), x + delta.detach(), best)
            best_score = torch.where(better, score, best_score)
            if it == steps:
                break
            delta = into_box(delta.detach() + alpha.reshape(view) * steepest_direction(grad, norm))
    return best.detach()
