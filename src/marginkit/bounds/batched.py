"""The ReLU collision descent (Algorithms 1/2, appendix C/D) for many pairs at once, l2 without a box.

Each step of the descent solves, for every pair still running, the cone program of its activation polytope

    min t  s.t.  ||beta_u|| <= t, ||beta_v|| <= t,  M_E x = e  (features equal),  G x + g >= 0  (signs),

x = (beta_u, beta_v). Its optimum is characterised by KKT conditions that a batched active-set method can
meet exactly instead of an interior-point solver per pair:

* for a set S of sign rows held at equality, the optimum with weights (w, 1 - w) on the two sides is the
  weighted least-norm point x(w) = W^-1 M^T nu, nu = (M W^-1 M^T)^-1 r (M: the equality rows and the rows
  in S); one generalised eigendecomposition of (M_u M_u^T, M_v M_v^T) per pair gives ||beta_u(w)|| and
  ||beta_v(w)|| for every w in O(rows), so the w with ||beta_u|| = ||beta_v|| (the epigraph's
  multipliers mu_u = w, mu_v = 1 - w) is found by bisection for the whole batch at once;
* S is updated like a primal-dual active-set method: violated sign rows join, rows with negative
  multipliers leave, until no pair changes (a few rounds: at the optimum only 0-10 of the 128-384 sign
  rows of the demo MLP are active);
* a pair's answer is accepted only when it satisfies the KKT conditions of the cone program to a tight
  tolerance (primal feasibility, multipliers >= 0, both norms equal to t where both weights are positive)
  AND its active rows are linearly independent (then the multipliers are unique). It is then THE optimum
  of the cone program, and nu_S / t are exactly the duals an interior-point solver reports for the sign
  rows (section 3.2's flip rule reads them);
* with dependent active rows the optimum is still exact but its sign duals form a face; the solver takes
  the face's analytic centre (what an interior-point method converges to). Where the face is unbounded (a
  ReLU's sign row implied by the feature equality: the unit sits at zero on the whole feasible set, so its
  multiplier can grow without limit, common on adversarially trained networks) the moving multipliers are
  capped at the dual scale first. Such a multiplier is positive, as an interior-point solver reports it,
  so the flip rule flips the pinned unit either way;
* every other pair (no interior on its dual face, no convergence) is solved by Clarabel for that step.

Every collision is still verified on the float64 network before its budget is used
(:func:`~marginkit.bounds.collisions.verify_collisions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BatchSolution", "solve_polytopes"]


@dataclass
class BatchSolution:
    """Per pair: the primal (beta_u, beta_v), the value t, the sign-row duals (nonnegative, cone-program
    scaling) and whether the pair's KKT certificate held (``ok``; False: solve it another way)."""

    bu: torch.Tensor
    bv: torch.Tensor
    t: torch.Tensor
    zu: torch.Tensor
    zv: torch.Tensor
    ok: torch.Tensor
    rounds: int
    active_u: torch.Tensor | None = None
    active_v: torch.Tensor | None = None


def _weights_for_balance(lam: torch.Tensor, rho2: torch.Tensor, iters: int = 56) -> torch.Tensor:
    """The w in (0, 1) with ||beta_u(w)|| = ||beta_v(w)||, per pair, by bisection on the logit of w.

    With h_i(w) = lam_i / w + (1 - lam_i) / (1 - w): ||beta_u||^2 = sum lam_i rho_i^2 / (w h_i)^2 and
    ||beta_v||^2 = sum (1 - lam_i) rho_i^2 / ((1 - w) h_i)^2; their difference decreases in w. Where it keeps
    one sign on the whole interval the optimum sits at an end (one side's norm below t)."""
    lo = torch.full(lam.shape[:1], -40.0, dtype=lam.dtype)
    hi = torch.full(lam.shape[:1], 40.0, dtype=lam.dtype)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        w = torch.sigmoid(mid)[:, None]
        h = lam / w + (1 - lam) / (1 - w)
        du = (lam * rho2 / (w * h) ** 2).sum(1)
        dv = ((1 - lam) * rho2 / ((1 - w) * h) ** 2).sum(1)
        up = du > dv  # u side too long: more weight on u
        lo = torch.where(up, mid, lo)
        hi = torch.where(up, hi, mid)
    return torch.sigmoid(0.5 * (lo + hi))


