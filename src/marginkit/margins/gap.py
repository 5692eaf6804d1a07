"""The one margin definition of marginkit: logit gaps, the flip test and the specification matrix.

A decision for reference class i (the prediction, or the label when labels are given) is the set of
inequalities f^i(x) - f^j(x) > 0 for every j != i. Everything in the package that asks "how far is
this decision from flipping" reads it from here:

- the logit margin d_out (margin-consistency paper, eq. 4) is the smallest gap;
- the attacks' flip test accepts a point when the best other logit beats the reference logit by a
  small margin of safety relative to the logit scale (a point exactly on the float32 boundary flips
  or not with the batch layout, so only points that clear the margin are reported);
- PGD's margin loss and ALMA's constraint are the same gap with the opposite sign;
- bound propagation verifies the rows of the specification matrix C (C z = gaps).
"""

from __future__ import annotations

import torch

__all__ = [
    "SAFETY",
    "SEARCH_FACTOR",
    "reference_class",
    "pairwise_gaps",
    "smallest_gap",
    "flip_gap",
    "is_flipped",
    "specification_matrix",
]

# Relative margin of safety of the flip test: gap > SAFETY * max(1, max_j |z_j|). The attacks accept a
# point only with twice that margin (SEARCH_FACTOR), so the final re-check in a different batch layout,
# which may move logits by a few float32 ulps, cannot reject a point the search accepted.
SAFETY = 2e-6
SEARCH_FACTOR = 2.0


def reference_class(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The class whose decision is measured: the prediction, or ``labels`` when given (validated)."""
    if labels is None:
        return logits.argmax(dim=1)
    from ..checks import check_labels

    return check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)


def pairwise_gaps(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Gaps f^i - f^j for every class j (the reference class i itself gets +inf), shape (N, C)."""
    ref = reference_class(logits, labels)
    gaps = logits.gather(1, ref[:, None]) - logits
    return gaps.scatter(1, ref[:, None], float("inf"))


def smallest_gap(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """min_{j != i} f^i - f^j, shape (N,): the logit margin; negative where the decision flipped."""
    return pairwise_gaps(logits, labels).min(dim=1).values


def flip_gap(logits: torch.Tensor, ref: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row gap that is > 0 exactly when the decision flipped (the negated :func:`smallest_gap`).

    Untargeted (``target`` None or -1 in a row): max_{j != ref} z_j - z_ref. Targeted: z_t - max_{j != t} z_j.
    """
    z_ref = logits.gather(1, ref[:, None]).squeeze(1)
    others = logits.scatter(1, ref[:, None], float("-inf"))
    gap = others.amax(1) - z_ref
    if target is not None:
        tgt = target.clamp_min(0)
        z_t = logits.gather(1, tgt[:, None]).squeeze(1)
        not_t = logits.scatter(1, tgt[:, None], float("-inf")).amax(1)
        gap = torch.where(target >= 0, z_t - not_t, gap)
    return gap


def is_flipped(logits: torch.Tensor, ref: torch.Tensor, target: torch.Tensor | None = None, factor: float = 1.0) -> torch.Tensor:
    """Flip test with ``factor`` times the margin of safety; non-finite logits never count as a flip."""
    gap = flip_gap(logits, ref, target)
    scale = logits.abs().amax(1).clamp_min(1.0)
    finite = torch.isfinite(logits).all(1)
    return finite & (gap > factor * SAFETY * scale)


def specification_matrix(ref: torch.Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C of shape (N, num_classes - 1, num_classes) with rows e_ref - e_j for every j != ref.

    ``C @ z`` is the vector of gaps f^ref - f^j without the reference entry, so the decision is
    certified on a set exactly when every row of C z has a positive lower bound there.
    """
    if num_classes < 2:
        raise ValueError(f"a decision needs at least 2 classes, got {num_classes}")
    n = ref.shape[0]
    eye = torch.eye(num_classes, dtype=dtype, device=ref.device)
    others = torch.arange(num_classes, device=ref.device).expand(n, num_classes)
    others = others[others != ref[:, None]].view(n, num_classes - 1)
    return eye[ref][:, None, :] - eye[others]
