"""Mixed-integer programs for the exact input margin of a ReLU network (Tjeng, Xiao & Tedrake, ICLR 2019).

For one sample x0 with reference class i and one target class j, the margin towards j is

    min ||delta||_p  s.t.  lo <= x0 + delta <= hi,  a_0 = x0 + delta,
                           z_k = W_k a_{k-1} + b_k,  a_k = relu(z_k)   (hidden layers k),
                           (W_L a_{L-1} + b_L)_j >= (W_L a_{L-1} + b_L)_i,

and d_in(x0) is the minimum over j. Each ReLU with pre-activation bounds l <= z <= u is encoded as in
Tjeng et al. (2019), eq. (5): stable neurons need no integer (u <= 0: a = 0; l >= 0: a = z), an
unstable one (l < 0 < u) gets a binary s with

    a >= 0,  a >= z,  a <= u s,  a <= z - l (1 - s).

The bounds l, u must hold on the set the program searches: the box intersected with the ball
||delta|| <= r, where r is the caller's verified upper bound (also imposed on the variables: |delta_k| <= r).
l1 and linf objectives are linear (|delta_k| <= t_k, resp. <= t); the l2 objective is quadratic and
goes to SCIP as the constraint ||delta||^2 <= tau (a mixed-integer QCP).

Targets are solved in the order of their relaxation bound (the LP, resp. convex QP, with the binaries
relaxed to [0, 1]), each with the best value so far as objective limit, and a target whose relaxation
already reaches that value is pruned without solving its MILP (Tjeng et al. section 4.2 prune the same
way by the attack's bound). The optional layer-wise tightening replaces the bounds of unstable neurons
by LP optima over the relaxation of the layers below them ("LP" tightening of Tjeng et al., section 4.1),
which removes binaries and shrinks big-M constants before branching.

Solvers: SCIP through pyscipopt (``pip install pyscipopt``; all three norms) and HiGHS through
:func:`scipy.optimize.milp` (l1 and linf) when pyscipopt is missing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from ..norms import Norm

__all__ = ["MarginProgram", "TargetOutcome", "MilpOutcome", "SolverError", "available_solvers", "resolve_solver",
           "build_program", "relaxation_bound", "tighten_bounds", "solve_margin"]

Layers = list[tuple[np.ndarray, np.ndarray]]
Bounds = list[tuple[np.ndarray, np.ndarray]]

# Pre-activation bounds come from float32 bound propagation; widen them by this much (relative) so that
# float rounding cannot make a bound cut off the true pre-activation.
_BOUND_SLACK = 1e-6


# SCIP parameter-setting groups (set<Group>(SCIP_PARAMSETTING.<level>)) applied to every MILP. Primal
# heuristics and cutting planes off: the caller's verified upper bound is the objective limit, so SCIP's
# work is proving the lower bound, and on the bench MLPs this made the linf MILPs about 3-5x faster
# than SCIP's defaults (bench/verify.md, "exact margins").
SCIP_SETTINGS: dict[str, str] = {"heuristics": "OFF", "separating": "OFF"}


class SolverError(RuntimeError):
    """A MILP / LP solver returned neither a solution nor a proof: reported as a status, never as a margin."""


def available_solvers() -> list[str]:
    """The MILP back-ends importable here, best first: ``scip`` (pyscipopt) and ``highs`` (scipy)."""
    out = []
    try:
        import pyscipopt  # noqa: F401

        out.append("scip")
    except ImportError:
        pass
    out.append("highs")
    return out


def resolve_solver(solver: str, norm: Norm) -> str:
    """``auto`` -> SCIP when installed, else HiGHS; HiGHS has no mixed-integer QP, so l2 needs SCIP."""
    if solver not in ("auto", "scip", "highs"):
        raise ValueError(f"unknown solver {solver!r}: use 'auto', 'scip' or 'highs'")
    have = available_solvers()
    if solver == "auto":
        solver = have[0]
    if solver == "scip" and "scip" not in have:
        raise ImportError("solver='scip' needs pyscipopt: pip install pyscipopt (or the 'exact' extra)")
    if norm is Norm.L2 and solver != "scip":
        raise ImportError("exact l2 margins are mixed-integer QPs and need SCIP: pip install pyscipopt")
    return solver


@dataclass
class MarginProgram:
    """The target-independent part of the MILP of one sample, as matrices over the columns
    [delta (n) | a_1 .. a_{L-1} (hidden post-activations) | binaries | t (norm auxiliaries)].

    Rows: ``a_ub x <= b_ub`` and ``a_eq x = b_eq``; ``cost`` the linear objective (zero on delta for l2,
    whose objective is ||delta||^2). ``out_w``, ``out_b``: the logits as ``out_w @ x[out_cols] + out_b``.
    """

    norm: Norm
    n: int
    cost: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray
    a_ub: sparse.csr_matrix
    b_ub: np.ndarray
    a_eq: sparse.csr_matrix
    b_eq: np.ndarray
    out_cols: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    radius: float
    binaries: int
    pattern_cols: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def gap_row(self, ref: int, target: int) -> tuple[sparse.csr_matrix, float]:
        """The row ``f^target >= f^ref`` as ``g x <= h`` (a tie counts: the margin is an infimum)."""
        coef = np.zeros(self.cost.shape[0])
        coef[self.out_cols] = self.out_w[ref] - self.out_w[target]
        return sparse.csr_matrix(coef[None, :]), float(self.out_b[target] - self.out_b[ref])


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lo - _BOUND_SLACK * (1 + np.abs(lo)), hi + _BOUND_SLACK * (1 + np.abs(hi))


def build_program(layers: Layers, x0: np.ndarray, norm: Norm, pre_bounds: Bounds, *, box: tuple[np.ndarray, np.ndarray],
                  radius: float) -> MarginProgram:
    """The big-M program of Tjeng et al. (2019) for one sample (see the module docstring).

    ``pre_bounds``: per hidden layer (l, u) of its pre-activations, valid on box ∩ {||delta|| <= radius}.
    """
    n = x0.shape[0]
    if len(pre_bounds) != len(layers) - 1:
        raise ValueError(f"{len(layers) - 1} hidden layers but {len(pre_bounds)} pre-activation bounds")
    r = radius if math.isfinite(radius) else math.inf
    dlo = np.maximum(box[0] - x0, -r)
    dhi = np.minimum(box[1] - x0, r)
    lbs, ubs, ints = [dlo], [dhi], [np.zeros(n)]
    n_cols = n
    prev_cols = np.arange(n)
    rows_ub: list[sparse.csr_matrix] = []
    rhs_ub: list[np.ndarray] = []
    rows_eq: list[sparse.csr_matrix] = []
    rhs_eq: list[np.ndarray] = []
    # (column index, coefficient) blocks are assembled per layer as COO triplets
    blocks: list[tuple[list[int], list[int], list[float], list[float], bool]] = []
    pattern_cols: list[tuple[np.ndarray, np.ndarray]] = []
    hidden_specs = []
    for k, (w, b) in enumerate(layers[:-1]):
        lo, hi = _widen(*(np.asarray(t, dtype=np.float64) for t in pre_bounds[k]))
        bias = b + (w @ x0 if k == 0 else 0.0)  # z = W a_prev + bias, a_prev = delta on the first layer
        m = w.shape[0]
        a_cols = np.arange(n_cols, n_cols + m)
        n_cols += m
        unstable = np.flatnonzero((lo < 0) & (hi > 0))
        s_cols = np.full(m, -1)
        s_cols[unstable] = np.arange(n_cols, n_cols + unstable.size)
        n_cols += unstable.size
        lbs.append(np.zeros(m))
        ubs.append(np.maximum(hi, 0.0))
        ints.append(np.zeros(m))
        lbs.append(np.zeros(unstable.size))
        ubs.append(np.ones(unstable.size))
        ints.append(np.ones(unstable.size))
        hidden_specs.append((w, bias, lo, hi, prev_cols, a_cols, s_cols))
        pattern_cols.append((a_cols, s_cols))
        prev_cols = a_cols
    t_cols = np.arange(n_cols, n_cols + (n if norm is Norm.L1 else 1 if norm is Norm.LINF else 0))
    n_cols += t_cols.size
    lbs.append(np.zeros(t_cols.size))
    ubs.append(np.full(t_cols.size, r))
    ints.append(np.zeros(t_cols.size))

    def rows(coefs: list[tuple[np.ndarray, np.ndarray]], count: int) -> sparse.csr_matrix:
        """Sum of blocks (cols (c,), values (count, c)) into a (count, n_cols) sparse matrix."""
        mats = []
        for cols, vals in coefs:
            r_idx = np.repeat(np.arange(count), cols.size)
            c_idx = np.tile(cols, count)
            mats.append(sparse.csr_matrix((vals.reshape(-1), (r_idx, c_idx)), shape=(count, n_cols)))
        return sum(mats[1:], mats[0]).tocsr() if mats else sparse.csr_matrix((count, n_cols))

    for w, bias, lo, hi, p_cols, a_cols, s_cols in hidden_specs:
        active = np.flatnonzero(lo >= 0)
        unstable = np.flatnonzero((lo < 0) & (hi > 0))
        if active.size:  # a = z:  a - W a_prev = bias
            eye = np.eye(a_cols.size)[active]
            rows_eq.append(rows([(a_cols, eye), (p_cols, -w[active])], active.size))
            rhs_eq.append(bias[active])
        if unstable.size:
            wu, bu, lu, hu = w[unstable], bias[unstable], lo[unstable], hi[unstable]
            eye_a = np.eye(a_cols.size)[unstable]
            sc = s_cols[unstable]
            eye_s = np.eye(unstable.size)
            # a >= z:               W a_prev - a <= -bias
            rows_ub.append(rows([(p_cols, wu), (a_cols, -eye_a)], unstable.size))
            rhs_ub.append(-bu)
            # a <= z - l (1 - s):   a - W a_prev - l s <= bias - l
            rows_ub.append(rows([(a_cols, eye_a), (p_cols, -wu), (sc, -np.diag(lu) @ eye_s)], unstable.size))
            rhs_ub.append(bu - lu)
            # a <= u s:             a - u s <= 0
            rows_ub.append(rows([(a_cols, eye_a), (sc, -np.diag(hu) @ eye_s)], unstable.size))
            rhs_ub.append(np.zeros(unstable.size))
    if norm is not Norm.L2:
        tcoef = np.ones((n, 1)) if norm is Norm.LINF else np.eye(n)
        eye_n = np.eye(n)
        rows_ub.append(rows([(np.arange(n), eye_n), (t_cols, -tcoef)], n))
        rows_ub.append(rows([(np.arange(n), -eye_n), (t_cols, -tcoef)], n))
        rhs_ub += [np.zeros(n), np.zeros(n)]
    cost = np.zeros(n_cols)
    cost[t_cols] = 1.0
    w_out, b_out = layers[-1]
    out_b = b_out + (w_out @ x0 if len(layers) == 1 else 0.0)

    def stack(mats: list[sparse.csr_matrix]) -> sparse.csr_matrix:
        return sparse.vstack(mats, format="csr") if mats else sparse.csr_matrix((0, n_cols))

    return MarginProgram(
        norm=norm, n=n, cost=cost, lb=np.concatenate(lbs), ub=np.concatenate(ubs),
        integrality=np.concatenate(ints), a_ub=stack(rows_ub),
        b_ub=np.concatenate(rhs_ub) if rhs_ub else np.zeros(0),
        a_eq=stack(rows_eq), b_eq=np.concatenate(rhs_eq) if rhs_eq else np.zeros(0),
        out_cols=prev_cols, out_w=np.asarray(w_out, dtype=np.float64), out_b=out_b, radius=r,
        binaries=int(sum((s >= 0).sum() for _, s in pattern_cols)), pattern_cols=pattern_cols)


# ------------------------------------------------------------------------------------------------
# relaxations (binaries in [0, 1]): LP for l1 / linf, convex QP for l2
# ------------------------------------------------------------------------------------------------

def _relax_solve(prog: MarginProgram, cost: np.ndarray, extra: tuple[sparse.csr_matrix, float] | None,
                 quadratic: bool) -> tuple[float, np.ndarray | None]:
    """min cost x (+ ||delta||^2 when ``quadratic``) over the relaxation: (value, x); (inf, None) if empty."""
    a_ub, b_ub = prog.a_ub, prog.b_ub
    if extra is not None:
        a_ub = sparse.vstack([a_ub, extra[0]], format="csr")
        b_ub = np.append(b_ub, extra[1])
    if quadratic:
        return _relax_qp(prog, a_ub, b_ub)
    from scipy.optimize import linprog

    res = linprog(cost, A_ub=a_ub if a_ub.shape[0] else None, b_ub=b_ub if a_ub.shape[0] else None,
                  A_eq=prog.a_eq if prog.a_eq.shape[0] else None, b_eq=prog.b_eq if prog.a_eq.shape[0] else None,
                  bounds=np.column_stack([prog.lb, prog.ub]), method="highs")
    if res.status == 2:
        return math.inf, None
    if res.status != 0:
        raise SolverError(f"HiGHS failed on a relaxation LP: {res.message}")
    return float(res.fun), res.x


def _relax_qp(prog: MarginProgram, a_ub: sparse.csr_matrix, b_ub: np.ndarray) -> tuple[float, np.ndarray | None]:
    import clarabel

    n_cols = prog.cost.shape[0]
    p = sparse.diags(np.r_[np.full(prog.n, 2.0), np.zeros(n_cols - prog.n)], format="csc")
    eye = sparse.identity(n_cols, format="csr")
    fin_u, fin_l = np.isfinite(prog.ub), np.isfinite(prog.lb)
    a = sparse.vstack([prog.a_eq, a_ub, eye[fin_u], -eye[fin_l]], format="csc")
    b = np.concatenate([prog.b_eq, b_ub, prog.ub[fin_u], -prog.lb[fin_l]])
    cones = [clarabel.ZeroConeT(prog.a_eq.shape[0])] if prog.a_eq.shape[0] else []
    cones.append(clarabel.NonnegativeConeT(a.shape[0] - prog.a_eq.shape[0]))
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    sol = clarabel.DefaultSolver(p, np.zeros(n_cols), a, b, cones, settings).solve()
    status = str(sol.status)
    if "Infeasible" in status:
        return math.inf, None
    if status not in ("Solved", "AlmostSolved"):
        raise SolverError(f"Clarabel failed on a relaxation QP: {status}")
    x = np.asarray(sol.x)
    # the interior-point optimum is accurate to ~1e-8; shave that off so the bound stays a lower bound
    value = max(0.0, float(np.sqrt(max(sol.obj_val, 0.0))) - 1e-7)
    return value * value, x


def relaxation_bound(prog: MarginProgram, ref: int, target: int) -> float:
    """Lower bound on the margin towards ``target``: the optimum of the relaxation (a norm, not squared)."""
    value, _ = _relax_solve(prog, prog.cost, prog.gap_row(ref, target), prog.norm is Norm.L2)
    if prog.norm is Norm.L2:
        return math.sqrt(value) if math.isfinite(value) else math.inf
    return value


def tighten_bounds(layers: Layers, x0: np.ndarray, norm: Norm, pre_bounds: Bounds, *, box: tuple[np.ndarray, np.ndarray],
                   radius: float, deadline: float = math.inf) -> Bounds:
    """LP tightening of the unstable neurons' bounds, layer by layer (Tjeng et al. 2019, section 4.1).

    The bounds of layer k are replaced by min / max of its pre-activations over the LP relaxation of
    layers < k (with the ball ||delta|| <= radius for l1 / linf; for l2 the ball is kept as the box
    |delta_k| <= radius, a valid relaxation). A bound only ever tightens: the result is the elementwise
    intersection with the input bounds. Stops (keeping the rest as given) past ``deadline``.
    """
    out = [(np.asarray(lo, dtype=np.float64).copy(), np.asarray(hi, dtype=np.float64).copy()) for lo, hi in pre_bounds]
    sub_norm = norm if norm is not Norm.L2 else Norm.LINF
    for k in range(1, len(layers) - 1):
        if time.monotonic() > deadline:
            break
        w, b = layers[k]
        prog = build_program(layers[:k] + [(w, b)], x0, sub_norm, out[:k], box=box, radius=radius)
        lo, hi = out[k]
        for i in np.flatnonzero((lo < 0) & (hi > 0)):
            if time.monotonic() > deadline:
                break
            cost = np.zeros(prog.cost.shape[0])
            cost[prog.out_cols] = w[i]
            vmin, _ = _relax_solve(prog, cost, _ball_row(prog, radius), False)
            vmax, _ = _relax_solve(prog, -cost, _ball_row(prog, radius), False)
            if not math.isfinite(vmin):  # empty relaxation: nothing in the ball, keep the bounds
                continue
            lo[i] = max(lo[i], vmin + b[i] - 1e-7 * (1 + abs(vmin)))
            hi[i] = min(hi[i], -vmax + b[i] + 1e-7 * (1 + abs(vmax)))
    return out


def _ball_row(prog: MarginProgram, radius: float) -> tuple[sparse.csr_matrix, float] | None:
    """The ball ||delta|| <= radius as one row on the norm auxiliaries (l1: sum t <= r; linf: t <= r is a bound)."""
    if not math.isfinite(radius) or prog.norm is not Norm.L1:
        return None
    return sparse.csr_matrix(prog.cost[None, :]), radius


# ------------------------------------------------------------------------------------------------
# one MILP per target
# ------------------------------------------------------------------------------------------------

@dataclass
class TargetOutcome:
    """What one target's program proved: ``lower`` a lower bound on the margin towards it, ``value`` and
    ``x`` the best solution found (inf / None when none), ``status`` one of optimal, limit (objective limit:
    nothing below it), pruned (relaxation above the incumbent), timeout, unreached (no time left)."""

    target: int
    relaxation: float
    lower: float
    value: float = math.inf
    x: np.ndarray | None = None
    status: str = "pruned"
    seconds: float = 0.0


@dataclass
class MilpOutcome:
    """All targets of one sample: ``lower`` = min over targets of their lower bounds."""

    lower: float
    value: float
    x: np.ndarray | None
    target: int
    targets: list[TargetOutcome]
    timed_out: bool
    solver: str
    binaries: int


def _solve_scip(prog: MarginProgram, gap: tuple[sparse.csr_matrix, float], cutoff: float,
                time_limit: float) -> tuple[str, float, float, np.ndarray | None]:
    """(status, value, dual bound, x) of one target's MILP with SCIP; values are norms (l2: not squared)."""
    import pyscipopt

    model = pyscipopt.Model()
    model.hideOutput()
    model.setParam("limits/time", max(time_limit, 0.01))
    model.setParam("parallel/maxnthreads", 1)
    for group, level in SCIP_SETTINGS.items():
        getattr(model, f"set{group.capitalize()}")(getattr(pyscipopt.SCIP_PARAMSETTING, level))
    n_cols = prog.cost.shape[0]
    lb = np.where(np.isfinite(prog.lb), prog.lb, -model.infinity())
    ub = np.where(np.isfinite(prog.ub), prog.ub, model.infinity())
    xs = [model.addVar(lb=float(lb[c]), ub=float(ub[c]), vtype="B" if prog.integrality[c] else "C", obj=float(prog.cost[c])) for c in range(n_cols)]
    a_ub = sparse.vstack([prog.a_ub, gap[0]], format="csr")
    b_ub = np.append(prog.b_ub, gap[1])
    for mat, rhs, eq in ((a_ub, b_ub, False), (prog.a_eq, prog.b_eq, True)):
        for r in range(mat.shape[0]):
            lo_, hi_ = mat.indptr[r], mat.indptr[r + 1]
            expr = pyscipopt.quicksum(float(v) * xs[c] for c, v in zip(mat.indices[lo_:hi_], mat.data[lo_:hi_]))
            model.addCons(expr == float(rhs[r]) if eq else expr <= float(rhs[r]))
    square = prog.norm is Norm.L2
    if square:
        tau = model.addVar(lb=0.0, ub=cutoff * cutoff if math.isfinite(cutoff) else None, obj=1.0)
        model.addCons(pyscipopt.quicksum(xs[c] * xs[c] for c in range(prog.n)) <= tau)
    if math.isfinite(cutoff):
        model.setObjlimit(cutoff * cutoff if square else cutoff)
    model.optimize()
    status = model.getStatus()
    x = None
    value = math.inf
    if model.getNSols() > 0:
        x = np.array([model.getVal(v) for v in xs])
        value = float(np.linalg.norm(x[:prog.n], {Norm.L1: 1, Norm.L2: 2, Norm.LINF: np.inf}[prog.norm]))
    bound = float(model.getDualbound())
    if square:
        bound = math.sqrt(max(bound, 0.0)) if math.isfinite(bound) else bound
    if status == "optimal":
        return "optimal", value, min(bound, value), x
    if status == "infeasible":
        return "limit", math.inf, cutoff, None
    if status == "timelimit":
        return "timeout", value, bound, x
    raise SolverError(f"SCIP ended with status {status!r}")


