"""Certified radius per sample: the largest eps at which bound propagation proves the decision, by bisection.

For sample n with reference class i, ``certified_radius`` searches eps in [0, min(upper_n, cap)], where
``upper_n`` is a verified upper bound of the input margin (a flipping point at that distance, e.g. the
attack engine's) and ``cap`` the radius at which the ball covers the whole input box (linf: hi - lo,
l2: (hi - lo) sqrt(D), l1: (hi - lo) D). Every sample is evaluated at its own eps in one batched call of
:func:`marginkit.verify.propagation.spec_lower_bounds` per bisection step; a step keeps ``lo`` certified
(every specification row > 0 at ``lo``) and ``hi`` not certified (or the given upper bound), and the
search stops when hi - lo <= rtol * hi. So ``lower = lo`` is certified, and lies within a factor (1 - rtol)
of the threshold eps at which the method stops certifying (bisection presumes the certificate is
monotone in eps, which holds for IBP and CROWN with fixed slopes since their bounds only loosen as S
grows; if it is not, ``lower`` is still certified, just possibly below a larger certifiable eps).

The search runs in stages, cheapest method first (IBP, then CROWN, then alpha-CROWN, up to ``method``):
each stage starts from the previous stage's certified radius and the first eps where it failed (reopened
up to the given upper bound when the stronger method certifies there), with midpoints (lo + hi) / 2
while nothing is certified and sqrt(lo hi) afterwards. Earlier stages stop at tolerance max(rtol, 0.05).
A sample certified at ``cap`` cannot change its decision inside the box: its lower bound is ``inf``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..norms import Norm, as_norm
from .network import ReluNetwork
from .propagation import _check_method, spec_lower_bounds

__all__ = ["RadiusResult", "certified_radius", "box_cap"]


@dataclass(frozen=True)
class RadiusResult:
    """``lower`` (N,) certified radii (float64; ``inf``: no point of the box flips); ``evaluations`` (N,)
    bound computations per sample; ``seconds`` the wall time of the whole call."""

    lower: Tensor
    evaluations: Tensor
    seconds: float


def box_cap(norm: Norm | str, dim: int, bounds: tuple[float, float] | None) -> float:
    """Radius at which the l_p ball around any point of the box contains the whole box (inf without a box)."""
    if bounds is None:
        return math.inf
    width = float(bounds[1]) - float(bounds[0])
    p = as_norm(norm)
    return width * {Norm.LINF: 1.0, Norm.L2: math.sqrt(dim), Norm.L1: float(dim)}[p]


def _bisect(net: ReluNetwork, x: Tensor, ref: Tensor, norm: Norm, lo: Tensor, hi: Tensor, method: str, rtol: float,
            max_iter: int, evals: Tensor, kw: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Batched bisection with ``lo`` certified and ``hi`` not (or the given upper bound)."""
    for _ in range(max_iter):
        active = (hi - lo) > rtol * hi
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        # geometric midpoints once a certified radius is known: a wide bracket is narrowed in log scale
        mid = torch.where(lo[idx] > 0, torch.sqrt(lo[idx] * hi[idx]), hi[idx] / 2)
        lb = spec_lower_bounds(net, x[idx], ref[idx], mid, norm, method=method, stop_when_certified=True, **kw)
        ok = (lb > 0).all(1).to(lo.device)
        evals[idx] += 1
        lo[idx] = torch.where(ok, mid, lo[idx])
        hi[idx] = torch.where(ok, hi[idx], mid)
    return lo, hi