def _solve_active(Mu: torch.Tensor, Mv: torch.Tensor, r: torch.Tensor, mask: torch.Tensor, ridge: float = 1e-13):
    """Weighted least-norm points for row sets given by ``mask`` (B, K): returns beta_u, beta_v, nu, w and a
    conditioning flag (False where the kept rows are numerically dependent)."""
    B, K, _ = Mu.shape
    m = mask.to(Mu.dtype)
    Mu, Mv, r = Mu * m[..., None], Mv * m[..., None], r * m
    Au, Av = Mu @ Mu.transpose(1, 2), Mv @ Mv.transpose(1, 2)
    S = Au + Av
    scale = S.diagonal(dim1=1, dim2=2).amax(1).clamp_min(1e-300)
    eye = torch.eye(K, dtype=Mu.dtype)
    S = S + eye * (1 - m)[:, :, None] + ridge * scale[:, None, None] * eye
    C, info = torch.linalg.cholesky_ex(S)
    good = info == 0
    C = torch.where(good[:, None, None], C, eye.expand(B, K, K))
    Ci_Au = torch.linalg.solve_triangular(C, Au, upper=False)
    T = torch.linalg.solve_triangular(C, Ci_Au.transpose(1, 2), upper=False)  # C^-1 Au C^-T (symmetric)
    lam, Q = torch.linalg.eigh(0.5 * (T + T.transpose(1, 2)))
    lam = lam.clamp(0.0, 1.0)
    rho = (Q.transpose(1, 2) @ torch.linalg.solve_triangular(C, r[..., None], upper=False))[..., 0]
    w = _weights_for_balance(lam, rho ** 2)
    h = lam / w[:, None] + (1 - lam) / (1 - w[:, None])
    nu = torch.linalg.solve_triangular(C.transpose(1, 2), (Q @ (rho / h)[..., None]), upper=True)[..., 0] * m
    bu = (Mu.transpose(1, 2) @ nu[..., None])[..., 0] / w[:, None]
    bv = (Mv.transpose(1, 2) @ nu[..., None])[..., 0] / (1 - w[:, None])
    # dependent kept rows: the null space of M^T (eigenvectors of the un-ridged Gram with ~0 eigenvalue).
    # Screen first: trace(S^-1) = ||C^-1||_F^2 >= 1 / lambda_min, so a pair below 1e8 / scale has
    # lambda_min > 1e-8 scale (independent rows) and needs no eigendecomposition.
    Ci = torch.linalg.solve_triangular(C, eye.expand(B, K, K), upper=False)
    suspect = (Ci.square().sum((1, 2)) * scale > 1e8) | ~good
    nullity = torch.zeros(B, dtype=torch.long)
    evec = torch.zeros(B, K, K, dtype=Mu.dtype)
    if suspect.any():
        sel = torch.nonzero(suspect).ravel()
        ev_s, evec_s = torch.linalg.eigh(S[sel] - ridge * scale[sel, None, None] * eye)
        nullity[sel] = (ev_s <= 1e-9 * scale[sel, None]).sum(1)
        evec[sel] = evec_s
    evec = evec * m[:, :, None]
    in_null = (torch.arange(K)[None] < nullity[:, None]).to(nu.dtype)
    nu = nu - (evec @ ((evec.transpose(1, 2) @ nu[..., None])[..., 0] * in_null)[..., None])[..., 0]  # min-norm
    return bu, bv, nu, w, good, nullity, evec


def _newton_centre(A: np.ndarray, c0: np.ndarray, alpha: np.ndarray, cap: float, limit: float) -> np.ndarray | None:
    """Damped Newton method on -sum log(c0 + A alpha) (and -sum log(cap - c0 - A alpha) for a finite cap)
    from a strictly interior ``alpha``; None when an iterate leaves the ball of radius ``limit`` (the
    barrier has no minimum: an unbounded face) or a step fails."""
    q = A.shape[1]
    upper = np.isfinite(cap)

    def inside(a: np.ndarray) -> bool:
        val = c0 + A @ a
        return bool((val > 0).all() and (not upper or (cap - val > 0).all()))

    for _ in range(60):
        val = c0 + A @ alpha
        g = -(A / val[:, None]).sum(0)
        H = (A.T * (1.0 / val ** 2)) @ A
        if upper:
            g = g + (A / (cap - val)[:, None]).sum(0)
            H = H + (A.T * (1.0 / (cap - val) ** 2)) @ A
        try:
            step = np.linalg.solve(H + 1e-14 * np.trace(H) * np.eye(q), -g)
        except np.linalg.LinAlgError:
            return None
        dec = float(-g @ step)
        tstep = 1.0
        while not inside(alpha + tstep * step):
            tstep *= 0.5
            if tstep < 1e-12:
                return None
        alpha = alpha + tstep * step
        if np.abs(alpha).max() > limit:
            return None
        if dec < 1e-20:
            break
    return alpha


