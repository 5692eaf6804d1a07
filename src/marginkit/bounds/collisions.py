"""Collision finding: the smallest budget eps_f(u, v) that lets two inputs reach the same features.

eps_f(u, v) = min max(||delta||, ||delta'||) s.t. f(u + delta) = f(v + delta')   (paper eq. 2, Definition 2)

* identity f: eps = ||u - v|| / 2 (the midpoint), any norm;
* affine f(x) = L x + k, l2, no box: the closed form of section 3.1, eps = 1/2 ||V^T (v - u)||_2 with V the
  right singular vectors of L (non-zero singular values), delta = 1/2 V V^T (v - u) = -delta';
* affine f, other norms or a box on the perturbed points: the cone program of section 3.1
  (min t s.t. ||delta|| <= t, ||delta'|| <= t, L(u + delta) = L(v + delta'), box);
* ReLU networks: the descent over activation polytopes of section 3.2 (Algorithm 1 for one ReLU layer,
  Algorithm 2 / appendix C for several): start in the polytope of the midpoint, solve the cone program of
  that polytope exactly, read the dual variables of its sign constraints and flip the ReLUs whose duals are
  positive (last layer: only where both sides' duals are positive, the two sides share that pattern), until
  no ReLU flips or the budget stops decreasing. With l2 and no box the search runs in the row space of the
  first layer (appendix D.1), which is exact: components orthogonal to it change nothing but the norm.
* the descent's cone programs of many pairs are solved together by :mod:`marginkit.bounds.batched`
  (``engine="auto"``: l2 without a box; an exact active-set method whose answers carry a KKT
  certificate, Clarabel for the rest), otherwise one Clarabel / cvxpy program at a time;
* tiny ReLU networks: ``method="enumerate"`` solves the cone program of every activation polytope, the
  exact global minimum (ground truth for tests).

Every collision returned is verified on the float64 network: ||f(u + delta) - f(v + delta')||_inf within
``atol + rtol * scale``, and its budget is recomputed as max(||delta||, ||delta'||) from the deltas. A
descent step whose solution does not verify is discarded; the midpoint collision (budget ||u - v|| / 2)
always verifies, so every pair gets a finite, verified budget.

The box: the paper takes the adversarial example space to be R^n (section 3), so by default perturbed
points may leave [0, 1] (``bounds=None``). Passing ``bounds=(lo, hi)`` adds lo <= u + delta <= hi to every
cone program (the closed form then no longer applies): the budgets are then those of an adversary that
must stay in the box, which is what the attacks of :mod:`marginkit.attacks` are.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..norms import Norm, as_norm
from .extractors import FeatureChain

__all__ = ["CollisionResult", "row_basis", "linear_closed_form", "find_collisions", "verify_collisions",
           "pairwise_input_budgets"]

_P = {Norm.L1: 1, Norm.L2: 2, Norm.LINF: "inf"}


@dataclass
class CollisionResult:
    """Collisions for P pairs (u_i, v_i): verified budgets and, when kept, the perturbations.

    ``status`` per pair: "closed-form", "converged" (descent stopped: no ReLU to flip or no progress),
    "max-iter", "solver-failed" (a cone program failed; best verified collision kept), "exact"
    (enumeration), "midpoint".
    """

    budget: np.ndarray
    delta_u: np.ndarray | None
    delta_v: np.ndarray | None
    iterations: np.ndarray
    status: list[str]
    seconds: float
    programs: int = 0
    settings: dict = field(default_factory=dict)


def _norms(d: np.ndarray, norm: Norm) -> np.ndarray:
    return np.linalg.norm(d, ord=np.inf if norm is Norm.LINF else norm.p, axis=-1)


def pairwise_input_budgets(xa: np.ndarray, xb: np.ndarray, norm: Norm | str) -> np.ndarray:
    """||u - v|| / 2 for all u in xa, v in xb (the input-space conflict distance of Bhagoji et al.)."""
    from scipy.spatial.distance import cdist

    norm = as_norm(norm)
    metric = {Norm.L1: "cityblock", Norm.L2: "euclidean", Norm.LINF: "chebyshev"}[norm]
    return 0.5 * cdist(xa.reshape(len(xa), -1), xb.reshape(len(xb), -1), metric=metric)


def row_basis(gram: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis V of the row space of L from its Gram matrix L^T L, and the singular values.

    Equivalent to the SVD L = U S V^T without the zero singular values (section 3.1)."""
    lam, vec = np.linalg.eigh(gram)
    keep = lam > rtol * max(lam[-1], 0.0) * max(gram.shape[0], 1) if lam[-1] > 0 else np.zeros_like(lam, bool)
    return vec[:, keep][:, ::-1].copy(), np.sqrt(lam[keep][::-1])