def certified_radius(net: ReluNetwork, x: Tensor, ref: Tensor, norm: Norm | str, *, upper: Tensor | None = None,
                     bounds: tuple[float, float] | None = (0.0, 1.0), method: str = "alpha-crown", rtol: float = 0.01,
                     max_iter: int = 60, **kw: Any) -> RadiusResult:
    """Largest eps (within ``rtol``) at which every row of C f > 0 is certified on B_p(x, eps) ∩ box, per sample.

    ``upper`` (N,) verified upper bounds of the margin (``inf`` allowed: the search then ends at the box
    cap); ``kw`` goes to :func:`spec_lower_bounds` (``alpha_steps``, ``dtype``, ``max_elements``).
    Samples whose clean decision is not ``ref`` (a row <= 0 at eps = 0) get 0.
    """
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    m = _check_method(method)
    p = as_norm(norm)
    start = time.perf_counter()
    n = x.shape[0]
    dim = math.prod(x.shape[1:])
    cap = box_cap(p, dim, bounds)
    up = torch.full((n,), math.inf, dtype=torch.float64) if upper is None else torch.as_tensor(upper, dtype=torch.float64).reshape(-1).cpu()
    if up.shape[0] != n:
        raise ValueError(f"upper has {up.shape[0]} entries for {n} inputs")
    if bool(torch.isnan(up).any()) or bool((up < 0).any()):
        raise ValueError("upper bounds must be non-negative (inf where no flipping point is known), got NaN or a negative value")
    ref = torch.as_tensor(ref).reshape(-1).long()
    evals = torch.zeros(n, dtype=torch.long)
    lower = torch.zeros(n, dtype=torch.float64)
    # the clean decision: at eps = 0 the bound is the exact gap
    clean_ok = (spec_lower_bounds(net, x, ref, 0.0, p, method="ibp", bounds=bounds, **_no_alpha(kw)) > 0).all(1).cpu()
    todo = clean_ok & (up > 0)
    hi = torch.minimum(up, torch.full_like(up, cap))
    if not math.isfinite(cap):  # no box and no upper bound: grow until the method fails
        grow = todo & torch.isinf(hi)
        probe = torch.ones(n, dtype=torch.float64)
        for _ in range(64):
            if not bool(grow.any()):
                break
            idx = grow.nonzero().squeeze(1)
            lb = spec_lower_bounds(net, x[idx], ref[idx], probe[idx], p, method="crown", bounds=bounds, **_no_alpha(kw))
            ok = (lb > 0).all(1).cpu()
            evals[idx] += 1
            hi[idx] = torch.where(ok, hi[idx], probe[idx])
            probe[idx] = torch.where(ok, probe[idx] * 2, probe[idx])
            grow = todo & torch.isinf(hi)
        todo &= torch.isfinite(hi)
    # the whole box certified: no decision change possible inside it
    at_cap = todo & (hi >= cap)
    if math.isfinite(cap) and bool(at_cap.any()):
        idx = at_cap.nonzero().squeeze(1)
        lb = spec_lower_bounds(net, x[idx], ref[idx], hi[idx], p, method=m, bounds=bounds, **kw)
        evals[idx] += 1
        whole = (lb > 0).all(1).cpu()
        lower[idx[whole]] = math.inf
        todo[idx[whole]] = False
    idx = todo.nonzero().squeeze(1)
    if idx.numel():
        xs, rs = x[idx], ref[idx]
        lo_t = torch.zeros(idx.numel(), dtype=torch.float64)
        top = hi[idx].clone()
        hi_t = top.clone()
        ev = torch.zeros(idx.numel(), dtype=torch.long)
        # cheaper methods first: each stage starts from the previous one's certified radius, so the costly
        # evaluations happen near the threshold, where fewer ReLUs are unstable
        stages = {"ibp": ["ibp"], "crown": ["ibp", "crown"], "alpha-crown": ["ibp", "crown", "alpha-crown"]}[m]
        for stage in stages:
            if stage != stages[0]:
                # the stronger method may certify where the weaker one failed: reopen up to the given bound
                lb = spec_lower_bounds(net, xs, rs, hi_t, p, method=stage, bounds=bounds, stop_when_certified=True,
                                       **(kw if stage == "alpha-crown" else _no_alpha(kw)))
                ev += 1
                ok = (lb > 0).all(1).cpu() & (hi_t < top)
                lo_t = torch.where(ok, hi_t, lo_t)
                hi_t = torch.where(ok, top, hi_t)
            lo_t, hi_t = _bisect(net, xs, rs, p, lo_t, hi_t, stage, rtol if stage == m else max(rtol, 0.05), max_iter, ev,
                                 {"bounds": bounds, **(kw if stage == "alpha-crown" else _no_alpha(kw))})
        lower[idx] = lo_t
        evals[idx] += ev
    return RadiusResult(lower, evals, time.perf_counter() - start)


def _no_alpha(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if k not in ("alpha_steps", "alpha_lr", "alpha_intermediate")}