def _dual_center_np(nu0: np.ndarray, N: np.ndarray, sign: np.ndarray, unit: float) -> np.ndarray | None:
    """Several dependencies (nullity q >= 2): the analytic centre of the optimal dual face
    {nu0 + N alpha : sign rows >= 0} by a phase-1 LP (HiGHS) and a damped Newton method on sum log of the
    moving sign rows. An unbounded face (a sign row implied by the others, at zero on the whole feasible set;
    the Newton iterates run away) has no centre: its moving multipliers are capped at the largest value of the
    face's lowest point plus ``unit`` (the dual scale) and the capped face's centre is taken. None when the
    face has no interior on the moving rows (then the program goes to Clarabel)."""
    from scipy.optimize import linprog

    q = N.shape[1]
    moving = sign & (np.abs(N).max(1) > 1e-9)
    fixed = sign & ~moving
    unit = max(unit, float(np.abs(nu0[fixed]).max(initial=0.0)))
    scale = max(1.0, float(np.abs(nu0).max()), unit)
    if (nu0[fixed] < -1e-9 * scale).any():
        return None
    if not moving.any():
        return nu0
    A, c0 = N[moving], nu0[moving]
    box = [(-1e3 * scale, 1e3 * scale)] * q
    # phase 1: max s  s.t.  c0 + A alpha >= s, s <= scale
    res = linprog(np.r_[np.zeros(q), -1.0], A_ub=np.c_[-A, np.ones(len(c0))], b_ub=c0, bounds=box + [(None, scale)],
                  method="highs")
    if res.status != 0 or res.x[-1] <= 1e-9 * scale:
        return None
    a0 = res.x[:q]
    # far out (the LP stopped at its box) or Newton running away: a ray
    alpha = _newton_centre(A, c0, a0, np.inf, 1e2 * scale) if np.abs(a0).max() <= 1e2 * scale else None
    if alpha is None:  # cap the multipliers above the face's lowest point
        low = linprog(A.sum(0), A_ub=-A, b_ub=c0, bounds=box, method="highs")
        if low.status != 0:
            return None
        v_low, v0 = c0 + A @ low.x, c0 + A @ a0
        cap = float(v_low.max()) + unit
        # a strictly interior start: between the lowest point and a0 (every multiplier > 0 there), below the cap
        tau = min(1.0, 0.5 * unit / max(float((v0 - v_low).max()), 1e-300))
        alpha = _newton_centre(A, c0, low.x + tau * (a0 - low.x), cap, 1e3 * scale)
        if alpha is None:
            return None
    return nu0 + N @ alpha


def _analytic_center(nu: torch.Tensor, n: torch.Tensor, sign: torch.Tensor, unit: torch.Tensor, iters: int = 100):
    """Multipliers of a rank-deficient active set: the optimal duals are nu + alpha n (one null vector n);
    the sign rows need nu + alpha n >= 0. An interior-point solver converges to the analytic centre of that
    segment (max sum log of the sign rows that move with alpha). A half-line (the moving rows all grow the
    same way: a sign row implied by the others, at zero on the whole feasible set, whose multiplier is
    unbounded) is capped where its largest moving multiplier exceeds the smallest feasible one by ``unit``
    (the dual scale, per pair), and the centre of the capped segment is taken. Returns (alpha, usable):
    usable says the segment is non-empty."""
    moving = sign & (n.abs() > 1e-9)
    ratio = -nu / torch.where(moving, n, 1.0)
    inf = torch.tensor(float("inf"), dtype=nu.dtype)
    lo = torch.where(moving & (n > 0), ratio, -inf).amax(1)
    hi = torch.where(moving & (n < 0), ratio, inf).amin(1)
    fixed_ok = (torch.where(sign & ~moving, nu, 0.0) >= -1e-9 * nu.abs().amax(1, keepdim=True).clamp_min(1.0)).all(1)
    any_moving = moving.any(1)
    unit = torch.maximum(unit, torch.where(sign & ~moving, nu.abs(), 0.0).amax(1))
    # half-lines: cap every moving multiplier at its largest value at the feasible end plus `unit`
    ray_up = torch.isfinite(lo) & ~torch.isfinite(hi)
    ray_dn = ~torch.isfinite(lo) & torch.isfinite(hi)
    end = torch.where(ray_up, lo, torch.where(ray_dn, hi, 0.0))
    cap = torch.where(moving, nu + end[:, None] * n, -inf).amax(1) + unit
    ratio_cap = (cap[:, None] - nu) / torch.where(moving, n, 1.0)
    hi = torch.where(ray_up, torch.where(moving & (n > 0), ratio_cap, inf).amin(1), hi)
    lo = torch.where(ray_dn, torch.where(moving & (n < 0), ratio_cap, -inf).amax(1), lo)
    capped = (ray_up | ray_dn)[:, None] & moving
    usable = ((torch.isfinite(lo) & torch.isfinite(hi) & (lo <= hi)) | ~any_moving) & fixed_ok
    a = torch.where(usable & any_moving, lo, 0.0)
    b = torch.where(usable & any_moving, hi, 0.0)
    any_capped = bool(capped.any())
    for _ in range(iters):
        mid = 0.5 * (a + b)
        val = nu + mid[:, None] * n
        grad = torch.where(moving, n / torch.where(moving, val, 1.0), 0.0).sum(1)
        if any_capped:
            grad = grad - torch.where(capped, n / torch.where(capped, cap[:, None] - val, 1.0), 0.0).sum(1)
        a, b = torch.where(grad > 0, mid, a), torch.where(grad > 0, b, mid)
    return 0.5 * (a + b), usable