def _solve_highs(prog: MarginProgram, gap: tuple[sparse.csr_matrix, float], cutoff: float,
                 time_limit: float) -> tuple[str, float, float, np.ndarray | None]:
    """(status, value, dual bound, x) of one target's MILP with HiGHS (scipy.optimize.milp)."""
    from scipy.optimize import Bounds as VarBounds
    from scipy.optimize import LinearConstraint, milp

    cons = [LinearConstraint(sparse.vstack([prog.a_ub, gap[0]], format="csr"), -np.inf, np.append(prog.b_ub, gap[1]))]
    if prog.a_eq.shape[0]:
        cons.append(LinearConstraint(prog.a_eq, prog.b_eq, prog.b_eq))
    if math.isfinite(cutoff):
        cons.append(LinearConstraint(sparse.csr_matrix(prog.cost[None, :]), -np.inf, cutoff))
    res = milp(prog.cost, constraints=cons, integrality=prog.integrality, bounds=VarBounds(prog.lb, prog.ub),
               options={"time_limit": max(time_limit, 0.01), "disp": False})
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else 0.0
    if res.status == 0:
        return "optimal", float(res.fun), min(bound, float(res.fun)), res.x
    if res.status == 2:
        return "limit", math.inf, cutoff, None
    if res.status == 1:
        x = res.x if res.x is not None else None
        return "timeout", float(res.fun) if x is not None else math.inf, bound, x
    raise SolverError(f"HiGHS ended with status {res.status}: {res.message}")


