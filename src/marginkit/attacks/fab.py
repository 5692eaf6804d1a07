"""Boundary projection (FAB family, Croce & Hein 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack", Algorithm 1), targeted per runner-up class, with the box handled exactly.

At the iterate x_k the decision boundary towards class t is linearised, g(x) ~ g(x_k) + w^T (x - x_k) with
g = z_t - z_ref. FAB projects both the iterate and the clean point x_0 onto {g_lin >= 0} intersected with
the input box, mixes the two projections (alpha = ||d_k|| / (||d_k|| + ||d_0||) capped at alpha_max),
overshoots by eta and pulls adversarial iterates back towards x_0 by beta. The projection is the exact
one-constraint, box-constrained minimum-norm problem that also gives the exact margins of affine models
(:func:`marginkit.margins.affine._solve_halfspace`), so on an affine model a single step is exact.

Rows are (sample, target class) pairs; every row keeps its own iterate and the best point is kept per
sample by :class:`~marginkit.attacks._oracle.Best` (the best verified point ever queried, not the last
iterate).
"""

from __future__ import annotations

import torch

from ..margins.affine import _solve_halfspace
from ..norms import Norm, batch_norm
from ._oracle import Best, Queries, live_rows


def project_linearised(w: torch.Tensor, g: torch.Tensor, at: torch.Tensor, base: torch.Tensor,
                       box_lo: torch.Tensor, box_hi: torch.Tensor, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest ``d`` (and its norm) with base + d in the box and g + w^T (base + d - at) >= 0.

    The linearisation of the gap g at the point ``at`` is moved to ``base``; rows that no point of the box
    can bring across get norm inf.
    """
    if w.shape[0] == 0:
        return w.new_zeros(0), w.new_zeros(w.shape)
    need = -g - (w * (base - at)).sum(1)
    return _solve_halfspace(w, need, (box_lo - base).clamp_max(0), (box_hi - base).clamp_min(0), norm)


def fab_rows(oracle: Queries, best: Best, owner: torch.Tensor, aim: torch.Tensor, start: torch.Tensor,
             box_lo: torch.Tensor, box_hi: torch.Tensor, norm: Norm, *, steps: int, alpha_max: float = 0.1,
             eta: float = 1.05, beta: float = 0.9, patience: int = 5, prune: float | None = None, code: int = 0) -> torch.Tensor:
    """Run targeted FAB on rows (sample ``owner[r]``, class ``aim[r]``) from ``start`` for ``steps`` steps.

    One forward and one backward pass per row and step; rows stop when their sample's budget or the
    deadline runs out, or after ``patience`` steps without improving the row's best adversarial by
    more than 1e-4 (relative) once it has one. Returns the final iterates.
    """
    x0 = best.x0[owner]
    ref = best.ref[owner]
    lo, hi = box_lo[owner], box_hi[owner]
    xk = start.clone()
    row_best = torch.full((owner.shape[0],), float("inf"), dtype=torch.float64, device=owner.device)
    stall = torch.zeros(owner.shape[0], dtype=torch.long, device=owner.device)
    for _ in range(steps):
        rows = live_rows(oracle, owner, stall < patience)
        if rows.numel() == 0:
            break
        if rows.numel() == owner.shape[0]:  # all rows live (the common case early on): no gathers
            o, xs, x0s, lo_r, hi_r = owner, xk, x0, lo, hi
        else:
            o, xs, x0s, lo_r, hi_r = owner[rows], xk[rows], x0[rows], lo[rows], hi[rows]
        z, g, w = oracle.value_and_grad(xs, o, ref[rows], aim[rows])
        flipped = best.offer(o, xs, z, code)
        value = torch.where(flipped, batch_norm(xs - x0s, norm).double(), torch.full_like(row_best[rows], float("inf")))
        improved = value < row_best[rows] * (1 - 1e-4)
        stall[rows] = torch.where(improved | ~torch.isfinite(row_best[rows]) & ~flipped, torch.zeros_like(stall[rows]), stall[rows] + 1)
        row_best[rows] = torch.minimum(row_best[rows], value)
        # FAB's pull-back: an adversarial iterate restarts from a point closer to x_0 (beta of the way).
        # Also one across the boundary by less than the flip test's safety margin (g > 0, not accepted): the
        # projection leaves it where it is (it satisfies g_lin >= 0), so without the pull-back it is a fixed point.
        crossed = flipped | (g > 0)
        p = torch.where(crossed[:, None], x0s + beta * (xs - x0s), xs)
        np_, dp = project_linearised(w, g, xs, p, lo_r, hi_r, norm)
        n0, d0 = project_linearised(w, g, xs, x0s, lo_r, hi_r, norm)
        alpha = (np_ / (np_ + n0)).nan_to_num(0.0).clamp(0.0, alpha_max)[:, None]
        new = (1 - alpha) * (p + eta * dp) + alpha * (x0s + eta * d0)
        new = torch.minimum(torch.maximum(new, lo_r), hi_r)
        ok = (torch.isfinite(np_) & torch.isfinite(n0))[:, None]
        xk[rows] = torch.where(ok, new, p)
        if prune is not None:
            # the linearised boundary of this row's class is far beyond its sample's best point: stop the row
            far = n0.double() > prune * best.value[o]
            stall[rows] = torch.where(far, torch.full_like(stall[rows], patience), stall[rows])
    return xk


def first_step_targets(oracle: Queries, best: Best, box_lo: torch.Tensor, box_hi: torch.Tensor, norm: Norm,
                       num_classes: int, topk: int, eta: float = 1.05, code: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linearise the boundary to every other class at x_0 and keep the ``topk`` nearest (DeepFool/FAB first step).

    Costs (C - 1) forward and backward passes per sample. The box-constrained linearised distance ranks
    the classes (exact on affine models, so their true nearest class is always among the targets).
    Returns (owner, aim, start) for the FAB rows: start is the overshot projection of x_0.
    """
    n = best.x0.shape[0]
    dev = best.x0.device
    others = torch.arange(num_classes, device=dev)[None, :].expand(n, -1)
    others = others[others != best.ref[:, None]].reshape(n, num_classes - 1)
    owner = torch.arange(n, device=dev).repeat_interleave(num_classes - 1)
    aim = others.reshape(-1)
    keep = oracle.can_afford(owner, 2)
    x0 = best.x0[owner]
    est = torch.full((owner.shape[0],), float("inf"), dtype=best.x0.dtype, device=dev)
    step = torch.zeros_like(x0)
    if keep.any():
        z, g, w = oracle.value_and_grad(x0[keep], owner[keep], best.ref[owner[keep]], aim[keep])
        e, d = project_linearised(w, g, x0[keep], x0[keep], box_lo[owner[keep]], box_hi[owner[keep]], norm)
        est[keep], step[keep] = e.to(est.dtype), d
    k = min(topk, num_classes - 1)
    # ties (e.g. unreachable classes at inf) are broken by class order, so the choice is deterministic
    order = est.reshape(n, -1).argsort(dim=1, stable=True)[:, :k]
    rows = (torch.arange(n, device=dev)[:, None] * (num_classes - 1) + order).reshape(-1)
    start = x0[rows] + eta * step[rows]
    start = torch.minimum(torch.maximum(start, box_lo[owner[rows]]), box_hi[owner[rows]])
    return owner[rows], aim[rows], start