def solve_polytopes(Eu: torch.Tensor, Ev: torch.Tensor, e: torch.Tensor, eq_keep: torch.Tensor,
                    Gu: torch.Tensor, gu: torch.Tensor, Gv: torch.Tensor, gv: torch.Tensor, *,
                    max_rounds: int = 12, tol: float = 1e-9, strict: bool = False,
                    init_u: torch.Tensor | None = None, init_v: torch.Tensor | None = None,
                    diag: dict | None = None) -> BatchSolution:
    """The cone programs of B activation polytopes (module docstring), all float64 tensors:
    ``Eu, Ev`` (B, k, d), ``e`` (B, k) for E_u beta_u - E_v beta_v = e (rows where ``eq_keep`` is False are
    absent), ``Gu`` (B, mu, d), ``gu`` (B, mu), ``Gv``, ``gv`` for G beta + g >= 0 on each side.

    ``strict`` certifies only optima that are unique with unique sign duals (independent active
    rows, both weights positive): then any exact solver returns the same answer and the descent takes the
    per-pair engine's path. Without it (default), a degenerate optimum is certified with the analytic centre of its
    dual face (what an interior-point method converges to) and the minimum-norm side where one weight is 0.
    """
    B, k, d = Eu.shape
    mu, mv = Gu.shape[1], Gv.shape[1]
    if not (mu and mv):
        raise ValueError("solve_polytopes needs sign rows on both sides (a chain with a ReLU stage)")
    dtype = Eu.dtype
    Eu0, Ev0, e0, keep0 = Eu, Ev, e, eq_keep
    if k:
        # the feature equality's rows are dependent at deeper layers (rank <= the active units of earlier
        # stages): replace them by an orthonormal basis of their row space (same constraint set)
        Mfull = torch.cat([Eu, -Ev], 2) * eq_keep[..., None]
        # M M^T = U diag(sig^2) U^T: orthonormal rows U^T M / sig of the row space (rank: sig > 1e-7 max sig;
        # a nearly dependent row dropped here shows up in the residual check on the original rows)
        sig2, Uu = torch.linalg.eigh(Mfull @ Mfull.transpose(1, 2))
        eq_keep = sig2 > 1e-14 * sig2[:, -1:].clamp_min(1e-300)
        sig = torch.where(eq_keep, sig2, 1.0).sqrt()
        Vh = (Uu.transpose(1, 2) @ Mfull) / sig[..., None] * eq_keep[..., None]
        Eu, Ev = Vh[..., :d], -Vh[..., d:]  # orthonormal rows: a well-conditioned system
        e = (Uu.transpose(1, 2) @ (e * keep0)[..., None])[..., 0] / sig * eq_keep
        k = Eu.shape[1]
    # the active set starts empty or from a guess (the previous descent step's); a wrong guess only costs rounds
    active_u = torch.zeros(B, mu, dtype=torch.bool) if init_u is None else init_u.clone()
    active_v = torch.zeros(B, mv, dtype=torch.bool) if init_v is None else init_v.clone()
    done = torch.zeros(B, dtype=torch.bool)
    out_bu = torch.zeros(B, d, dtype=dtype)
    out_bv = torch.zeros(B, d, dtype=dtype)
    out_t = torch.full((B,), float("nan"), dtype=dtype)
    out_zu = torch.zeros(B, mu, dtype=dtype)
    out_zv = torch.zeros(B, mv, dtype=dtype)
    ok = torch.zeros(B, dtype=torch.bool)
    fin_u, fin_v = torch.zeros(B, mu, dtype=torch.bool), torch.zeros(B, mv, dtype=torch.bool)
    gscale = torch.maximum(Gu.abs().flatten(1).amax(1) if mu else torch.zeros(B, dtype=dtype),
                           Gv.abs().flatten(1).amax(1) if mv else torch.zeros(B, dtype=dtype)).clamp_min(1.0)
    escale = torch.maximum(Eu0.abs().flatten(1).amax(1), Ev0.abs().flatten(1).amax(1)).clamp_min(1.0)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        idx = torch.nonzero(~done).ravel()
        if len(idx) == 0:
            break
        au, av = active_u[idx], active_v[idx]
        n_act = int((au.sum(1) + av.sum(1)).max()) if len(idx) else 0
        # rows: k equality rows, then up to n_act active sign rows gathered per pair (padding masked)
        order_u = torch.argsort((~au).to(torch.int8), dim=1, stable=True)
        order_v = torch.argsort((~av).to(torch.int8), dim=1, stable=True)
        cu, cv = au.sum(1), av.sum(1)
        slots = torch.arange(n_act)
        # slot s < cu: u row order_u[s]; cu <= s < cu + cv: v row order_v[s - cu]
        is_u = slots[None] < cu[:, None]
        is_v = (slots[None] >= cu[:, None]) & (slots[None] < (cu + cv)[:, None])
        ju = order_u.gather(1, slots[None].clamp_max(mu - 1).expand(len(idx), n_act))
        jv = order_v.gather(1, (slots[None] - cu[:, None]).clamp(0, mv - 1))
        rows_u = [Eu[idx]]
        rows_v = [-Ev[idx]]
        rhs = [e[idx]]
        mask = [eq_keep[idx]]
        if n_act:
            Gu_i, Gv_i = Gu[idx], Gv[idx]
            su = Gu_i.gather(1, ju[..., None].expand(-1, -1, d))
            sv = Gv_i.gather(1, jv[..., None].expand(-1, -1, d))
            rows_u.append(torch.where(is_u[..., None], su, 0.0))
            rows_v.append(torch.where(is_v[..., None], sv, 0.0))
            ru = -gu[idx].gather(1, ju)
            rv = -gv[idx].gather(1, jv)
            rhs.append(torch.where(is_u, ru, torch.where(is_v, rv, 0.0)))
            mask.append(is_u | is_v)
        Mu, Mv = torch.cat(rows_u, 1), torch.cat(rows_v, 1)
        r, m = torch.cat(rhs, 1), torch.cat(mask, 1)
        bu, bv, nu, w, good, nullity, evec = _solve_active(Mu, Mv, r, m)
        nvec = evec[:, :, 0]
        # the dual scale that caps an unbounded dual face: t (a multiplier of 1 in the flip rule's units nu / t);
        # the centring raises it to the largest fixed sign multiplier, so a capped multiplier neither hides
        # nor inflates the rule's relative threshold
        unit = torch.maximum(bu.norm(dim=1), bv.norm(dim=1))
        cond = good & (nullity == 0)
        one = good & (nullity == 1) & (n_act > 0)
        if one.any():  # one dependency (typically a unit at zero on both sides): the analytic-centre duals
            sign_rows = torch.zeros_like(m)
            sign_rows[:, k:] = m[:, k:]
            alpha, usable = _analytic_center(nu[one], nvec[one], sign_rows[one], unit[one])
            nu_one = nu[one] + alpha[:, None] * nvec[one]
            nu[one] = torch.where(usable[:, None], nu_one, nu[one])
            sel = torch.nonzero(one).ravel()
            cond[sel[usable]] = True
        for p in torch.nonzero(good & (nullity >= 2) & (n_act > 0)).ravel().tolist():
            q = int(nullity[p])
            sign_np = m[p].numpy().copy()
            sign_np[:k] = False
            centre = _dual_center_np(nu[p].numpy(), evec[p, :, :q].numpy(), sign_np, float(unit[p]))
            if centre is not None:
                nu[p] = torch.from_numpy(centre)
                cond[p] = True
        t = torch.maximum(bu.norm(dim=1), bv.norm(dim=1))
        su_slack = (Gu[idx] @ bu[..., None])[..., 0] + gu[idx] if mu else torch.zeros(len(idx), 0, dtype=dtype)
        sv_slack = (Gv[idx] @ bv[..., None])[..., 0] + gv[idx] if mv else torch.zeros(len(idx), 0, dtype=dtype)
        # multipliers of the active rows back on the full sign rows (cone-program scaling: nu / t)
        zu = torch.zeros(len(idx), mu, dtype=dtype)
        zv = torch.zeros(len(idx), mv, dtype=dtype)
        if n_act:
            nu_s = nu[:, k:]
            zu.scatter_add_(1, ju, torch.where(is_u, nu_s, 0.0))
            zv.scatter_add_(1, jv, torch.where(is_v, nu_s, 0.0))
        tt = t.clamp_min(1e-300)[:, None]
        zu, zv = zu / tt, zv / tt
        feas_tol = tol * gscale[idx] * (1 + t)
        viol_u = su_slack < -feas_tol[:, None]
        viol_v = sv_slack < -feas_tol[:, None]
        zmax = torch.maximum(zu.abs().amax(1) if mu else torch.zeros(len(idx), dtype=dtype),
                             zv.abs().amax(1) if mv else torch.zeros(len(idx), dtype=dtype)).clamp_min(1.0)
        neg_u = au & (zu < -1e-9 * zmax[:, None])
        neg_v = av & (zv < -1e-9 * zmax[:, None])
        eq_res = ((Eu0[idx] @ bu[..., None] - Ev0[idx] @ bv[..., None])[..., 0] - e0[idx]).abs()
        eq_res = torch.where(keep0[idx], eq_res, 0.0).amax(1) if k else torch.zeros(len(idx), dtype=dtype)
        interior = (w > 1e-7) & (w < 1 - 1e-7)
        balanced = ~interior | ((bu.norm(dim=1) - bv.norm(dim=1)).abs() <= 1e-8 * (1 + t))
        kkt = (~viol_u.any(1) & ~viol_v.any(1) & ~neg_u.any(1) & ~neg_v.any(1) & cond & balanced
               & (eq_res <= tol * escale[idx] * (1 + t) * 10) & torch.isfinite(t))
        # weakly active rows (tight but outside the set, multiplier 0): the dual face may be larger than the
        # point found (e.g. a last-layer unit at zero on both sides, the flip case of section 3.2); hold them
        # as equalities too (the primal stays put) so the duals become the face's analytic centre
        tight_tol = 1e-8 * gscale[idx] * (1 + t)
        weak_u = kkt[:, None] & ~au & (su_slack.abs() <= tight_tol[:, None])
        weak_v = kkt[:, None] & ~av & (sv_slack.abs() <= tight_tol[:, None])
        weak = weak_u.any(1) | weak_v.any(1)
        kkt = kkt & ~weak
        viol_u, viol_v = viol_u | weak_u, viol_v | weak_v
        changed = viol_u.any(1) | viol_v.any(1) | neg_u.any(1) | neg_v.any(1)
        unique = (nullity == 0) & interior
        if diag is not None:
            diag["non-unique"] = diag.get("non-unique", 0) + int((kkt & ~unique).sum())
            diag["endpoint"] = diag.get("endpoint", 0) + int((kkt & ~interior).sum())
        finished = kkt | ~changed  # a dependent set whose duals cannot be signed drops its negative rows
        if diag is not None:
            bad = finished & ~kkt
            for name, flag in (("dependent", ~cond), ("equality", eq_res > tol * escale[idx] * (1 + t) * 10),
                               ("balance", ~balanced), ("feasibility", viol_u.any(1) | viol_v.any(1)),
                               ("dual-sign", neg_u.any(1) | neg_v.any(1))):
                diag[name] = diag.get(name, 0) + int((bad & flag).sum())
        fin = idx[finished]
        fin_u[fin], fin_v[fin] = au[finished], av[finished]
        out_bu[fin], out_bv[fin], out_t[fin] = bu[finished], bv[finished], t[finished]
        out_zu[fin], out_zv[fin] = zu[finished].clamp_min(0.0), zv[finished].clamp_min(0.0)
        ok[fin] = (kkt & unique)[finished] if strict else kkt[finished]
        done[fin] = True
        go = ~finished
        active_u[idx[go]] = (au[go] & ~neg_u[go]) | viol_u[go]
        active_v[idx[go]] = (av[go] & ~neg_v[go]) | viol_v[go]
    if diag is not None:
        diag["unconverged"] = diag.get("unconverged", 0) + int((~done).sum())
    return BatchSolution(out_bu, out_bv, out_t, out_zu, out_zv, ok, rounds, fin_u, fin_v)