def verify_collisions(chain: FeatureChain, u: np.ndarray, v: np.ndarray, du: np.ndarray, dv: np.ndarray,
                      atol: float = 1e-6, rtol: float = 1e-6, chunk: int = 1024) -> np.ndarray:
    """True where f(u + du) == f(v + dv) to ``atol + rtol * max|f|`` (float64 forward passes)."""
    ok = np.empty(len(u), dtype=bool)
    for s in range(0, len(u), chunk):
        fu = chain(torch.from_numpy(u[s:s + chunk] + du[s:s + chunk]))
        fv = chain(torch.from_numpy(v[s:s + chunk] + dv[s:s + chunk]))
        err = (fu - fv).abs().amax(1)
        scale = torch.maximum(fu.abs().amax(1), fv.abs().amax(1))
        ok[s:s + chunk] = (err <= atol + rtol * scale).numpy()
    return ok


def linear_closed_form(chain: FeatureChain, u: np.ndarray, v: np.ndarray, return_delta: bool = False,
                       basis: np.ndarray | None = None) -> CollisionResult:
    """Section 3.1, l2 without a box: eps_f(u, v) = 1/2 ||V^T (v - u)||_2, delta = -delta' = 1/2 V V^T (v - u).

    ``chain`` must be affine; ``basis`` (V) may be passed to reuse one SVD for many pairs. Verified.
    """
    t0 = time.perf_counter()
    if not chain.is_affine:
        raise ValueError(f"layer {chain.name!r} is not affine: use find_collisions (ReLU descent)")
    if chain.is_identity:
        du = 0.5 * (v - u)
    else:
        V = basis if basis is not None else row_basis(chain.stages[0].gram())[0]
        du = 0.5 * ((v - u) @ V) @ V.T
    ok = verify_collisions(chain, u, v, du, -du)
    budget = np.where(ok, np.linalg.norm(du, axis=1), np.inf)
    status = ["closed-form" if o else "unverified" for o in ok]
    return CollisionResult(budget, du if return_delta else None, -du if return_delta else None,
                           np.zeros(len(u), dtype=int), status, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- cone programs


@dataclass
class _Geometry:
    """What every cone program of one chain shares: the search space and the per-stage dense maps."""

    chain: FeatureChain
    norm: Norm
    bounds: tuple[float, float] | None
    reduce: np.ndarray | None  # V1 (n0 x r) when searching in the first layer's row space
    mats: list[tuple[np.ndarray, np.ndarray]]  # (L_i, k_i) per stage, L_1 already times V1 when reduced
    final_rows: np.ndarray | None  # V_m^T for a final linear stage (equality in its row space)

    @classmethod
    def build(cls, chain: FeatureChain, norm: Norm, bounds) -> "_Geometry":
        """Built once per chain, norm and box and kept on the chain (the row basis of a 784-input first
        layer is an eigendecomposition that would otherwise dominate a call on a few pairs)."""
        cache = chain.__dict__.setdefault("_geometry_cache", {})
        key = (norm, None if bounds is None else tuple(bounds))
        if key not in cache:
            cache[key] = cls._build(chain, norm, bounds)
        return cache[key]

    @classmethod
    def _build(cls, chain: FeatureChain, norm: Norm, bounds) -> "_Geometry":
        mats = [st.dense() for st in chain.stages]
        reduce = None
        if norm is Norm.L2 and bounds is None and mats:
            reduce = row_basis(mats[0][0].T @ mats[0][0])[0]
            mats[0] = (mats[0][0] @ reduce, mats[0][1])
        final_rows = None
        if chain.stages and not chain.stages[-1].relu:
            L = chain.stages[-1].dense()[0]
            final_rows = row_basis(L.T @ L)[0].T
        return cls(chain, norm, bounds, reduce, mats, final_rows)

    @property
    def dim(self) -> int:
        return self.reduce.shape[1] if self.reduce is not None else self.chain.input_dim

    def lift(self, beta: np.ndarray) -> np.ndarray:
        return beta @ self.reduce.T if self.reduce is not None else beta

    def affine_pieces(self, x: np.ndarray, patterns: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Pre-activations a_i = A_i beta + c_i of every stage for input x + lift(beta) under ``patterns``
        (one 0/1 vector per ReLU stage): the local linear model of section 3.2."""
        out = []
        L1_full, k1 = self.chain.stages[0].dense()
        A, c = self.mats[0][0], L1_full @ x + k1
        out.append((A, c))
        for i in range(1, len(self.mats)):
            s = patterns[i - 1] if self.chain.stages[i - 1].relu else None
            if s is not None:
                A, c = A * s[:, None], c * s
            L, k = self.mats[i]
            A, c = L @ A, L @ c + k
            out.append((A, c))
        return out


def _initial_patterns(geo: _Geometry, u: np.ndarray, v: np.ndarray) -> tuple[list, list]:
    """Activation patterns of the midpoint (u + v) / 2 at every ReLU stage, for both sides (Alg. 1/2, line 1-3)."""
    m = torch.from_numpy(0.5 * (u + v))[None]
    pats: list[np.ndarray | None] = []
    z = m.reshape(1, -1).to(torch.float64)
    for st in geo.chain.stages:
        z = st.apply(z)
        if st.relu:
            pats.append((z[0] > 0).numpy().astype(float))
            z = z.clamp_min(0)
        else:
            pats.append(None)
    return pats, [p.copy() if p is not None else None for p in pats]


@dataclass
class _ProgramData:
    """The data of one activation polytope's cone program: sign constraints G beta + g >= 0 per ReLU stage
    (``sign``: (stage index, G_u, g_u, G_v, g_v)) and the feature equality E_u beta_u - E_v beta_v = e."""

    sign: list
    Eu: np.ndarray
    Ev: np.ndarray
    e: np.ndarray


def _program_data(geo: _Geometry, u: np.ndarray, v: np.ndarray, pu: list, pv: list,
                  R1: np.ndarray | None = None) -> _ProgramData:
    """Appendix C/D: the sign constraints of every ReLU stage under patterns (pu, pv) and the equality of the
    features (last stage a ReLU: its active rows; last stage linear: its row space)."""
    stages = geo.chain.stages
    pieces_u, pieces_v = geo.affine_pieces(u, pu), geo.affine_pieces(v, pv)
    sign = []
    for i, st in enumerate(stages):
        if not st.relu:
            continue
        (Au, cu), (Av, cv) = pieces_u[i], pieces_v[i]
        su, sv = 2 * pu[i] - 1, 2 * pv[i] - 1
        sign.append((i, Au * su[:, None], su * cu, Av * sv[:, None], sv * cv))
    (Au, cu), (Av, cv) = pieces_u[-1], pieces_v[-1]
    if stages[-1].relu:
        s = pu[-1]
        return _ProgramData(sign, Au * s[:, None], Av * s[:, None], s * (cv - cu))
    if len(stages) == 1:
        R1 = R1 if R1 is not None else row_basis(geo.mats[0][0].T @ geo.mats[0][0])[0].T
        return _ProgramData(sign, R1, R1, R1 @ np.linalg.lstsq(Au, cv - cu, rcond=None)[0])
    R = geo.final_rows
    assert R is not None
    (Pu, qu), (Pv, qv) = pieces_u[-2], pieces_v[-2]
    hu_A, hu_c = Pu * pu[-2][:, None], qu * pu[-2]
    hv_A, hv_c = Pv * pv[-2][:, None], qv * pv[-2]
    return _ProgramData(sign, R @ hu_A, R @ hv_A, R @ (hv_c - hu_c))


class _ClarabelProgram:
    """The cone program of one activation polytope (appendix D) handed to Clarabel directly, l2 ball only.

    Same program and dual convention as :class:`_Program` (duals of ``G beta + g >= 0`` are >= 0), but the
    constraint matrix is assembled with numpy/scipy and passed straight to the interior-point solver: no
    cvxpy canonicalisation per solve. Rows of the masked equality that are identically zero (inactive
    ReLUs of the last stage) are dropped.
    """

    def __init__(self, geo: _Geometry, settings: dict | None = None):
        if geo.norm is not Norm.L2:
            raise ValueError("the direct Clarabel program covers the l2 ball only")
        self.geo = geo
        self.settings = dict(settings or {})
        self._x: np.ndarray | None = None
        self._z: np.ndarray | None = None
        self._slices: dict[int, tuple[slice, slice]] = {}
        self.value = np.nan

    def set(self, u: np.ndarray, v: np.ndarray, pu: list, pv: list) -> None:
        from scipy import sparse

        geo, d = self.geo, self.geo.dim
        data = _program_data(geo, u, v, pu, pv)
        keep = (np.abs(data.Eu).sum(1) + np.abs(data.Ev).sum(1)) > 0
        zero_col = lambda n: sparse.csr_matrix((n, 1))  # noqa: E731
        blocks = [[zero_col(int(keep.sum())), sparse.csr_matrix(data.Eu[keep]), sparse.csr_matrix(-data.Ev[keep])]]
        rhs = [data.e[keep]]
        n_nonneg = 0
        self._slices = {}
        for i, Gu, gu, Gv, gv in data.sign:
            nu, nv = len(gu), len(gv)
            blocks.append([zero_col(nu), sparse.csr_matrix(-Gu), sparse.csr_matrix((nu, d))])
            blocks.append([zero_col(nv), sparse.csr_matrix((nv, d)), sparse.csr_matrix(-Gv)])
            rhs += [gu, gv]
            self._slices[i] = (slice(n_nonneg, n_nonneg + nu), slice(n_nonneg + nu, n_nonneg + nu + nv))
            n_nonneg += nu + nv
        if geo.bounds is not None:
            lo, hi = geo.bounds
            eye, zero = sparse.identity(d, format="csr"), sparse.csr_matrix((d, d))
            blocks += [[zero_col(d), -eye, zero], [zero_col(d), eye, zero],
                       [zero_col(d), zero, -eye], [zero_col(d), zero, eye]]
            rhs += [u - lo, hi - u, v - lo, hi - v]
            n_nonneg += 4 * d
        t_row = sparse.csr_matrix(([-1.0], ([0], [0])), shape=(1, 1))
        eye, zero = sparse.identity(d, format="csr"), sparse.csr_matrix((d, d))
        blocks += [[t_row, sparse.csr_matrix((1, d)), sparse.csr_matrix((1, d))], [zero_col(d), -eye, zero],
                   [t_row, sparse.csr_matrix((1, d)), sparse.csr_matrix((1, d))], [zero_col(d), zero, -eye]]
        rhs += [np.zeros(d + 1), np.zeros(d + 1)]
        self._A = sparse.bmat(blocks, format="csc")
        self._b = np.concatenate(rhs)
        self._cones = (int(keep.sum()), n_nonneg, d + 1)
        self._offset = int(keep.sum())

    def solve(self, solver: str = "CLARABEL", **opts) -> bool:
        import clarabel
        from scipy import sparse

        n = 1 + 2 * self.geo.dim
        q = np.zeros(n)
        q[0] = 1.0
        n_eq, n_nonneg, soc = self._cones
        cones = ([clarabel.ZeroConeT(n_eq)] if n_eq else []) + ([clarabel.NonnegativeConeT(n_nonneg)] if n_nonneg else [])
        cones += [clarabel.SecondOrderConeT(soc), clarabel.SecondOrderConeT(soc)]
        st = clarabel.DefaultSettings()
        st.verbose = False
        for k, val in {**self.settings, **opts}.items():
            setattr(st, k, val)
        try:
            sol = clarabel.DefaultSolver(sparse.csc_matrix((n, n)), q, self._A, self._b, cones, st).solve()
        except Exception:  # noqa: BLE001 -- a failed solve only ends this pair's descent
            return False
        if str(sol.status) not in ("Solved", "AlmostSolved"):
            return False
        self._x, self._z = np.asarray(sol.x), np.asarray(sol.z)
        self.value = float(sol.obj_val)
        return True

    def primal(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.geo.dim
        assert self._x is not None
        return self._x[1:1 + d], self._x[1 + d:]

    def duals(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self._z is None or i not in self._slices:
            return None, None
        su, sv = self._slices[i]
        z = self._z[self._offset:]
        return z[su], z[sv]


class _Program:
    """The cone program of one activation polytope (appendix D, generalised to several layers by appendix C),
    compiled ONCE per layer with cvxpy parameters (DPP) and re-solved for every pair and polytope.

    min t  s.t.  ||beta_u|| <= t, ||beta_v|| <= t,                     (beta = delta, or V1^T delta when reduced)
                 (2 s_i - 1) * a_i(u + delta)  >= 0  for every ReLU stage i (u side, pattern s_i),
                 (2 s'_i - 1) * a_i(v + delta') >= 0  (v side, pattern s'_i; s'_m = s_m on the last ReLU stage),
                 features equal: s_m * a_m(u + delta) == s_m * a_m(v + delta')  (last stage a ReLU), or
                                 R_m h_{m-1}(u + delta) == R_m h_{m-1}(v + delta')  (last stage linear, R_m its row basis),
                 lo <= u + delta <= hi, lo <= v + delta' <= hi  (only with a box).
    Inactive rows of the masked equality are 0 == 0, which keeps one compiled problem for every polytope.
    """

    def __init__(self, geo: _Geometry):
        import cvxpy as cp

        self.geo = geo
        d = geo.dim
        stages = geo.chain.stages
        self.bu, self.bv, self.t = cp.Variable(d), cp.Variable(d), cp.Variable()
        p: int | str = _P[geo.norm]  # type: ignore[assignment]
        cons = [cp.norm(self.bu, p) <= self.t, cp.norm(self.bv, p) <= self.t]
        self.xu = self.xv = None
        if geo.bounds is not None:
            lo, hi = geo.bounds
            self.xu, self.xv = cp.Parameter(d), cp.Parameter(d)
            cons += [self.xu + self.bu >= lo, self.xu + self.bu <= hi, self.xv + self.bv >= lo, self.xv + self.bv <= hi]
        self.sign: list = []
        for st in stages:
            if not st.relu:
                self.sign.append(None)
                continue
            Gu, gu, Gv, gv = (cp.Parameter((st.out_dim, d)), cp.Parameter(st.out_dim),
                              cp.Parameter((st.out_dim, d)), cp.Parameter(st.out_dim))
            cu, cv = Gu @ self.bu + gu >= 0, Gv @ self.bv + gv >= 0
            cons += [cu, cv]
            self.sign.append((Gu, gu, Gv, gv, cu, cv))
        if stages[-1].relu:
            n_eq = stages[-1].out_dim
        elif len(stages) == 1:
            self.R1 = row_basis(geo.mats[0][0].T @ geo.mats[0][0])[0].T
            n_eq = self.R1.shape[0]
        else:
            assert geo.final_rows is not None
            n_eq = geo.final_rows.shape[0]
        self.Eu, self.Ev, self.e = cp.Parameter((n_eq, d)), cp.Parameter((n_eq, d)), cp.Parameter(n_eq)
        cons.append(self.Eu @ self.bu - self.Ev @ self.bv == self.e)
        self.problem = cp.Problem(cp.Minimize(self.t), cons)

    def set(self, u: np.ndarray, v: np.ndarray, pu: list, pv: list) -> None:
        data = _program_data(self.geo, u, v, pu, pv, getattr(self, "R1", None))
        if self.xu is not None and self.xv is not None:
            self.xu.value, self.xv.value = u, v
        for i, Gu, gu, Gv, gv in data.sign:
            P = self.sign[i]
            P[0].value, P[1].value, P[2].value, P[3].value = Gu, gu, Gv, gv
        self.Eu.value, self.Ev.value, self.e.value = data.Eu, data.Ev, data.e

    def primal(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.bu.value), np.asarray(self.bv.value)

    def duals(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        cu, cv = self.sign[i][4], self.sign[i][5]
        return cu.dual_value, cv.dual_value

    def solve(self, solver: str, **opts) -> bool:
        import cvxpy as cp

        try:
            self.problem.solve(solver=solver, **opts)
        except cp.error.SolverError:
            return False
        return self.problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and self.bu.value is not None


def _flip(geo: _Geometry, prog, pu: list, pv: list, dual_tol: float) -> tuple[list, list, bool]:
    """Algorithm 2 lines 9-23: flip earlier-layer ReLUs whose sign constraint has a positive dual on that
    side; flip a last-layer ReLU only when both sides' duals are positive."""
    stages = geo.chain.stages
    pu, pv = [p.copy() if p is not None else None for p in pu], [p.copy() if p is not None else None for p in pv]
    changed = False
    duals = [prog.duals(i) for i, st in enumerate(stages) if st.relu]
    scale = max([1.0] + [float(np.max(np.abs(a))) for a, _ in duals if a is not None and a.size]
                + [float(np.max(np.abs(b))) for _, b in duals if b is not None and b.size])
    tol = dual_tol * scale
    for i, st in enumerate(stages):
        if not st.relu:
            continue
        zu, zv = prog.duals(i)
        if zu is None or zv is None:
            continue
        zu, zv = np.asarray(zu).ravel(), np.asarray(zv).ravel()
        if i == len(stages) - 1:
            f = (zu > tol) & (zv > tol)
            if f.any():
                pu[i][f] = 1 - pu[i][f]
                pv[i] = pu[i].copy()
                changed = True
        else:
            fu, fv = zu > tol, zv > tol
            if fu.any() or fv.any():
                pu[i][fu] = 1 - pu[i][fu]
                pv[i][fv] = 1 - pv[i][fv]
                changed = True
    return pu, pv, changed


def _descent_one(prog, u: np.ndarray, v: np.ndarray, solver: str, solver_opts: dict, max_iter: int,
                 dual_tol: float, atol: float, rtol: float,
                 stop: float = -np.inf) -> tuple[float, np.ndarray, np.ndarray, int, str]:
    """Algorithm 1 / 2 for one pair; returns the best VERIFIED (budget, delta_u, delta_v, programs, status)."""
    geo = prog.geo
    norm = geo.norm
    best_du, best_dv = 0.5 * (v - u), 0.5 * (u - v)  # the midpoint collision always verifies
    best = float(_norms(best_du, norm))
    pu, pv = _initial_patterns(geo, u, v)
    eps_old = best
    status = "max-iter"
    it = 0
    for it in range(1, max_iter + 1):
        prog.set(u, v, pu, pv)
        if not prog.solve(solver, **solver_opts):
            status = "solver-failed"
            break
        bu, bv = prog.primal()
        du, dv = geo.lift(bu), geo.lift(bv)
        if geo.bounds is not None:  # solver-tolerance excursions outside the box are clipped away
            du = np.clip(u + du, *geo.bounds) - u
            dv = np.clip(v + dv, *geo.bounds) - v
        eps = float(max(_norms(du, norm), _norms(dv, norm)))
        if eps < best and verify_collisions(geo.chain, u[None], v[None], du[None], dv[None], atol, rtol)[0]:
            best, best_du, best_dv = eps, du, dv
        if best <= stop:
            status = "reached-target"
            break
        if all(not st.relu for st in geo.chain.stages):
            status = "converged"
            break
        pu_new, pv_new, changed = _flip(geo, prog, pu, pv, dual_tol)
        if not changed or eps >= eps_old - 1e-9 * max(1.0, eps_old):
            status = "converged"
            break
        eps_old, pu, pv = eps, pu_new, pv_new
    return best, best_du, best_dv, it, status


def _enumerate_one(prog, u: np.ndarray, v: np.ndarray, solver: str, solver_opts: dict,
                   atol: float, rtol: float, max_programs: int) -> tuple[float, np.ndarray, np.ndarray, int, str]:
    """Exact eps_f: the minimum over every activation polytope (tiny networks only)."""
    geo = prog.geo
    stages = geo.chain.stages
    relu_idx = [i for i, st in enumerate(stages) if st.relu]
    last_shared = bool(stages and stages[-1].relu)
    bits = []
    for i in relu_idx:
        n = stages[i].out_dim
        bits.append(("shared" if (last_shared and i == len(stages) - 1) else "pair", i, n))
    total = sum(n if kind == "shared" else 2 * n for kind, _, n in bits)
    if 2 ** total > max_programs:
        raise ValueError(f"enumeration needs 2^{total} cone programs (more than max_programs={max_programs}); "
                         "use method='descent'")
    best_du, best_dv = 0.5 * (v - u), 0.5 * (u - v)
    best = float(_norms(best_du, geo.norm))
    count = 0
    for bits_on in itertools.product((0.0, 1.0), repeat=total):
        combo = np.array(bits_on)
        pu: list = [None] * len(stages)
        pv: list = [None] * len(stages)
        pos = 0
        for kind, i, n in bits:
            pu[i] = combo[pos:pos + n].copy()
            pos += n
            if kind == "shared":
                pv[i] = pu[i].copy()
            else:
                pv[i] = combo[pos:pos + n].copy()
                pos += n
        prog.set(u, v, pu, pv)
        count += 1
        if not prog.solve(solver, **solver_opts):
            continue
        bu, bv = prog.primal()
        du, dv = geo.lift(bu), geo.lift(bv)
        eps = float(max(_norms(du, geo.norm), _norms(dv, geo.norm)))
        if eps < best and verify_collisions(geo.chain, u[None], v[None], du[None], dv[None], atol, rtol)[0]:
            best, best_du, best_dv = eps, du, dv
    return best, best_du, best_dv, count, "exact"


_DEFAULT_OPTS = {"CLARABEL": {}, "SCS": {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 20000},
                 "ECOS": {}}


def find_collisions(chain: FeatureChain, u: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor,
                    norm: Norm | str = "l2", *, bounds: tuple[float, float] | None = None, method: str = "auto",
                    solver: str = "CLARABEL", solver_opts: dict | None = None, max_iter: int = 50,
                    dual_tol: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-6, return_delta: bool = False,
                    max_programs: int = 4096, progress: bool = False, direct: bool = True,
                    stop_below: np.ndarray | None = None, engine: str = "auto") -> CollisionResult:
    """Verified collisions f(u_i + delta_i) = f(v_i + delta'_i) for the pairs (u_i, v_i) (rows of u and v).

    ``method``: "auto" (closed form when it applies, else "descent"), "closed-form", "cone" (the affine
    cone program of section 3.1), "descent" (Algorithms 1/2), "enumerate" (exact, tiny networks).
    ``solver`` is any cvxpy solver name (Clarabel by default; "SCS" for the benchmark comparison). With
    ``direct`` (default), l2 and Clarabel, each cone program goes to Clarabel without cvxpy (same program,
    same duals, a fraction of the overhead). ``stop_below`` (P,) ends pair i's descent as soon as a verified
    budget <= stop_below[i] is found (a caller that only needs to know whether eps_f <= some eps).
    ``engine`` (descent only): "batched" runs all pairs' descents in lock step and solves each step's cone
    programs together (:mod:`marginkit.bounds.batched`: an exact active-set solver in torch whose answers
    are accepted only with a KKT certificate, Clarabel for the rest; l2, no box, Clarabel); "per-pair"
    solves one program at a time; "auto" (default) takes "batched" wherever it applies.
    """
    t0 = time.perf_counter()
    norm = as_norm(norm)
    u = np.asarray(u.detach().cpu() if isinstance(u, torch.Tensor) else u, dtype=np.float64)
    v = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
    u = u.reshape(len(u), -1) if u.size else u.reshape(len(u), chain.input_dim)
    v = v.reshape(len(v), -1) if v.size else v.reshape(len(v), chain.input_dim)
    if u.shape != v.shape or u.shape[1] != chain.input_dim:
        raise ValueError(f"u and v must both have shape (P, {chain.input_dim}), got {u.shape} and {v.shape}")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError("u and v must be finite")
    if bounds is not None:
        lo, hi = bounds
        if (u < lo - 1e-9).any() or (u > hi + 1e-9).any() or (v < lo - 1e-9).any() or (v > hi + 1e-9).any():
            raise ValueError(f"bounds={bounds} given but some points lie outside the box")
    closed_ok = chain.is_affine and bounds is None and (norm is Norm.L2 or chain.is_identity)
    if method == "auto":
        method = "closed-form" if closed_ok else "descent"
    settings = {"method": method, "norm": norm.value, "bounds": bounds, "solver": solver, "max_iter": max_iter,
                "dual_tol": dual_tol, "atol": atol, "rtol": rtol}
    if method == "closed-form":
        if not closed_ok:
            raise ValueError("the closed form needs an affine layer, l2 (or the identity) and no box")
        res = linear_closed_form(chain, u, v, return_delta=return_delta)
        res.settings = settings
        return res
    if method not in ("cone", "descent", "enumerate"):
        raise ValueError(f"unknown method {method!r}: use auto, closed-form, cone, descent or enumerate")
    if method == "cone" and not chain.is_affine:
        raise ValueError(f"method='cone' needs an affine layer; {chain.name!r} has ReLUs (use 'descent')")
    opts = {**_DEFAULT_OPTS.get(solver.upper(), {}), **(solver_opts or {})}
    P = len(u)
    budget = np.empty(P)
    iters = np.zeros(P, dtype=int)
    status: list[str] = []
    dus = np.empty_like(u) if return_delta else None
    dvs = np.empty_like(v) if return_delta else None
    if chain.is_identity:
        du = 0.5 * (v - u)
        budget[:] = _norms(du, norm)
        status = ["midpoint"] * P
        if dus is not None and dvs is not None:
            dus[:], dvs[:] = du, -du
        return CollisionResult(budget, dus, dvs, iters, status, time.perf_counter() - t0, 0, settings)
    geo = _Geometry.build(chain, norm, bounds)
    use_direct = direct and solver.upper() == "CLARABEL" and norm is Norm.L2
    prog: _Program | _ClarabelProgram = _ClarabelProgram(geo, solver_opts) if use_direct else _Program(geo)
    settings["direct"] = use_direct
    if stop_below is not None:
        stop_below = np.asarray(stop_below, dtype=np.float64).reshape(-1)
        if stop_below.shape != (P,):
            raise ValueError(f"stop_below must have shape ({P},), got {stop_below.shape}")
    if engine not in ("auto", "batched", "per-pair"):
        raise ValueError(f"unknown engine {engine!r}: use auto, batched or per-pair")
    batched_ok = (method == "descent" and use_direct and bounds is None and geo.reduce is not None
                  and any(st.relu for st in chain.stages) and (chain.stages[-1].relu or len(chain.stages) > 1))
    if engine == "batched" and not batched_ok:
        raise ValueError("engine='batched' needs method='descent', l2, no box, the Clarabel solver and a ReLU chain")
    if batched_ok and engine != "per-pair":
        from .batched import descent_batched

        stops = np.full(P, -np.inf) if stop_below is None else stop_below
        b, du, dv, iters, status, fallbacks = descent_batched(geo, u, v, max_iter=max_iter, dual_tol=dual_tol, atol=atol,
                                                              rtol=rtol, stop=stops, fallback=prog,
                                                              initial_patterns=_initial_patterns, norms=_norms,
                                                              verify=verify_collisions)
        settings.update(engine="batched", fallback_programs=int(fallbacks))
        return CollisionResult(b, du if return_delta else None, dv if return_delta else None, iters, status,
                               time.perf_counter() - t0, int(iters.sum()), settings)
    settings["engine"] = "per-pair"
    rng = range(P)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=f"collisions {chain.name}", leave=False)
    for i in rng:
        if method == "enumerate":
            b, du, dv, n_prog, st = _enumerate_one(prog, u[i], v[i], solver, {} if use_direct else opts, atol, rtol,
                                                   max_programs)
        else:
            stop = -np.inf if stop_below is None else float(stop_below[i])
            b, du, dv, n_prog, st = _descent_one(prog, u[i], v[i], solver, {} if use_direct else opts, max_iter,
                                                 dual_tol, atol, rtol, stop)
        budget[i], iters[i] = b, n_prog
        status.append(st)
        if dus is not None and dvs is not None:
            dus[i], dvs[i] = du, dv
    return CollisionResult(budget, dus, dvs, iters, status, time.perf_counter() - t0, int(iters.sum()), settings)