def solve_margin(prog: MarginProgram, ref: int, *, cutoff: float, deadline: float, solver: str) -> MilpOutcome:
    """Solve every target's program in the order of its relaxation bound, pruning with the incumbent.

    ``cutoff``: a value every program may stop at (the caller's verified upper bound, slightly enlarged);
    a program with no solution below it proves the target's margin is at least the cutoff.
    """
    run = _solve_scip if solver == "scip" else _solve_highs
    classes = [j for j in range(prog.out_w.shape[0]) if j != ref]
    relax = {j: relaxation_bound(prog, ref, j) for j in classes}
    outcomes: list[TargetOutcome] = []
    best, best_x, best_j = math.inf, None, -1
    timed_out = False
    for j in sorted(classes, key=lambda c: relax[c]):
        cut = min(cutoff, best)
        out = TargetOutcome(j, relax[j], relax[j])
        outcomes.append(out)
        if relax[j] >= cut:
            # every j-flip inside the ball has norm >= the relaxation; outside it, norm > radius
            out.lower = min(relax[j], prog.radius)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            out.status, timed_out = "unreached", True
            continue
        t0 = time.monotonic()
        status, value, bound, x = run(prog, prog.gap_row(ref, j), cut, left)
        out.seconds = time.monotonic() - t0
        out.status, out.value, out.x = status, value, x
        out.lower = min(max(relax[j], bound if status != "limit" else cut), prog.radius)
        if status == "timeout":
            timed_out = True
        if x is not None and value < best:
            best, best_x, best_j = value, x, j
    lower = min((o.lower for o in outcomes), default=math.inf)
    return MilpOutcome(lower, best, best_x, best_j, outcomes, timed_out, solver, prog.binaries)
