"""ALMA, the augmented-Lagrangian minimal-norm attack of Rony et al. 2021 ("Augmented Lagrangian
Adversarial Attacks", ICCV, Algorithm 1), for l2 and l1: marginkit's own batched implementation with
per-row state, talking to the model only through the counted :class:`._oracle.Oracle`.

The problem min ||delta||_p s.t. y(x_0 + delta) <= 0 is handled through ||delta||_p + P2(y, rho, mu) with
y the normalised logit gap (difference-of-logits ratio) and P2 the penalty-Lagrangian of the paper. The
per-row rules (multiplier average, penalty growth, RMSProp-with-momentum step, step size held until the
first flip and then decayed exponentially) are those of the paper; the iterates walk along the boundary
towards smaller norm and can cross between linear regions, which boundary projection cannot. Compared
with a plain PHR walk on the raw gap (marginkit's previous version), these rules tighten the demo-CNN l2
median from 1.0148 to about 1.004 times the best peer at the same pass count (``bench/attacks_probe.py``,
numbers in docs/input-margins.md).
"""

from __future__ import annotations

import torch

from ..norms import Norm, as_norm, batch_norm
from ._oracle import SAFETY, SEARCH_FACTOR, Best, Queries, flip_gap, live_rows


def normalised_gap(z: torch.Tensor, ref: torch.Tensor, tol: float) -> torch.Tensor:
    """ALMA's constraint score, sign-flipped to the oracle's convention (> 0: flipped): the gap
    max_{j != ref} z_j - z_ref less a tolerance ``tol`` times the logit scale, divided by z_(1) - z_(3)
    (the difference-of-logits ratio of Croce & Hein 2020, as used by Rony et al. 2021), so the
    constraint has the same scale for every sample and every model."""
    gap = flip_gap(z, ref)
    top = z.topk(min(3, z.shape[1]), dim=1).values
    spread = top[:, 0] - top[:, -1]
    slack = tol * z.detach().abs().amax(1).clamp_min(1.0)
    return (gap - slack) / (spread + 1e-8)


