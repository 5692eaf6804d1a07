"""Augmented-Lagrangian minimal-norm attack for l2 (the idea of ALMA, Rony et al. 2021, "Augmented
Lagrangian Adversarial Attacks", with the classical Powell-Hestenes-Rockafellar penalty).

The problem min ||delta||_2 s.t. c(delta) = -g(x_0 + delta) <= 0 (g > 0: the decision flipped) is
handled through L(delta) = ||delta||_2 + (max(0, mu + rho c)^2 - mu^2) / (2 rho). Each step takes one
forward and one backward pass: delta moves along the normalised gradient of L (distance pull towards
x_0 balanced by the constraint push, so iterates travel along the boundary towards smaller norm and
can cross between linear regions, which boundary projection cannot), is clipped to the box, the
multiplier follows mu <- max(0, mu + rho c) and rho grows by 1.2 when the violation did not shrink by
5% over 10 steps. Step sizes decay exponentially from ``lr`` to ``lr_final``. With ``rms`` (the engine
uses 0.9) each coordinate's step is normalised by a running RMS of its gradient, as in ALMA, and the
step sizes are in input units; without it the step is the normalised gradient times the sample's
length scale (its best norm so far, or the linearised distance before any success).
"""

from __future__ import annotations

import torch

from ..norms import batch_norm
from ._oracle import Best, Oracle, live_rows


def alm_rows(oracle: Oracle, best: Best, owner: torch.Tensor, aim: torch.Tensor, box_lo: torch.Tensor,
             box_hi: torch.Tensor, *, steps: int, lr: float = 0.1, lr_final: float = 1e-3, rms: float | None = None,
             code: int = 6) -> None:
    """Run the l2 augmented-Lagrangian attack from x_0 on rows (sample ``owner[r]``)."""
    x0 = best.x0[owner]
    ref = best.ref[owner]
    lo, hi = box_lo[owner] - x0, box_hi[owner] - x0
    n = owner.shape[0]
    delta = torch.zeros_like(x0)
    mu = torch.ones(n, dtype=x0.dtype, device=x0.device)
    rho = torch.ones_like(mu)
    scale = torch.full_like(mu, float("nan"))
    viol_ref = torch.full_like(mu, float("inf"))
    viol_now = torch.zeros_like(mu)
    sq = torch.zeros_like(x0)
    for t in range(steps):
        rows = live_rows(oracle, owner, torch.ones(n, dtype=torch.bool, device=owner.device))
        if rows.numel() == 0:
            break
        whole = rows.numel() == n  # every row live (no budget): skip the (R, D) gathers
        o, d = (owner, delta) if whole else (owner[rows], delta[rows])
        x0r, lo_r, hi_r = (x0, lo, hi) if whole else (x0[rows], lo[rows], hi[rows])
        xr = x0r + d
        z, g, w = oracle.value_and_grad(xr, o, ref[rows], aim[rows])
        best.offer(o, xr, z, code)
        if t == 0:
            scale[rows] = (g.abs() / w.norm(dim=1).clamp_min(1e-12)).clamp_min(1e-6)
        bst = best.value[o].to(d.dtype)
        s = torch.where(torch.isfinite(bst), bst, scale[rows])
        c = -g
        lam = (mu[rows] + rho[rows] * c).clamp_min(0)
        dn = batch_norm(d, "l2").clamp_min(1e-12)
        grad = d / dn[:, None] - lam[:, None] * w
        step = lr * (lr_final / lr) ** (t / max(1, steps - 1))
        if rms is None:
            d = d - step * s[:, None] * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            sq_r = rms * (sq if whole else sq[rows]) + (1 - rms) * grad * grad
            if whole:
                sq = sq_r
            else:
                sq[rows] = sq_r
            d = d - step * grad / (sq_r / (1 - rms ** (t + 1))).sqrt().clamp_min(1e-12)
        d = torch.minimum(torch.maximum(d, lo_r), hi_r)
        if whole:
            delta = d
        else:
            delta[rows] = d
        mu[rows] = lam
        viol_now[rows] = torch.maximum(viol_now[rows], c.clamp_min(0))
        if (t + 1) % 10 == 0:
            grow = viol_now > 0.95 * viol_ref
            rho = torch.where(grow, rho * 1.2, rho)
            viol_ref = viol_now
            viol_now = torch.zeros_like(mu)
