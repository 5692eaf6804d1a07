"""Affine shortcut of the engine: the exact box-constrained margin and a verified point just past it.

For an affine model f(x) = A x + c the margin is known exactly: the minimum over classes of one-constraint
box-constrained problems, solved by the exact solver of :mod:`marginkit.margins.affine` (the one behind
:func:`marginkit.margins.affine_input_margin`), here only for the classes that can win. The exact minimiser lands on the decision boundary,
a tie that flips or not depending on float32 rounding, so it is never reported. Instead the same exact
solver is asked for the half-space towards the reached class with the gap shifted by a small ladder of
multiples of the flip test's margin of safety; every rung is checked with one plain forward pass of the
real (float32) model and the smallest verified one is kept. The shift costs a relative norm increase of
about shift / gap (1e-5 on the demo MNIST model), far inside the engine's 0.1% exactness target.
"""

from __future__ import annotations

import math

import torch

from ..margins.affine import _solve_halfspace, exact_affine_margin
from ..norms import Norm
from ._oracle import SAFETY, SEARCH_FACTOR, Best, Queries

# Multiples of the search-time safety margin tried as gap shifts, smallest first (one forward pass each).
LADDER = (1.1, 1.5, 3.0, 10.0, 100.0)


def affine_cost(n_features: int, n_samples: int) -> int:
    """Forward passes per sample charged for recovering (A, c): the rows of
    :func:`marginkit.margins.affine_parameters` (n + 12, :func:`marginkit.margins.affine.recovery_rows`),
    spread evenly (rounded up) over the samples of the call."""
    from ..margins.affine import recovery_rows

    return math.ceil(recovery_rows(n_features) / max(1, n_samples))


def affine_rows(oracle: Queries, best: Best, samples: torch.Tensor, a: torch.Tensor, c: torch.Tensor,
                box_lo: torch.Tensor, box_hi: torch.Tensor, norm: Norm, *, code: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact margins of ``samples`` and verified adversarial points just past them.

    ``a`` (C, D), ``c`` (C,) float64 are the affine map; ``box_lo``/``box_hi`` the per-sample box (widened
    to contain the inputs, as :func:`marginkit.margins.affine_input_margin` does). Returns ``(exact, resolved)``:
    the exact margin per sample (float64, ``inf`` when no point of the box flips the decision) and a mask of
    samples settled by the shortcut (a verified point was recorded in ``best``, or the exact margin is
    infinite so none exists). Samples no rung of the ladder verified are left to the iterative schedule.
    One forward pass per sample and rung tried; a rung is tried only where the smaller ones did not verify.
    """
    x0 = best.x0[samples]
    x64 = x0.double()
    ref = best.ref[samples]
    lo = (box_lo[samples].double() - x64).clamp_max(0)
    hi = (box_hi[samples].double() - x64).clamp_min(0)
    margin, tgt = exact_affine_margin(a, c, x64, ref, lo, hi, norm)
    resolved = ~torch.isfinite(margin)
    todo = torch.isfinite(margin).nonzero().squeeze(1)
    if todo.numel() == 0:
        return margin, resolved
    z = x64[todo] @ a.T + c
    r, t = ref[todo], tgt[todo]
    w = a[t] - a[r]
    gap = (z.gather(1, r[:, None]) - z.gather(1, t[:, None])).squeeze(1)
    scale = z.abs().amax(1).clamp_min(1.0)
    for mult in LADDER:
        if todo.numel() == 0 or oracle.out_of_time():
            break
        need = gap + mult * SEARCH_FACTOR * SAFETY * scale
        _, d = _solve_halfspace(w, need, lo[todo], hi[todo], norm)
        owner = samples[todo]
        cand = x0[todo] + d.to(x0.dtype)
        cand = torch.minimum(torch.maximum(cand, box_lo[owner]), box_hi[owner])
        best.offer(owner, cand, oracle.logits(cand, owner), code)
        left = ~best.found[owner]
        todo, w, gap, scale = todo[left], w[left], gap[left], scale[left]
    resolved = resolved | best.found[samples]
    return margin, resolved
