"""Exact input margins of affine classifiers f(x) = A x + c, with or without a box on the inputs.

The set of points classified differently from the reference class i is the union over j != i of the
half-spaces {x' : (a_j - a_i)^T x' + c_j - c_i >= 0}, so d_in(x) = min_j d_j(x) with d_j the distance
from x to half-space j (intersected with the box when one is given). Without a box that distance is
the closed form of seed paper eq. (2) with h the identity: g_j / ||a_i - a_j||_q.

With the box [lo, hi], each d_j is a one-constraint problem
    min ||delta||_p  s.t.  w^T delta >= g,  lo - x <= delta <= hi - x,   (w = a_j - a_i, g = f^i - f^j)
whose solution moves each coordinate in the direction sign(w_k) up to its room ``cap_k`` in the box:
  * linf: delta_k = sign(w_k) min(t, cap_k), smallest t with sum |w_k| min(t, cap_k) >= g;
  * l1:   fractional knapsack, spend on coordinates in decreasing |w_k| order;
  * l2:   KKT, delta_k = sign(w_k) min(lambda |w_k|, cap_k), smallest lambda reaching g.
Each is solved exactly, batched over samples and classes, by sorting the breakpoints of a monotone
piecewise-linear function (method ``"exact"``). The same problems are also handed to maintained solvers
(HiGHS LPs for l1/linf, a Clarabel QP for l2: method ``"solver"``) as an independent check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..checks import check_inputs, check_labels, check_logits, model_device
from ..norms import Norm, as_norm, batch_norm
from .output import hyperplane_distances

__all__ = ["AffineMargin", "affine_map_or_none", "affine_parameters", "affine_input_margin", "affine_input_margin_solver",
           "exact_affine_margin", "is_affine"]

_AFFINE_LAYERS = (nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)
# A model holding one of these is not affine (for any weights worth using), so no forward pass is spent on it.
_NONLINEAR_LAYERS = (nn.ReLU, nn.MaxPool2d, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Softmax)


@dataclass
class AffineMargin:
    """Exact input margins of an affine model.

    ``margin`` is d_in per sample (``inf`` when no point of the box changes the decision), ``target``
    the class reached at the minimiser (-1 when infinite), ``delta`` the minimal perturbation when asked
    for (it lands exactly on the decision boundary: a tie, the infimum of flipping perturbations).
    """

    margin: torch.Tensor
    target: torch.Tensor
    norm: Norm
    bounds: tuple[float, float] | None
    delta: torch.Tensor | None = None


# Float64 rows of the identity built per forward call when recovering A (the basis is never built whole:
# a 3 x 224 x 224 input would need a 180 GB identity).
_BASIS_BYTES = 64 * 2**20
# Rows of the affinity checks of affine_parameters: a chord's two ends and midpoint, then random probes.
_CHORD_ROWS, _PROBE_ROWS = 3, 8


def recovery_rows(n_features: int) -> int:
    """Forward rows :func:`affine_parameters` runs with ``check``: the checks, f(0) and the n basis vectors."""
    return _CHORD_ROWS + 1 + n_features + _PROBE_ROWS


@torch.no_grad()
def affine_parameters(model: nn.Module, input_shape: tuple[int, ...], check: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover (A, c) of an affine model from n + 1 forward passes: c = f(0), A e_k = f(e_k) - f(0).

    Float64 copies are used so the recovered map is accurate; the basis vectors go through the model in
    chunks of ``_BASIS_BYTES``. With ``check`` a ``ValueError`` says when the model is not affine (ReLUs,
    pooling, ...): first from three forward rows (f at a random chord's midpoint against the mean of its
    ends), so a network is rejected without paying the n + 1 passes, then by verifying the recovered map
    on random points.
    """
    device = model_device(model)
    n = int(np.prod(input_shape))
    m64 = _float64_copy(model)
    run = lambda rows: m64(rows.reshape(-1, *input_shape))  # noqa: E731
    g = torch.Generator(device="cpu").manual_seed(seed)
    if check:
        u, v = torch.rand(2, n, generator=g, dtype=torch.float64).to(device)
        ends = run(torch.stack([u, v, 0.5 * (u + v)]))
        check_logits(ends, _CHORD_ROWS)
        _require_affine(ends[2:], 0.5 * (ends[:1] + ends[1:2]), n)
    c = run(torch.zeros(1, n, dtype=torch.float64, device=device))
    check_logits(c, 1)
    c = c[0]
    step = max(1, min(n, _BASIS_BYTES // (8 * n)))
    cols = []
    for k in range(0, n, step):
        basis = torch.zeros(min(step, n - k), n, dtype=torch.float64, device=device)
        basis.diagonal(k).fill_(1.0)
        out = run(basis)
        check_logits(out, basis.shape[0])
        cols.append(out - c)
    a = torch.cat(cols).T.contiguous()  # (C, n)
    if check:
        probe = torch.rand(_PROBE_ROWS, n, generator=g, dtype=torch.float64).to(device)
        _require_affine(run(probe), probe @ a.T + c, n)
    return a, c


def affine_map_or_none(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, c) of ``model`` when it is affine (:func:`affine_parameters`, checked numerically), else None;
    models with a known non-linear layer are rejected without a forward pass."""
    if any(isinstance(m, _NONLINEAR_LAYERS) for m in model.modules()):
        return None
    try:
        return affine_parameters(model, input_shape)
    except ValueError:
        return None


def is_affine(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether ``model`` computes an affine map of its input (checked numerically when not obvious)."""
    if isinstance(model, nn.Sequential) and all(isinstance(m, _AFFINE_LAYERS) for m in model):
        return True
    return affine_map_or_none(model, input_shape) is not None


def _require_affine(got: torch.Tensor, expect: torch.Tensor, n: int) -> None:
    """Raise unless the model's outputs ``got`` equal what an affine map predicts, to float64 accuracy."""
    scale = got.abs().max().clamp_min(1.0)
    if not torch.allclose(got, expect, atol=1e-8 * float(scale) * n, rtol=1e-8):
        raise ValueError("the model is not affine (f(x) != A x + c on random inputs); exact margins need an affine model")


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval()


def _solve_halfspace(w: torch.Tensor, g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, norm: Norm,
                     *, sort: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """min ||delta||_p s.t. w^T delta >= g, lo <= delta <= hi (lo <= 0 <= hi), batched over rows.

    ``w``, ``lo``, ``hi``: (R, n); ``g``: (R,). Returns (norm (R,), delta (R, n)); rows whose box cannot
    reach ``g`` get norm inf and a zero delta. The step moves coordinate k by s_k >= 0 towards sign(w_k),
    at most cap_k (the room the box leaves):

    * l1: fractional knapsack, coordinates in decreasing |w| order (sorted);
    * l2 / linf: s_k = min(t * slope_k, cap_k) (slope |w_k| for l2, 1 for linf) for the smallest t whose
      gain sum_k |w_k| s_k reaches g. The gain is concave and piecewise linear in t, so Newton's method from
      t = 0 climbs to that t from below and stops exactly once no coordinate saturates between two iterates
      (a few elementwise sweeps in practice, cheaper than sorting the breakpoints of every row). Rows
      not settled after ``_NEWTON_ITERS`` sweeps, and every row with ``sort=True`` (the tests' reference),
      get t from the sorted breakpoints instead.
    """
    a = w.abs()
    cap = torch.where(w > 0, hi, torch.where(w < 0, -lo, torch.zeros_like(hi))).clamp_min(0)
    need = g.clamp_min(0)
    feasible = (a * cap).sum(1) >= need
    if w.shape[0] == 0:
        s = torch.zeros_like(a)
    elif norm is Norm.L1:
        s = _knapsack(a, cap, need)
    else:
        slope = torch.ones_like(a) if norm is Norm.LINF else a
        if sort:
            t = _sorted_level(a, cap, need, slope)
        else:
            t, settled = _newton_level(a, cap, need, slope, ~feasible | (need == 0))
            if not bool(settled.all()):
                rows = (~settled).nonzero().squeeze(1)
                t[rows] = _sorted_level(a[rows], cap[rows], need[rows], slope[rows])
        s = torch.minimum(t[:, None] * slope, cap)
    delta = torch.sign(w) * s
    value = batch_norm(delta, norm)
    value = torch.where(feasible, value, torch.full_like(value, float("inf")))
    delta = torch.where(feasible[:, None], delta, torch.zeros_like(delta))
    return value, delta


_NEWTON_ITERS = 12


def _newton_level(a: torch.Tensor, cap: torch.Tensor, need: torch.Tensor, slope: torch.Tensor,
                  settled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method on the concave piecewise-linear gain (see :func:`_solve_halfspace`): (t, settled)."""
    tiny = torch.finfo(a.dtype).tiny
    rate = a * slope
    # coordinates with no room (cap 0) or no effect (w 0) saturate at t = 0 and never count as free
    brk = torch.where((a > 0) & (cap > 0), cap / slope.clamp_min(tiny), torch.zeros_like(a))
    t = torch.zeros_like(need)
    rtol = 64 * torch.finfo(a.dtype).eps
    for _ in range(_NEWTON_ITERS):
        if bool(settled.all()):
            break
        gain = (a * torch.minimum(t[:, None] * slope, cap)).sum(1)
        slope_t = (rate * (brk > t[:, None])).sum(1)
        step = ((need - gain) / slope_t.clamp_min(tiny)).clamp_min(0)
        # the tangent of a concave gain lies above it: t + step never passes the solution
        t = torch.where(settled, t, t + step)
        settled = settled | (step <= rtol * t) | (slope_t <= 0)
    return t, settled


def _sorted_level(a: torch.Tensor, cap: torch.Tensor, need: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """The level t of :func:`_solve_halfspace` (l2 / linf) from the sorted breakpoints cap_k / slope_k."""
    tiny = torch.finfo(a.dtype).tiny
    active = (a > 0) & (cap > 0)
    brk = torch.where(active, cap / slope.clamp_min(tiny), torch.full_like(a, float("inf")))
    order = brk.argsort(dim=1)
    b_s = brk.gather(1, order)
    gain_sat = (a * cap).gather(1, order)
    rate = (a * slope * active).gather(1, order)
    prefix = torch.cumsum(gain_sat, 1) - gain_sat  # gain of coordinates saturated before breakpoint m
    remaining = rate.flip(1).cumsum(1).flip(1)  # rate of the not-yet-saturated coordinates
    finite_b = torch.where(torch.isfinite(b_s), b_s, torch.zeros_like(b_s))
    value_at = prefix + finite_b * remaining
    ok = (value_at >= need[:, None]) & torch.isfinite(b_s)
    ok = ok | ~torch.isfinite(b_s)  # past the last breakpoint nothing more can be gained; feasibility decides
    m = ok.float().argmax(1)
    pre_m = prefix.gather(1, m[:, None]).squeeze(1)
    rem_m = remaining.gather(1, m[:, None]).squeeze(1)
    return ((need - pre_m) / rem_m.clamp_min(tiny)).clamp_min(0)


def _knapsack(a: torch.Tensor, cap: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """l1 step of :func:`_solve_halfspace`: fill coordinates in decreasing |w| order until the gain is met."""
    order = a.argsort(dim=1, descending=True)
    a_s, c_s = a.gather(1, order), cap.gather(1, order)
    gain = torch.cumsum(a_s * c_s, 1)
    gain_before = gain - a_s * c_s
    full = gain <= need[:, None]  # saturated entirely
    part = (~full) & (gain_before < need[:, None])  # the single coordinate filled partially
    amount = torch.where(full, c_s, torch.zeros_like(c_s))
    partial = ((need[:, None] - gain_before) / a_s.clamp_min(torch.finfo(a.dtype).tiny)).clamp(min=0)
    amount = torch.where(part, torch.minimum(partial, c_s), amount)
    return torch.zeros_like(a).scatter(1, order, amount)


def _unboxed_delta(w: torch.Tensor, g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Minimal-norm delta with w^T delta = g and no box (the dual-norm extreme point of the ball)."""
    tiny = torch.finfo(w.dtype).tiny
    if norm is Norm.L2:
        return w * (g / (w * w).sum(1).clamp_min(tiny))[:, None]
    if norm is Norm.LINF:
        return torch.sign(w) * (g / w.abs().sum(1).clamp_min(tiny))[:, None]
    k = w.abs().argmax(1, keepdim=True)
    wk = w.gather(1, k)
    return torch.zeros_like(w).scatter(1, k, g[:, None] / torch.where(wk == 0, torch.ones_like(wk), wk))


def exact_affine_margin(a: torch.Tensor, c: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, lo: torch.Tensor,
                        hi: torch.Tensor, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact box-constrained margin of ``x`` (N, D) float64 and the class reached, solving only the classes
    that can win.

    The core of :func:`affine_input_margin` with a box (also used by the attack engine's affine shortcut).
    Pruning: the distance to a class's hyperplane without the box (eq. 2,
    :func:`~marginkit.margins.hyperplane_distances`) is a lower bound on its box-constrained distance, so the
    class with the smallest unboxed distance is solved first and the others only where their lower bound
    beats it. On the demo MNIST linear model this solves 1.7 (l2) / 3 (linf) of the 9 classes per sample.
    ``lo``/``hi``: (N, D) room in the box (lo <= 0 <= hi).
    """
    n = x.shape[0]
    z = x @ a.T + c
    lb = hyperplane_distances(z, a, norm, ref).clamp_min(0)
    lb = lb.scatter(1, ref[:, None], float("inf"))
    first = lb.argmin(1)
    rows = torch.arange(n, device=x.device)

    def solve(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        gap = z[i, ref[i]] - z[i, j]
        return _solve_halfspace(a[j] - a[ref[i]], gap, lo[i], hi[i], norm)[0]

    # all lower bounds infinite: no class can overtake even without the box (also keeps ``first`` != ref)
    margin = torch.where(torch.isfinite(lb.gather(1, first[:, None]).squeeze(1)), solve(rows, first), float("inf"))
    target = first.clone()
    cand = (lb < margin[:, None]).scatter(1, first[:, None], False)
    ci, cj = cand.nonzero(as_tuple=True)
    if ci.numel():
        val = solve(ci, cj)
        per = torch.full_like(margin, float("inf")).scatter_reduce(0, ci, val, "amin")
        better = per < margin
        win = better[ci] & (val == per[ci])
        # several classes can tie exactly; keep the lowest class index, as affine_input_margin does
        jbest = torch.full_like(target, a.shape[0]).scatter_reduce(0, ci[win], cj[win], "amin")
        margin = torch.where(better, per, margin)
        target = torch.where(better, jbest, target)
    target = torch.where(torch.isfinite(margin), target, torch.full_like(target, -1))
    return margin, target


def _prepare(model: nn.Module | tuple[torch.Tensor, torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor | None,
             norm: Norm | str) -> tuple[Norm, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    norm = as_norm(norm)
    check_inputs(inputs)
    a, c = model if isinstance(model, tuple) else affine_parameters(model, tuple(inputs.shape[1:]))
    x = inputs.reshape(inputs.shape[0], -1).to(a.device, torch.float64)
    if x.shape[1] != a.shape[1]:
        raise ValueError(f"inputs have {x.shape[1]} features but the affine map expects {a.shape[1]}")
    logits = x @ a.T + c
    if labels is not None:
        labels = check_labels(labels, x.shape[0], a.shape[0]).to(a.device)
    ref = logits.argmax(1) if labels is None else labels
    return norm, a.to(torch.float64), c.to(torch.float64), x, logits, ref


def affine_input_margin(
    model: nn.Module | tuple[torch.Tensor, torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    norm: Norm | str = "l2",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    return_delta: bool = False,
    chunk_size: int = 64,
) -> AffineMargin:
    """Exact d_in of an affine model (an ``nn.Module`` that is affine, or its ``(A, c)``), batched.

    The reference class is the prediction (default) or ``labels``; a sample the model already gets
    "wrong" relative to its label has margin 0. ``bounds=None`` drops the box (closed form, eq. 2).
    Computed in float64.
    """
    norm, a, c, x, logits, ref = _prepare(model, inputs, labels, norm)
    n_samples, n_classes = logits.shape
    if bounds is None:
        per_class = hyperplane_distances(logits, a, norm, ref).clamp_min(0)
        margins, target = per_class.min(1)
        delta = None
        if return_delta:
            w = a[target] - a[ref]
            g = (logits.gather(1, ref[:, None]) - logits.gather(1, target[:, None])).squeeze(1).clamp_min(0)
            delta = _unboxed_delta(w, g, norm).reshape(inputs.shape)
        target = torch.where(torch.isfinite(margins), target, torch.full_like(target, -1))
        return AffineMargin(margins, target, norm, None, delta)
    lo_b, hi_b = bounds
    margins = torch.empty(n_samples, dtype=torch.float64, device=a.device)
    targets = torch.empty(n_samples, dtype=torch.long, device=a.device)
    deltas = torch.zeros_like(x) if return_delta else None
    for s in range(0, n_samples, chunk_size):
        xs, rs = x[s : s + chunk_size], ref[s : s + chunk_size]
        lo, hi = (lo_b - xs).clamp_max(0), (hi_b - xs).clamp_min(0)
        best, tgt = exact_affine_margin(a, c, xs, rs, lo, hi, norm)
        margins[s : s + len(xs)] = best
        targets[s : s + len(xs)] = tgt
        if deltas is not None:
            ok = torch.isfinite(best)
            if ok.any():
                zs = logits[s : s + len(xs)][ok]
                gap = zs.gather(1, rs[ok][:, None]).squeeze(1) - zs.gather(1, tgt[ok][:, None]).squeeze(1)
                _, d = _solve_halfspace(a[tgt[ok]] - a[rs[ok]], gap, lo[ok], hi[ok], norm)
                deltas[s : s + len(xs)][ok] = d
    return AffineMargin(margins, targets, norm, (lo_b, hi_b), deltas.reshape(inputs.shape) if deltas is not None else None)


def affine_input_margin_solver(
    model: nn.Module | tuple[torch.Tensor, torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    norm: Norm | str = "l2",
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> AffineMargin:
    """The same exact margins from maintained solvers, one small program per (sample, class).

    linf and l1 are linear programs solved by HiGHS (``scipy.optimize.linprog``); l2 is a convex QP
    solved by Clarabel through cvxpy. Slow (a Python loop over programs): it is the independent check
    of :func:`affine_input_margin`, not the hot path.
    """
    import cvxpy as cp
    from scipy.optimize import linprog

    norm, a, c, x, logits, ref = _prepare(model, inputs, labels, norm)
    A, X, L, R = a.cpu().numpy(), x.cpu().numpy(), logits.cpu().numpy(), ref.cpu().numpy()
    n_samples, n_classes = L.shape
    n = A.shape[1]
    margins = np.full(n_samples, np.inf)
    targets = np.full(n_samples, -1)
    for s in range(n_samples):
        i = R[s]
        for j in range(n_classes):
            if j == i:
                continue
            w = A[j] - A[i]
            g = L[s, i] - L[s, j]
            if g <= 0:
                val = 0.0
            else:
                lo = np.full(n, -np.inf) if bounds is None else bounds[0] - X[s]
                hi = np.full(n, np.inf) if bounds is None else bounds[1] - X[s]
                val = _solve_one(w, g, lo, hi, norm, linprog, cp)
            if val < margins[s]:
                margins[s], targets[s] = val, j
    dev = a.device
    return AffineMargin(torch.as_tensor(margins, device=dev), torch.as_tensor(targets, device=dev), norm, bounds)


def _solve_one(w, g, lo, hi, norm, linprog, cp) -> float:
    n = w.shape[0]
    if norm is Norm.L2:
        d = cp.Variable(n)
        cons = [w @ d >= g]
        if np.isfinite(lo).all():
            cons += [d >= lo, d <= hi]
        prob = cp.Problem(cp.Minimize(cp.sum_squares(d)), cons)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        if prob.status in ("infeasible", "infeasible_inaccurate"):
            return float("inf")
        return float(np.linalg.norm(d.value))
    if norm is Norm.LINF:
        # variables (delta, t): min t s.t. -w^T delta <= -g, delta - t <= 0, -delta - t <= 0
        cost = np.r_[np.zeros(n), 1.0]
        a_ub = np.vstack([np.r_[-w, 0.0], np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)]])
        b_ub = np.r_[-g, np.zeros(2 * n)]
        bnds = [(None if not np.isfinite(l) else l, None if not np.isfinite(h) else h) for l, h in zip(lo, hi)] + [(0, None)]
    else:
        # l1: delta = p - m with p, m >= 0; min sum(p + m)
        cost = np.ones(2 * n)
        a_ub = np.r_[-w, w][None, :]
        b_ub = np.array([-g])
        bnds = [(0, None if not np.isfinite(h) else max(h, 0.0)) for h in hi] + [(0, None if not np.isfinite(l) else max(-l, 0.0)) for l in lo]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bnds, method="highs")
    if res.status == 2:
        return float("inf")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on an affine margin LP: {res.message}")
    return float(res.fun)
