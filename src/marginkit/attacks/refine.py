"""Final boundary refinement of the best adversarial per sample.

Two moves, both only ever replacing a sample's best point by a verified smaller one:

* ``line_search``: along the segment x_0 + t (x_adv - x_0) (inside the box, since the box is convex) find
  the smallest t that still flips, by the Illinois variant of regula falsi on the flip gap (fast on the
  piecewise-linear gap of ReLU networks). Forward passes only.
* ``project_from_origin``: linearise the gap to the reached class at the (boundary) best point and take
  the exact box-constrained minimum-norm step from x_0 onto that hyperplane, slightly overshot
  (FAB's projection with alpha = 1). On an affine model this is the exact margin; on a ReLU network it
  is exact while the linear region does not change.
"""

from __future__ import annotations

import torch

from ..norms import Norm
from ._oracle import SAFETY, SEARCH_FACTOR, Best, Queries, flip_gap
from .fab import project_linearised


def _margin_gap(logits: torch.Tensor, ref: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Flip gap minus the safety margin: > 0 exactly when :func:`is_flipped` holds."""
    gap = flip_gap(logits, ref, target) - SEARCH_FACTOR * SAFETY * logits.abs().amax(1).clamp_min(1.0)
    return torch.where(torch.isfinite(logits).all(1), gap, torch.full_like(gap, float("-inf")))


def line_search(oracle: Queries, best: Best, samples: torch.Tensor, clean_logits: torch.Tensor, *, steps: int = 20,
                code: int = 2, rtol: float = 1e-6) -> None:
    """Shrink the best point of ``samples`` towards x_0 along the segment (see module docstring).

    The flip gap along the segment brackets the boundary in [t_lo, t_hi]; each step queries the
    Illinois-modified regula falsi point (the secant of the bracket, with the end value that survived
    twice in a row halved, so both ends converge superlinearly instead of one end sticking). A row stops
    once the bracket is within ``rtol`` of t_hi: the boundary lies inside it, so no further step can shrink
    the norm by more than that fraction.
    """
    samples = samples[best.found[samples]]
    if samples.numel() == 0:
        return
    tgt = None if best.target is None else best.target[samples]
    ref = best.ref[samples]
    x0 = best.x0[samples]
    direction = best.x[samples] - x0
    t_lo = torch.zeros(samples.shape[0], dtype=x0.dtype, device=x0.device)
    t_hi = torch.ones_like(t_lo)
    g_lo = _margin_gap(clean_logits[samples], ref, tgt).clamp_max(0)
    g_hi = torch.full_like(t_lo, float("nan"))  # unknown until measured; the first probe sits just below t_hi
    kept = torch.zeros_like(t_lo)  # +1: t_hi moved last step, -1: t_lo moved, 0: nothing yet
    for _ in range(steps):
        if oracle.out_of_time():
            break
        live = ((t_hi - t_lo) > rtol * t_hi) & oracle.can_afford(samples, 1)
        if not live.any():
            break
        idx = live.nonzero().squeeze(1)
        lo_i, hi_i = t_lo[idx], t_hi[idx]
        gl, gh = g_lo[idx], g_hi[idx]
        width = hi_i - lo_i
        sec = lo_i + width * (-gl) / (gh - gl)
        # The secant point, at least ``pad`` inside the bracket: a boundary just below t_hi (the usual case
        # after a projection) is then closed in one or two steps instead of creeping towards it. Before
        # the gap at t_hi is known (first step) the probe sits at t_hi - pad.
        pad = torch.minimum(0.25 * width, 0.4 * rtol * hi_i)
        mid = torch.where(torch.isfinite(sec), sec, hi_i).clamp(min=lo_i + pad, max=hi_i - pad)
        mid = torch.where(torch.isfinite(mid), mid, 0.5 * (lo_i + hi_i))
        xm = x0[idx] + mid[:, None] * direction[idx]
        o = samples[idx]
        z = oracle.logits(xm, o)
        best.offer(o, xm, z, code, unique=True)
        gm = _margin_gap(z, ref[idx], None if tgt is None else tgt[idx])
        up = gm > 0
        k = kept[idx]
        t_hi[idx] = torch.where(up, mid, hi_i)
        t_lo[idx] = torch.where(up, lo_i, mid)
        # Illinois: the end that survives a second time in a row has its gap halved
        g_hi[idx] = torch.where(up, gm, torch.where(k < 0, 0.5 * gh, gh))
        g_lo[idx] = torch.where(up, torch.where(k > 0, 0.5 * gl, gl), gm.clamp(min=-1e30))
        kept[idx] = torch.where(up, torch.ones_like(k), -torch.ones_like(k))


def project_from_origin(oracle: Queries, best: Best, samples: torch.Tensor, box_lo: torch.Tensor, box_hi: torch.Tensor,
                        norm: Norm, *, overshoots: tuple[float, ...] = (1e-5, 1e-3), code: int = 3) -> None:
    """One exact linearised projection of x_0 towards the class each best point reaches (see module docstring)."""
    samples = samples[best.found[samples]]
    samples = samples[oracle.can_afford(samples, 2 + len(overshoots))]
    if samples.numel() == 0 or oracle.out_of_time():
        return
    xb = best.x[samples]
    aim = best.cls[samples] if best.target is None else best.target[samples]
    z, g, w = oracle.value_and_grad(xb, samples, best.ref[samples], aim)
    x0 = best.x0[samples]
    # Overshoot the gap (not the step): the target stays the exact box-constrained minimiser of a slightly
    # shifted hyperplane, so on an affine model the candidate is exact up to the flip-test safety margin.
    scale = z.abs().amax(1).clamp_min(1.0)
    for rel in overshoots:
        shift = 2 * SEARCH_FACTOR * SAFETY * scale + rel * (g.abs() + (w * (xb - x0)).sum(1).abs())
        _, d = project_linearised(w, g - shift, xb, x0, box_lo[samples], box_hi[samples], norm)
        cand = torch.minimum(torch.maximum(x0 + d, box_lo[samples]), box_hi[samples])
        zc = oracle.logits(cand, samples)
        best.offer(samples, cand, zc, code, unique=True)

