"""Per-pair collision budgets eps_f(u, v) for a whole eps grid at once, with cheap pruning first.

For every pair of training points of different classes the budget stored is a VERIFIED upper bound on
eps_f (so the conflict graph at each eps is a subgraph of the true one and the loss bounds stay valid):

1. upper bounds for free: the midpoint ||u - v|| / 2 (a collision for every f), and -- in a layer-wise
   run -- the budget found at an earlier layer (f_later = g o f_earlier, so an earlier collision is a
   later one too);
2. certified lower bounds on eps_f: ||f(u) - f(v)||_2 / (2 Lip(f)) (``FeatureChain.lipschitz``) for any
   chain, and for a chain with one ReLU stage (l2) the first-layer test of :func:`first_relu_lower_bound`.
   With an eps grid only the grid interval of each budget enters the bounds, so a pair is SETTLED without
   a search when its verified upper bound and a certified lower bound fall in the same grid interval
   (this includes pairs that can never become edges and pairs that are edges at every eps): searching it
   could not change any graph on the grid. A searched pair's descent stops once its budget reaches the
   lowest grid interval its certified lower bound allows (``stop_below`` of ``find_collisions``);
3. the remaining pairs get the closed form (affine layer, l2, no box; all pairs at once) or the cone
   program / ReLU descent of :func:`marginkit.bounds.find_collisions`. The descent costs a few cone
   programs per pair, so ``neighbours=k`` restricts it to each point's k most promising partners (smallest
   upper bound) and ``max_pairs`` caps the total: the other pairs keep their upper bounds, which only
   weakens (never invalidates) the bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..norms import Norm, as_norm
from .collisions import CollisionResult, find_collisions, linear_closed_form, row_basis
from .extractors import FeatureChain
from .graph import PairBudgets

__all__ = ["pair_budgets", "all_pairs", "first_relu_lower_bound", "injective_tail"]


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


def first_relu_lower_bound(chain: FeatureChain, xa: np.ndarray, xb: np.ndarray, eps: np.ndarray,
                           chunk: int = 2048) -> np.ndarray:
    """True where eps_f(xa_i, xb_i) > eps_i is certified, for a chain whose only ReLU is its first stage (l2).

    A ReLU j of the first stage whose pre-activation a_j = L_j x + k_j cannot be switched off within eps on
    both sides (max(a_j(u), a_j(v)) > eps ||L_j||_2, the exact minimum of a_j over the l2 ball) is active on
    at least one side of any eps-collision, so it is active on both with equal pre-activations:
    L_J (u - v + delta - delta') = 0 for the set J of such ReLUs. Then ||delta - delta'|| <= 2 eps forces
    ||P_J (u - v)|| <= 2 eps, P_J the projector on the row space of L_J; a pair with ||P_J (u - v)|| > 2 eps
    has no collision within eps (section 3.1's closed form applied to the rows in J). The squared projection
    r^T (L_J L_J^T + lam I)^-1 r is computed with a ridge lam > 0, which can only make it smaller (sound).
    A later affine stage of full column rank adds no collision, so such a chain qualifies too. A box on the
    perturbed points only removes collisions, so the certificate holds with a box as well.
    """
    relu_stages = [k for k, st in enumerate(chain.stages) if st.relu]
    if relu_stages != [0]:
        raise ValueError(f"layer {chain.name!r}: the first-ReLU test needs exactly one ReLU stage, the first")
    L, k = chain.stages[0].dense()
    Lt = torch.from_numpy(L)
    rows = torch.from_numpy(np.linalg.norm(L, axis=1))
    gram = Lt @ Lt.T
    lam = 1e-9 * float(gram.diagonal().max().clamp_min(1e-300))
    out = np.zeros(len(xa), dtype=bool)
    eye = torch.eye(len(k), dtype=torch.float64)
    for s in range(0, len(xa), chunk):
        u, v = torch.from_numpy(xa[s:s + chunk]), torch.from_numpy(xb[s:s + chunk])
        e = torch.from_numpy(np.asarray(eps[s:s + chunk], dtype=np.float64))
        au, av = u @ Lt.T + torch.from_numpy(k), v @ Lt.T + torch.from_numpy(k)
        J = torch.maximum(au, av) > e[:, None] * rows[None]
        r = (au - av) * J
        Jf = J.to(torch.float64)
        M = gram[None] * (Jf[:, :, None] * Jf[:, None, :]) + eye[None] * (1.0 - Jf)[:, :, None] + lam * eye[None]
        chol, info = torch.linalg.cholesky_ex(M)
        ok = info == 0
        sol = torch.cholesky_solve(r[..., None], chol)[..., 0]
        proj2 = (r * sol).sum(1)
        # 1e-6 relative safety margin against rounding in the solve
        out[s:s + chunk] = (ok & (proj2 > (2.0 * e) ** 2 * (1.0 + 1e-6) + 1e-12)).numpy()
    return out


def injective_tail(chain: FeatureChain) -> FeatureChain | None:
    """The chain without its last stage when that stage is affine with full column rank (it then adds no
    collision: L a = L b iff a = b), else None."""
    if len(chain.stages) < 2 or chain.stages[-1].relu:
        return None
    st = chain.stages[-1]
    if st.out_dim < st.in_dim or row_basis(st.gram())[0].shape[1] < st.in_dim:
        return None
    return FeatureChain(chain.name, chain.input_shape, chain.stages[:-1])


@dataclass(frozen=True)
class _CollisionChunk:
    """One chunk of the collision search, shipped to an executor (:mod:`marginkit.parallel`)."""

    chain: FeatureChain
    u: np.ndarray
    v: np.ndarray
    norm: Norm
    options: tuple

    def __call__(self) -> CollisionResult:
        return find_collisions(self.chain, self.u, self.v, self.norm, **dict(self.options))


def _search(chain: FeatureChain, u: np.ndarray, v: np.ndarray, norm: Norm, executor: Any | None,
            stop_below: np.ndarray | None, **options: Any) -> CollisionResult:
    """:func:`find_collisions` on all pairs, or chunked over ``executor``'s workers (same results: pairs are
    searched independently)."""
    if executor is None or len(u) < 2:
        return find_collisions(chain, u, v, norm, stop_below=stop_below, **options)
    from ..parallel import run_many

    parts = max(2, 4 * int(executor.workers or 1))
    cuts = np.array_split(np.arange(len(u)), min(parts, len(u)))
    opts = {**options, "progress": False}
    tasks = [_CollisionChunk(chain, u[c], v[c], norm,
                             tuple(sorted({**opts, "stop_below": None if stop_below is None else stop_below[c]}.items())))
             for c in cuts]
    results = run_many(tasks, config=executor, desc="collision chunks")
    return CollisionResult(np.concatenate([r.budget for r in results]), None, None,
                           np.concatenate([r.iterations for r in results]), [s for r in results for s in r.status],
                           float(sum(r.seconds for r in results)), int(sum(r.programs for r in results)),
                           {**results[0].settings,
                            "fallback_programs": int(sum(r.settings.get("fallback_programs", 0) for r in results))})


def pair_budgets(chain: FeatureChain, inputs, labels, norm: Norm | str = "l2", *, eps_grid=None,
                 bounds: tuple[float, float] | None = None, prior: PairBudgets | None = None,
                 neighbours: int | None = None, max_pairs: int | None = None, method: str = "auto",
                 solver: str = "CLARABEL", solver_opts: dict | None = None, max_iter: int = 50,
                 progress: bool = False, settle: bool = True, executor: Any | None = None) -> PairBudgets:
    """Verified collision budgets for every different-class pair of ``inputs`` after feature extractor ``chain``.

    ``eps_grid`` (optional) enables pruning; ``prior`` is the result of an earlier layer of the same network
    on the same points (its budgets are upper bounds here). ``info`` records pruning counts and timings.
    ``settle=False`` searches every pair whose upper bound is above the smallest eps and whose Lipschitz
    lower bound is below the largest (no grid-interval settling, no early stop).
    ``executor`` (:class:`marginkit.parallel.ExecutorConfig`) spreads the descent's pairs over workers.
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
    stop_below = None
    first_relu = 0
    if eps_hi is not None and eps_lo is not None:
        candidates &= lb <= eps_hi
        candidates &= ub > eps_lo
        if settle:
            grid = np.unique(np.asarray(list(eps_grid), dtype=np.float64))
            # the grid point just below each upper bound: only eps_f <= that point could change a graph
            below = np.searchsorted(grid, ub, side="left") - 1
            floor = np.where(below >= 0, grid[np.clip(below, 0, None)], -np.inf)
            candidates &= ~(lb > floor)
            core = chain if chain.stages and chain.stages[0].relu and sum(st.relu for st in chain.stages) == 1 else None
            tail = core
            while tail is not None and not tail.stages[-1].relu:
                tail = injective_tail(tail)
            if norm is Norm.L2 and tail is not None:
                idx = np.flatnonzero(candidates & (below >= 0))
                cert = first_relu_lower_bound(tail, x[i[idx]], x[j[idx]], floor[idx])
                candidates[idx[cert]] = False
                first_relu = int(cert.sum())
            # a searched pair can stop once it reaches the grid point at or above its certified lower bound
            stop_below = np.maximum(grid[np.clip(np.searchsorted(grid, lb, side="left"), 0, len(grid) - 1)], eps_lo)
    sel = _select(i, j, ub, candidates, neighbours, max_pairs)
    res = _search(chain, x[i[sel]], x[j[sel]], norm, executor,
                  None if stop_below is None or method == "enumerate" else stop_below[sel],
                  bounds=bounds, method=method, solver=solver, solver_opts=solver_opts, max_iter=max_iter,
                  progress=progress)
    budget = ub.copy()
    budget[sel] = np.minimum(ub[sel], res.budget)
    seconds = time.perf_counter() - t0
    statuses = {s: res.status.count(s) for s in set(res.status)}
    info.update(method=res.settings.get("method", method), searched=int(len(sel)),
                settled=int((~candidates).sum()), settled_first_relu=first_relu,
                pruned=int((lb > eps_hi).sum()) if eps_hi is not None else 0, lipschitz=lip, programs=int(res.programs), statuses=statuses,
                improved=int((res.budget < ub[sel] - 1e-12).sum()), search_seconds=res.seconds, seconds=seconds,
                collisions_per_second=len(sel) / max(res.seconds, 1e-9), neighbours=neighbours, max_pairs=max_pairs,
                solver=solver, engine=res.settings.get("engine"),
                fallback_programs=int(res.settings.get("fallback_programs", 0)))
    return PairBudgets(i, j, budget, y, info)
