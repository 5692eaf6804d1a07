"""Per-pair collision budgets eps_f(u, v) for a whole eps grid at once, with cheap pruning first.

For every pair of training points of different classes the budget stored is a VERIFIED upper bound on
eps_f (so the conflict graph at each eps is a subgraph of the true one and the loss bounds stay valid):

1. upper bounds for free: the midpoint ||u - v|| / 2 (a collision for every f), and -- in a layer-wise
   run -- the budget found at an earlier layer (f_later = g o f_earlier, so an earlier collision is a
   later one too);
2. a certified lower bound, ||f(u) - f(v)||_2 / (2 Lip(f)) (``FeatureChain.lipschitz``); pairs whose lower
   bound exceeds the largest eps asked for can never become edges and are pruned, and pairs whose upper
   bound is already below the smallest eps are edges at every eps and need no search;
3. the remaining pairs get the closed form (affine layer, l2, no box; all pairs at once) or the cone
   program / ReLU descent of :func:`marginkit.bounds.find_collisions`. The descent costs a few cone
   programs per pair, so ``neighbours=k`` restricts it to each point's k most promising partners (smallest
   upper bound) and ``max_pairs`` caps the total: the other pairs keep their upper bounds, which only
   weakens (never invalidates) the bound.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..norms import Norm, as_norm
from .collisions import find_collisions, linear_closed_form, row_basis
from .extractors import FeatureChain
from .graph import PairBudgets

__all__ = ["pair_budgets", "all_pairs"]


def all_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of points with different labels."""
    i, j = np.triu_indices(len(labels), k=1)
    keep = labels[i] != labels[j]
    return i[keep], j[keep]


def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, ...), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.reshape(len(x), -1)


def _midpoints(x: np.ndarray, i: np.ndarray, j: np.ndarray, norm: Norm, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(i))
    p = np.inf if norm is Norm.LINF else norm.p
    for s in range(0, len(i), chunk):
        out[s:s + chunk] = 0.5 * np.linalg.norm(x[i[s:s + chunk]] - x[j[s:s + chunk]], ord=p, axis=1)
    return out


def _select(i, j, ub, candidates, neighbours, max_pairs) -> np.ndarray:
    """Indices (into the pair list) to search: each vertex's ``neighbours`` smallest-ub candidate pairs."""
    cand = np.flatnonzero(candidates)
    if neighbours is not None and len(cand):
        order = cand[np.argsort(ub[cand], kind="stable")]
        keep = np.zeros(len(order), dtype=bool)
        for ends in (i[order], j[order]):
            # rank of each pair among the pairs of its endpoint, in increasing ub order
            sorter = np.argsort(ends, kind="stable")
            sorted_ends = ends[sorter]
            starts = np.searchsorted(sorted_ends, sorted_ends)
            rank = np.empty(len(ends), dtype=int)
            rank[sorter] = np.arange(len(ends)) - starts
            keep |= rank < neighbours
        cand = np.sort(order[keep])
    if max_pairs is not None and len(cand) > max_pairs:
        cand = np.sort(cand[np.argsort(ub[cand], kind="stable")[:max_pairs]])
    return cand


def pair_budgets(chain: FeatureChain, inputs, labels, norm: Norm | str = "l2", *, eps_grid=None,
                 bounds: tuple[float, float] | None = None, prior: PairBudgets | None = None,
                 neighbours: int | None = None, max_pairs: int | None = None, method: str = "auto",
                 solver: str = "CLARABEL", solver_opts: dict | None = None, max_iter: int = 50,
                 progress: bool = False) -> PairBudgets:
    """Verified collision budgets for every different-class pair of ``inputs`` after feature extractor ``chain``.

    ``eps_grid`` (optional) enables pruning; ``prior`` is the result of an earlier layer of the same network
    on the same points (its budgets are upper bounds here). ``info`` records pruning counts and timings.
    """
    t0 = time.perf_counter()
    norm = as_norm(norm)
    x = _as_numpy(inputs, "inputs")
    y = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("need points of at least two classes")
    if x.shape[1] != chain.input_dim:
        raise ValueError(f"inputs have {x.shape[1]} features but layer {chain.name!r} expects {chain.input_dim}")
    if bounds is not None and ((x < bounds[0] - 1e-9).any() or (x > bounds[1] + 1e-9).any()):
        raise ValueError(f"bounds={bounds} given but some inputs lie outside the box")
    i, j = all_pairs(y)
    ub = _midpoints(x, i, j, norm)
    if prior is not None:
        if not (np.array_equal(prior.i, i) and np.array_equal(prior.j, j)):
            raise ValueError("prior budgets were computed on different points")
        ub = np.minimum(ub, prior.budget)
    info: dict = {"layer": chain.name, "pairs": int(len(i)), "norm": norm.value, "bounds": bounds}
    eps_lo = eps_hi = None
    if eps_grid is not None:
        grid = np.asarray(list(eps_grid), dtype=np.float64)
        eps_lo, eps_hi = float(grid.min()), float(grid.max())
    closed = chain.is_affine and bounds is None and (norm is Norm.L2 or chain.is_identity)
    if chain.is_identity:
        info.update(method="midpoint", searched=0, pruned=0, seconds=time.perf_counter() - t0, programs=0)
        return PairBudgets(i, j, ub, y, info)
    if closed and method in ("auto", "closed-form"):
        V = row_basis(chain.stages[0].gram())[0]  # one SVD for all pairs
        budget = np.empty(len(i))
        for s in range(0, len(i), 4096):
            a, b = i[s:s + 4096], j[s:s + 4096]
            budget[s:s + 4096] = linear_closed_form(chain, x[a], x[b], basis=V).budget
        info.update(method="closed-form", searched=int(len(i)), pruned=0, unverified=int(np.isinf(budget).sum()),
                    rank=int(V.shape[1]), seconds=time.perf_counter() - t0, programs=0)
        info["collisions_per_second"] = len(i) / max(info["seconds"], 1e-9)
        return PairBudgets(i, j, np.minimum(ub, budget), y, info)
    # certified lower bound: ||f(u + d) - f(v + d')|| = 0 needs 2 Lip eps >= ||f(u) - f(v)||
    feats = chain(torch.from_numpy(x)).numpy()
    lip = chain.lipschitz(norm.value)
    lb = np.empty(len(i))
    for s in range(0, len(i), 4096):
        lb[s:s + 4096] = np.linalg.norm(feats[i[s:s + 4096]] - feats[j[s:s + 4096]], axis=1) / (2 * lip)
    candidates = np.ones(len(i), dtype=bool)
    if eps_hi is not None:
        candidates &= lb <= eps_hi
        candidates &= ub > eps_lo
    sel = _select(i, j, ub, candidates, neighbours, max_pairs)
    res = find_collisions(chain, x[i[sel]], x[j[sel]], norm, bounds=bounds, method=method, solver=solver,
                          solver_opts=solver_opts, max_iter=max_iter, progress=progress)
    budget = ub.copy()
    budget[sel] = np.minimum(ub[sel], res.budget)
    seconds = time.perf_counter() - t0
    statuses = {s: res.status.count(s) for s in set(res.status)}
    info.update(method=res.settings.get("method", method), searched=int(len(sel)),
                pruned=int((~candidates).sum()), lipschitz=lip, programs=int(res.programs), statuses=statuses,
                improved=int((res.budget < ub[sel] - 1e-12).sum()), search_seconds=res.seconds, seconds=seconds,
                collisions_per_second=len(sel) / max(res.seconds, 1e-9), neighbours=neighbours, max_pairs=max_pairs,
                solver=solver)
    return PairBudgets(i, j, budget, y, info)