def _p2(y: torch.Tensor, mu: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Derivative in y of the P2 penalty-Lagrangian of Rony et al. 2021, y = constraint
    value (<= 0 wanted): mu + 2 mu rho y + rho^2 y^2 / 2 for y >= 0 (the cubic branch), mu / (1 - rho y)^2 below."""
    neg = mu / (1 - rho * y.clamp(max=0)) ** 2
    pos = mu + 2 * mu * rho * y + 0.5 * rho ** 2 * y * y
    return torch.where(y >= 0, pos, neg)


def initial_step(lr: float | None, steps: int) -> float:
    """ALMA's initial step size: ``lr``, or for None the paper's 0.1 stretched to a run of ``steps``
    (times 1000 / steps, at most 10-fold) so that a shorter run covers about the same path."""
    return 0.1 * min(10.0, max(1.0, 1000.0 / max(steps, 1))) if lr is None else float(lr)


def alma_rows(oracle: Queries, best: Best, owner: torch.Tensor, box_lo: torch.Tensor, box_hi: torch.Tensor, *,
              steps: int, lr: float | torch.Tensor | None = None, lr_reduction: float | torch.Tensor | None = None, mu_init: float = 1.0, rho_init: float = 1.0,
              check_steps: int = 10, tau: float = 0.95, gamma: float = 1.2, alpha: float = 0.9,
              code: int = 6, norm: Norm | str = "l2") -> None:
    """ALMA (Rony et al. 2021, Algorithm 1) in l2 or l1, untargeted, from x_0 on rows (sample ``owner[r]``).

    Minimises ||delta||_p + P2(y(x_0 + delta), rho, mu) (p = 2 or 1, as in the paper) with y the normalised logit gap (:func:`normalised_gap`,
    y <= 0 wanted). Per row: the first step uses the penalty alone (the norm has no gradient at 0); the
    multiplier is an exponential average (``alpha``) of dP2/dy, clamped to [1e-6, 1e12]; every
    ``check_steps`` steps rho grows by ``gamma`` if the row has never flipped and y did not drop below
    ``tau`` times its value at the previous check; the step is RMSProp with momentum (both ``alpha``, the
    squared-gradient average starting at 1) and a step size that stays at ``lr`` until the row first
    flips, then decays exponentially to ``lr * lr_reduction`` at the last step; delta is clipped to the box.
    ``lr`` (a number or one per row) None: the paper's schedule (0.1 decayed to 1e-3 over 1000 steps) scaled to
    ``steps`` (:func:`initial_step`); ``lr_reduction`` None keeps the final step at 1e-3 (1e-3 / lr, per row). The engine's
    choice of runs per norm is measured in docs/input-margins.md (probe table).
    Every point queried is offered to ``best`` (the oracle's flip test with its margin of safety decides).
    """
    norm = as_norm(norm)
    if norm not in (Norm.L2, Norm.L1):
        raise ValueError(f"ALMA here supports l2 and l1, got {norm}")
    l1 = norm is Norm.L1
    tol = 2 * SEARCH_FACTOR * SAFETY  # aim just past what the flip test accepts (ALMA: 1e-4 on the logits)
    objective = lambda z, r: -normalised_gap(z, r, tol)  # noqa: E731 - y, the constraint value (<= 0 wanted)
    x0 = best.x0[owner]
    ref = best.ref[owner]
    lo, hi = box_lo[owner] - x0, box_hi[owner] - x0
    n = owner.shape[0]
    one_per_sample = owner.unique().numel() == owner.numel()  # Best.offer's fast path needs it
    delta = torch.zeros_like(x0)
    sq = torch.ones_like(x0)
    buf = torch.zeros_like(x0)
    mu = torch.full((n,), mu_init, dtype=x0.dtype, device=x0.device)
    rho = torch.full_like(mu, rho_init)
    prev = torch.zeros_like(mu)
    found_at = torch.full((n,), steps + 1, dtype=torch.long, device=x0.device)
    lr = torch.as_tensor(initial_step(None, steps) if lr is None else lr, dtype=torch.float64, device=x0.device).expand(n)
    lr_reduction = 1e-3 / lr if lr_reduction is None else torch.as_tensor(lr_reduction, dtype=torch.float64, device=x0.device).expand(n)
    lr, lr_reduction = lr.to(x0.dtype), lr_reduction.to(x0.dtype)
    for t in range(steps):
        rows = live_rows(oracle, owner, torch.ones(n, dtype=torch.bool, device=owner.device))
        if rows.numel() == 0:
            break
        whole = rows.numel() == n
        take = (lambda v: v) if whole else (lambda v: v[rows])  # noqa: E731
        d, o = take(delta), take(owner)
        xr = take(x0) + d
        z, y, w = oracle.value_and_grad(xr, o, take(ref), None, objective=objective)
        flipped = best.offer(o, xr, z, code, unique=one_per_sample)
        mu_r, rho_r, prev_r, fa = take(mu), take(rho), take(prev), take(found_at)
        if t == 0:
            prev_r = y
        elif (t + 1) % check_steps == 0:
            stuck = (fa > steps) & ~(y < tau * prev_r)
            rho_r = torch.where(stuck, gamma * rho_r, rho_r)
            prev_r = y
        if t > 0:  # the step below already uses the updated multiplier
            mu_r = (alpha * mu_r + (1 - alpha) * _p2(y, mu_r, rho_r)).clamp(1e-6, 1e12)
        dp = _p2(y, mu_r, rho_r)
        fa = torch.where((fa > steps) & flipped, torch.full_like(fa, t), fa)
        grad = dp[:, None] * w
        if t > 0:
            # gradient of the distance term: d / ||d||_2, or sign(d) for ||d||_1 (its subgradient with 0 at 0)
            grad = grad + (d.sign() if l1 else d / batch_norm(d, "l2").clamp_min(1e-12)[:, None])
        sq_r = alpha * take(sq) + (1 - alpha) * grad * grad
        buf_r = alpha * take(buf) + grad / (sq_r.sqrt() + 1e-8)
        since = (t - fa).clamp_min(0).to(x0.dtype)
        step = take(lr) * take(lr_reduction) ** (since / (steps - fa).clamp_min(1).to(x0.dtype))
        d = torch.minimum(torch.maximum(d - step[:, None] * buf_r, take(lo)), take(hi))
        if whole:
            delta, sq, buf, mu, rho, prev, found_at = d, sq_r, buf_r, mu_r, rho_r, prev_r, fa
        else:
            delta[rows], sq[rows], buf[rows], mu[rows], rho[rows], prev[rows], found_at[rows] = d, sq_r, buf_r, mu_r, rho_r, prev_r, fa
