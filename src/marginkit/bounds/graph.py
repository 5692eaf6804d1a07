"""Conflict graphs and the optimal-loss lower bounds they give (Lemma 1 of the fixed-feature-extractor
paper; Bhagoji et al. 2019/2021 for f = identity).

Vertices are training points; an edge joins two points of different classes whose eps-neighbourhoods
collide after the feature extractor, i.e. eps_f(u, v) <= eps. The graph for a whole eps grid is kept as
one list of candidate pairs with their (verified, upper-bound) budgets eps_f: the graph at eps is the
pairs with budget <= eps. Since budgets are upper bounds on eps_f, the graph at eps is a SUBGRAPH of the
true conflict graph, so every loss computed from it is a valid lower bound (section 2, "Approximating").

Loss bounds over the polytope P = {0 <= q <= 1, B q <= 1} (eq. 1), q_v the probability that the optimal
classifier is correct on v under attack, P(v) the point weights (uniform by default):

* 0-1 loss: min sum_v P(v) (1 - q_v). For two classes (bipartite graph, uniform weights) it is the size of
  a maximum matching over n (Bhagoji et al. 2019), computed with scipy's Hopcroft-Karp; otherwise, and as
  a cross-check, the LP is solved with HiGHS.
* cross-entropy: min -sum_v P(v) log q_v over the same polytope (Bhagoji et al. 2021), an exponential-cone
  program solved with cvxpy + Clarabel. Isolated vertices get q_v = 1 and cost nothing, so only vertices
  with an edge enter the program.

Degree-2 multiclass generalisation: with more than two classes the same edges (pairs of different
classes) and the same polytope give a relaxation of the multiclass problem (hyperedges of degree > 2 are
ignored), hence still valid lower bounds; the 0-1 bound then uses the LP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PairBudgets", "ConflictGraph", "conflict_graph", "zero_one_bound", "cross_entropy_bound",
           "bound_curves", "BoundCurves"]


@dataclass
class PairBudgets:
    """Candidate edges: pairs (i, j) of points of different classes with their collision budget.

    ``budget[e]`` is a verified upper bound on eps_f(x_i, x_j) (``inf`` when no collision was searched
    for because the pair was pruned). ``labels`` are the class labels of the n vertices.
    """

    i: np.ndarray
    j: np.ndarray
    budget: np.ndarray
    labels: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return len(self.labels)

    def graph(self, eps: float) -> "ConflictGraph":
        return conflict_graph(self, eps)


@dataclass
class ConflictGraph:
    """The conflict graph at one budget ``eps``: ``edges`` (E, 2) vertex indices, ``labels`` (n,)."""

    eps: float
    edges: np.ndarray
    labels: np.ndarray

    @property
    def num_vertices(self) -> int:
        return len(self.labels)

    @property
    def bipartite(self) -> bool:
        return len(np.unique(self.labels)) <= 2

    def to_networkx(self):
        import networkx as nx

        g = nx.Graph()
        for v, y in enumerate(self.labels):
            g.add_node(v, label=int(y))
        g.add_edges_from(map(tuple, self.edges))
        return g


def conflict_graph(pairs: PairBudgets, eps: float) -> ConflictGraph:
    """Edges whose collision budget is at most ``eps``."""
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    keep = pairs.budget <= eps
    edges = np.stack([pairs.i[keep], pairs.j[keep]], axis=1).astype(np.int64)
    if len(edges) and (pairs.labels[edges[:, 0]] == pairs.labels[edges[:, 1]]).any():
        raise ValueError("a conflict edge joins two points of the same class")
    return ConflictGraph(float(eps), edges, np.asarray(pairs.labels))


def _weights(graph: ConflictGraph, weights: np.ndarray | None) -> np.ndarray:
    n = graph.num_vertices
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights must be a probability vector of shape ({n},)")
    return w


def _incidence(graph: ConflictGraph, cols: np.ndarray | None = None):
    """Sparse edge-vertex incidence matrix B (E x n), restricted to ``cols`` when given."""
    from scipy.sparse import csr_matrix

    e = len(graph.edges)
    n = graph.num_vertices
    rows = np.repeat(np.arange(e), 2)
    B = csr_matrix((np.ones(2 * e), (rows, graph.edges.reshape(-1))), shape=(e, n))
    return B if cols is None else B[:, cols]


def zero_one_bound(graph: ConflictGraph, weights: np.ndarray | None = None, method: str = "auto") -> float:
    """Smallest expected 0-1 loss any classifier (soft or hard) can reach under the graph's conflicts.

    ``method``: "matching" (bipartite, uniform weights: maximum matching / n), "lp" (HiGHS) or "auto".
    """
    n = graph.num_vertices
    if len(graph.edges) == 0:
        return 0.0
    if method == "auto":
        method = "matching" if graph.bipartite and weights is None else "lp"
    if method == "matching":
        if not graph.bipartite or weights is not None:
            raise ValueError("the matching bound needs a bipartite graph (two classes) and uniform weights")
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_bipartite_matching

        classes = np.unique(graph.labels)
        side = graph.labels == classes[0]
        a = np.flatnonzero(side)
        b = np.flatnonzero(~side)
        pos = np.empty(n, dtype=np.int64)
        pos[a] = np.arange(len(a))
        pos[b] = np.arange(len(b))
        ea, eb = graph.edges[:, 0], graph.edges[:, 1]
        swap = ~side[ea]
        ea, eb = np.where(swap, eb, ea), np.where(swap, ea, eb)
        adj = csr_matrix((np.ones(len(ea)), (pos[ea], pos[eb])), shape=(len(a), len(b)))
        match = maximum_bipartite_matching(adj, perm_type="column")
        return float((match >= 0).sum()) / n
    if method != "lp":
        raise ValueError(f"unknown method {method!r}: use auto, matching or lp")
    from scipy.optimize import linprog

    w = _weights(graph, weights)
    B = _incidence(graph)
    res = linprog(-w, A_ub=B, b_ub=np.ones(B.shape[0]), bounds=(0, 1), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the 0-1 bound LP: {res.message}")
    return float(max(0.0, 1.0 + res.fun))


def cross_entropy_bound(graph: ConflictGraph, weights: np.ndarray | None = None, solver: str = "CLARABEL",
                        fallback: str | None = "SCS") -> float:
    """Smallest expected cross-entropy (nats) any classifier can reach: min -sum P(v) log q_v over eq. (1).

    The objective is scaled by n (weights of order 1) which Clarabel needs on dense graphs; if ``solver``
    still fails, ``fallback`` (SCS at 1e-8 tolerances) is tried with a :class:`MarginkitWarning`.
    """
    import warnings

    import cvxpy as cp

    from ..checks import MarginkitWarning

    if len(graph.edges) == 0:
        return 0.0
    w = _weights(graph, weights)
    active = np.unique(graph.edges.reshape(-1))
    B = _incidence(graph, active)
    scale = float(graph.num_vertices)
    q = cp.Variable(len(active))
    prob = cp.Problem(cp.Minimize(-(scale * w[active]) @ cp.log(q)), [q <= 1, B @ q <= 1])
    tried = []
    for name in [solver] + ([fallback] if fallback and fallback != solver else []):
        opts = {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iters": 100_000} if name.upper() == "SCS" else {}
        try:
            prob.solve(solver=name, **opts)
        except cp.error.SolverError:
            tried.append(f"{name}: solver error")
            continue
        if prob.status == cp.OPTIMAL:
            if tried:
                warnings.warn(f"cross-entropy bound: {'; '.join(tried)}; solved with {name}", MarginkitWarning,
                              stacklevel=2)
            return float(max(0.0, prob.value / scale))
        tried.append(f"{name}: status {prob.status}")
    raise RuntimeError(f"the cross-entropy bound could not be solved ({'; '.join(tried)})")


@dataclass
class BoundCurves:
    """Lower bounds on the robust 0-1 and cross-entropy losses against a grid of budgets."""

    eps: np.ndarray
    zero_one: np.ndarray
    cross_entropy: np.ndarray
    edges: np.ndarray


def bound_curves(pairs: PairBudgets, eps_grid, weights: np.ndarray | None = None, cross_entropy: bool = True,
                 solver: str = "CLARABEL") -> BoundCurves:
    """Both bounds at every eps of the grid, from one set of pair budgets."""
    eps_grid = np.asarray(sorted(float(e) for e in eps_grid))
    z, c, ne = [], [], []
    for eps in eps_grid:
        g = conflict_graph(pairs, eps)
        z.append(zero_one_bound(g, weights))
        c.append(cross_entropy_bound(g, weights, solver) if cross_entropy else np.nan)
        ne.append(len(g.edges))
    return BoundCurves(eps_grid, np.array(z), np.array(c), np.array(ne))