def program_tensors(mats: list[tuple[torch.Tensor, torch.Tensor]], relu: list[bool], L1_full: torch.Tensor,
                    final_rows: torch.Tensor | None, U: torch.Tensor, V: torch.Tensor, PU: list, PV: list):
    """Appendix C/D for B pairs at once (the batched twin of ``collisions._program_data``): the sign rows
    (G, g) of every ReLU stage per side under patterns ``PU``/``PV`` ((B, n_i) 0/1 tensors per stage, None
    for affine stages) and the feature equality (E_u, E_v, e, rows kept). ``mats`` are the (L_i, k_i) of the
    search space (L_1 already times the row basis V1), ``L1_full`` the first layer on the full input."""
    B = U.shape[0]
    k1 = mats[0][1]

    def pieces(X: torch.Tensor, P: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
        A = mats[0][0].expand(B, -1, -1)
        c = X @ L1_full.T + k1
        out = [(A, c)]
        for i in range(1, len(mats)):
            if relu[i - 1]:
                s = P[i - 1]
                A, c = A * s[..., None], c * s
            L, kk = mats[i]
            A, c = L @ A, c @ L.T + kk
            out.append((A, c))
        return out

    pu, pv = pieces(U, PU), pieces(V, PV)
    Gu, gu, Gv, gv, stage_u, stage_v = [], [], [], [], [], []
    for i, is_relu in enumerate(relu):
        if not is_relu:
            continue
        (Au, cu), (Av, cv) = pu[i], pv[i]
        su, sv = 2 * PU[i] - 1, 2 * PV[i] - 1
        Gu.append(Au * su[..., None])
        gu.append(su * cu)
        Gv.append(Av * sv[..., None])
        gv.append(sv * cv)
        stage_u.append(cu.shape[1])
        stage_v.append(cv.shape[1])
    (Au, cu), (Av, cv) = pu[-1], pv[-1]
    if relu[-1]:
        s = PU[-1]
        Eu, Ev, e = Au * s[..., None], Av * s[..., None], s * (cv - cu)
        keep = s > 0
    else:
        assert final_rows is not None and len(mats) > 1
        (Pu_, qu), (Pv_, qv) = pu[-2], pv[-2]
        s_u, s_v = PU[-2], PV[-2]
        Eu, Ev = final_rows @ (Pu_ * s_u[..., None]), final_rows @ (Pv_ * s_v[..., None])
        e = (qv * s_v - qu * s_u) @ final_rows.T
        keep = torch.ones(e.shape, dtype=torch.bool)
    return (Eu, Ev, e, keep, torch.cat(Gu, 1), torch.cat(gu, 1), torch.cat(Gv, 1), torch.cat(gv, 1),
            stage_u, stage_v)


def descent_batched(geo, u: np.ndarray, v: np.ndarray, *, max_iter: int, dual_tol: float, atol: float, rtol: float,
                    stop: np.ndarray, fallback, initial_patterns, norms, verify, chunk: int | None = None):
    """Algorithms 1/2 for all pairs (u_i, v_i) in lock step, chunk by chunk: each step solves every running
    pair's cone program with :func:`solve_polytopes`; pairs whose KKT certificate fails are solved by
    ``fallback`` (a per-pair Clarabel program: ``set(u, v, pu, pv)``, ``solve()``, ``primal()``,
    ``duals(i)``). Same flip rule, termination, verification and outputs as ``collisions._descent_one``;
    ``initial_patterns``, ``norms`` and ``verify`` are that module's midpoint patterns, norm and float64
    collision check. Returns (budget, delta_u, delta_v, programs, status, fallbacks)."""
    _initial_patterns, _norms, verify_collisions = initial_patterns, norms, verify

    chain = geo.chain
    relu = [st.relu for st in chain.stages]
    nst = len(relu)
    last = nst - 1
    # arrays shipped to a Ray worker arrive read-only; a copy keeps torch from aliasing them
    mats = [(torch.as_tensor(np.array(L)), torch.as_tensor(np.array(k))) for L, k in geo.mats]
    L1 = torch.as_tensor(np.array(chain.stages[0].dense()[0]))
    fr = None if geo.final_rows is None else torch.as_tensor(np.array(geo.final_rows))
    P = len(u)
    if chunk is None:  # pairs per lock-step batch: about 400 MB of float64 program data at most
        rows = sum(st.out_dim for st in chain.stages if st.relu) + chain.stages[-1].out_dim
        chunk = int(np.clip(4e8 / (8.0 * 6 * rows * geo.dim), 16, 512))
    budget = np.empty(P)
    dus, dvs = np.empty_like(u), np.empty_like(v)
    programs = np.zeros(P, dtype=int)
    status = ["max-iter"] * P
    fallbacks = 0
    for s0 in range(0, P, chunk):
        sl = np.arange(s0, min(P, s0 + chunk))
        U, V = u[sl], v[sl]
        n = len(sl)
        best_du, best_dv = 0.5 * (V - U), 0.5 * (U - V)
        best = _norms(best_du, geo.norm).astype(float)
        pats = [_initial_patterns(geo, U[i], V[i]) for i in range(n)]
        PU: list[Any] = [torch.from_numpy(np.stack([p[0][s] for p in pats])) if relu[s] else None for s in range(nst)]
        PV: list[Any] = [torch.from_numpy(np.stack([p[1][s] for p in pats])) if relu[s] else None for s in range(nst)]
        eps_old = best.copy()
        running = np.ones(n, dtype=bool)
        AU: torch.Tensor | None = None  # each pair's last active set: the next step's first guess
        AV: torch.Tensor | None = None
        Ut, Vt = torch.from_numpy(U), torch.from_numpy(V)
        for it in range(1, max_iter + 1):
            idx = np.flatnonzero(running)
            if len(idx) == 0:
                break
            ti = torch.from_numpy(idx)
            pu_i = [p[ti] if p is not None else None for p in PU]
            pv_i = [p[ti] if p is not None else None for p in PV]
            Eu, Ev, e, keep, Gu, gu, Gv, gv, n_u, n_v = program_tensors(mats, relu, L1, fr, Ut[ti], Vt[ti], pu_i, pv_i)
            if AU is None:
                AU = torch.zeros(n, Gu.shape[1], dtype=torch.bool)
                AV = torch.zeros(n, Gv.shape[1], dtype=torch.bool)
            assert AU is not None and AV is not None
            sol = solve_polytopes(Eu, Ev, e, keep, Gu, gu, Gv, gv, init_u=AU[ti], init_v=AV[ti])
            assert sol.active_u is not None and sol.active_v is not None
            AU[ti] = sol.active_u & sol.ok[:, None]
            AV[ti] = sol.active_v & sol.ok[:, None]
            bu, bv, zu, zv = sol.bu.numpy().copy(), sol.bv.numpy().copy(), sol.zu.numpy().copy(), sol.zv.numpy().copy()
            solved = sol.ok.numpy().copy()
            for j in np.flatnonzero(~solved):
                i = idx[j]
                fallbacks += 1
                fallback.set(U[i], V[i], [p[i].numpy() if p is not None else None for p in PU],
                             [p[i].numpy() if p is not None else None for p in PV])
                if not fallback.solve():
                    continue
                bu[j], bv[j] = fallback.primal()
                zs_u, zs_v = [], []
                for st in range(nst):
                    if relu[st]:
                        a_, b_ = fallback.duals(st)
                        zs_u.append(np.asarray(a_).ravel())
                        zs_v.append(np.asarray(b_).ravel())
                zu[j], zv[j] = np.concatenate(zs_u), np.concatenate(zs_v)
                solved[j] = True
            programs[sl[idx]] += 1
            failed = idx[~solved]
            for i in failed:
                status[sl[i]] = "solver-failed"
            running[failed] = False
            idx_s = idx[solved]
            bu, bv, zu, zv = bu[solved], bv[solved], zu[solved], zv[solved]
            du, dv = geo.lift(bu), geo.lift(bv)
            eps = np.maximum(_norms(du, geo.norm), _norms(dv, geo.norm))
            cand = eps < best[idx_s]
            if cand.any():
                c = np.flatnonzero(cand)
                okv = verify_collisions(chain, U[idx_s[c]], V[idx_s[c]], du[c], dv[c], atol, rtol)
                for cc, good in zip(c, okv):
                    if good:
                        i = idx_s[cc]
                        best[i], best_du[i], best_dv[i] = eps[cc], du[cc], dv[cc]
            reached = best[idx_s] <= stop[sl[idx_s]]
            for i in idx_s[reached]:
                status[sl[i]] = "reached-target"
            running[idx_s[reached]] = False
            keep_go = ~reached
            idx_s, eps, zu, zv = idx_s[keep_go], eps[keep_go], zu[keep_go], zv[keep_go]
            if not any(relu):
                for i in idx_s:
                    status[sl[i]] = "converged"
                running[idx_s] = False
                continue
            # flip rule (Algorithm 2 lines 9-23), vectorised over the pairs
            scale = np.maximum(1.0, np.maximum(np.abs(zu).max(1, initial=0.0), np.abs(zv).max(1, initial=0.0)))
            tol = dual_tol * scale[:, None]
            changed = np.zeros(len(idx_s), dtype=bool)
            ou = ov = 0
            ti_s = torch.from_numpy(idx_s)
            for st in range(nst):
                if not relu[st]:
                    continue
                n_st = chain.stages[st].out_dim
                z_u, z_v = zu[:, ou:ou + n_st], zv[:, ov:ov + n_st]
                sl_u, sl_v = slice(ou, ou + n_st), slice(ov, ov + n_st)
                ou += n_st
                ov += n_st
                if st == last:
                    f = torch.from_numpy((z_u > tol) & (z_v > tol))
                    cur = PU[st][ti_s]
                    new = torch.where(f, 1 - cur, cur)
                    PU[st][ti_s] = new
                    PV[st][ti_s] = new.clone()
                    changed |= f.any(1).numpy()
                    if AU is not None and AV is not None:  # a flipped unit's sign rows start inactive
                        AU[ti_s, sl_u] &= ~f
                        AV[ti_s, sl_v] &= ~f
                else:
                    fu, fv = torch.from_numpy(z_u > tol), torch.from_numpy(z_v > tol)
                    cu_, cv_ = PU[st][ti_s], PV[st][ti_s]
                    PU[st][ti_s] = torch.where(fu, 1 - cu_, cu_)
                    PV[st][ti_s] = torch.where(fv, 1 - cv_, cv_)
                    changed |= (fu.any(1) | fv.any(1)).numpy()
                    if AU is not None and AV is not None:
                        AU[ti_s, sl_u] &= ~fu
                        AV[ti_s, sl_v] &= ~fv
            stall = eps >= eps_old[idx_s] - 1e-9 * np.maximum(1.0, eps_old[idx_s])
            conv = ~changed | stall
            for i in idx_s[conv]:
                status[sl[i]] = "converged"
            running[idx_s[conv]] = False
            eps_old[idx_s[~conv]] = eps[~conv]
        budget[sl], dus[sl], dvs[sl] = best, best_du, best_dv
    return budget, dus, dvs, programs, status, fallbacks
