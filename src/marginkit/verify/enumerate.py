"""Exact input margins of tiny ReLU networks by enumerating activation patterns (the soundness oracle).

On the closure of one activation region (a sign pattern of every hidden pre-activation) a ReLU network
is affine, and the region is a polyhedron {x : G x <= h}. The input margin of x0 for reference class i
is therefore

    d_in(x0) = min over regions R and classes j != i of
               min ||delta||_p  s.t.  x0 + delta in box,  x0 + delta in R,  f^j(x0 + delta) >= f^i(x0 + delta)

(the infimum over flipping perturbations, reached on the decision boundary like the affine closed forms
of :mod:`marginkit.margins.affine`). Each inner problem is a linear program for l1 / linf and a convex
QP for l2, both solved by Clarabel. Regions are enumerated neuron by
neuron as a depth-first tree: a partial pattern whose region misses the box, or whose smallest
perturbation already exceeds the best value found, is pruned with all its completions, so only the
regions the box meets are visited. The cost still grows exponentially with the number of hidden
neurons: this is the ground truth for tests on networks with a handful of neurons, never a tool for
real models (use :func:`marginkit.verify.exact_margin`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..norms import Norm, as_norm

__all__ = ["EnumerationResult", "Layers", "dense_layers", "min_norm_in_polyhedron", "enumerate_margin",
           "enumerate_margin_layers", "MAX_ENUMERATED_NEURONS"]

Layers = list[tuple[np.ndarray, np.ndarray]]
# A guard, not a tuned value: beyond this many hidden neurons the tree can hold millions of regions.
MAX_ENUMERATED_NEURONS = 24


@dataclass
class EnumerationResult:
    """Exact margins by enumeration: ``margin`` (N,) float64 (``inf`` when nothing in the box flips,
    0 for a label that is already misclassified), ``point`` (N, D) a minimiser on the decision boundary
    (NaN rows when infinite), ``target`` (N,) the class reached (-1 when none), ``regions`` (N,) the
    number of leaf programs solved."""

    margin: np.ndarray
    point: np.ndarray
    target: np.ndarray
    regions: np.ndarray
    norm: Norm


def dense_layers(model: nn.Module | Layers, input_shape: tuple[int, ...]) -> Layers:
    """The affine layers (W (out, in) float64, b) of a ReLU network, a ReLU between consecutive ones."""
    if isinstance(model, list):
        return [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)) for w, b in model]
    from .network import as_relu_network

    return [(w.detach().cpu().numpy(), b.detach().cpu().numpy())
            for w, b in as_relu_network(model, input_shape).dense(torch.float64)]


def min_norm_in_polyhedron(x0: np.ndarray, g: np.ndarray, h: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                           norm: Norm) -> tuple[float, np.ndarray | None]:
    """min ||delta||_p s.t. G (x0 + delta) <= h, lo <= x0 + delta <= hi: (value, delta), (inf, None) if empty.

    One conic program for Clarabel (interior point, about 1e-8 accurate): an LP over (delta, t) with
    |delta_k| <= t_k (l1) or <= t (linf), the QP min 1/2 ||delta||^2 for l2. Clarabel rather than the
    MILP's solvers keeps this oracle independent of them (and its per-call overhead is a few ms, where
    scipy's linprog pays tens of ms on these tiny programs).
    """
    import clarabel
    from scipy.sparse import block_diag, csc_matrix, hstack, identity, vstack

    n = x0.shape[0]
    rhs = h - g @ x0
    dlo, dhi = lo - x0, hi - x0
    if np.any(dlo > dhi):
        return math.inf, None
    m = 0 if norm is Norm.L2 else 1 if norm is Norm.LINF else n
    eye = identity(n, format="csc")
    rows = [hstack([csc_matrix(g), csc_matrix((g.shape[0], m))]), hstack([eye, csc_matrix((n, m))]),
            hstack([-eye, csc_matrix((n, m))])]
    b = [rhs, dhi, -dlo]
    if m:
        tcol = csc_matrix(np.ones((n, 1))) if m == 1 else eye
        rows += [hstack([eye, -tcol]), hstack([-eye, -tcol])]
        b += [np.zeros(n), np.zeros(n)]
    a = vstack(rows, format="csc")
    bvec = np.concatenate(b)
    p = block_diag([eye, csc_matrix((m, m))], format="csc") if norm is Norm.L2 else csc_matrix((n + m, n + m))
    q = np.concatenate([np.zeros(n), np.ones(m)])
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    sol = clarabel.DefaultSolver(p, q, a, bvec, [clarabel.NonnegativeConeT(a.shape[0])], settings).solve()
    status = str(sol.status)
    if "Infeasible" in status:
        return math.inf, None
    if status not in ("Solved", "AlmostSolved"):
        raise RuntimeError(f"Clarabel could not solve a region program: {status}")
    delta = np.clip(np.asarray(sol.x)[:n], dlo, dhi)
    value = {Norm.L1: np.abs(delta).sum(), Norm.L2: np.linalg.norm(delta), Norm.LINF: np.abs(delta).max(initial=0.0)}[norm]
    return float(value), delta


def _forward64(layers: Layers, x: np.ndarray) -> np.ndarray:
    a = x
    for k, (w, b) in enumerate(layers):
        a = a @ w.T + b
        if k < len(layers) - 1:
            a = np.maximum(a, 0.0)
    return a


def _margin_one(layers: Layers, x0: np.ndarray, ref: int, lo: np.ndarray, hi: np.ndarray,
                norm: Norm) -> tuple[float, np.ndarray | None, int, int]:
    """Depth-first enumeration for one sample: (margin, delta, target, leaves solved)."""
    n_in = x0.shape[0]
    best: list = [math.inf, None, -1, 0]

    def visit(k: int, a_map: np.ndarray, c_map: np.ndarray, rows: list[np.ndarray], rhs: list[float],
              done: list[int]) -> None:
        # a_map, c_map: pre-activations of layer k as an affine function of x; ``done`` the signs fixed so far
        if len(done) == a_map.shape[0]:
            act = np.array(done, dtype=np.float64)
            w, b = layers[k + 1]
            na, nc = w @ (act[:, None] * a_map), w @ (act * c_map) + b
            if k + 1 == len(layers) - 1:
                leaves(na, nc, rows, rhs)
            else:
                visit(k + 1, na, nc, rows, rhs, [])
            return
        i = len(done)
        for sign in (1, 0):
            # active: z_i >= 0  <=>  -A_i x <= c_i ;  inactive: A_i x <= -c_i
            row = -a_map[i] if sign else a_map[i]
            r = c_map[i] if sign else -c_map[i]
            g, h = np.vstack(rows + [row]), np.array(rhs + [r])
            value, _ = min_norm_in_polyhedron(x0, g, h, lo, hi, norm)
            if value < best[0]:
                visit(k, a_map, c_map, rows + [row], rhs + [r], done + [sign])

    def leaves(za: np.ndarray, zc: np.ndarray, rows: list[np.ndarray], rhs: list[float]) -> None:
        for j in range(za.shape[0]):
            if j == ref:
                continue
            # f^j >= f^ref  <=>  (A_ref - A_j) x <= c_j - c_ref
            g = np.vstack(rows + [za[ref] - za[j]])
            h = np.array(rhs + [zc[j] - zc[ref]])
            value, delta = min_norm_in_polyhedron(x0, g, h, lo, hi, norm)
            best[3] += 1
            if value < best[0]:
                best[0], best[1], best[2] = value, delta, j

    w0, b0 = layers[0]
    if len(layers) == 1:
        leaves(w0, b0, [], [])
    else:
        visit(0, w0, b0, [np.zeros(n_in)], [0.0], [])
    return best[0], best[1], best[2], best[3]


def enumerate_margin_layers(layers: Layers, inputs: np.ndarray, ref: np.ndarray, norm: Norm | str = "linf", *,
                            bounds: tuple[float, float] = (0.0, 1.0)) -> EnumerationResult:
    """:func:`enumerate_margin` on dense layers (float64 numpy); ``ref`` the reference class per row.

    A sample whose reference class does not win at x0 (a misclassified label) has margin 0.
    """
    norm = as_norm(norm)
    hidden = sum(w.shape[0] for w, _ in layers[:-1])
    if hidden > MAX_ENUMERATED_NEURONS:
        raise ValueError(f"enumeration is for tiny networks: {hidden} hidden neurons > {MAX_ENUMERATED_NEURONS}")
    x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    if x.shape[1] != layers[0][0].shape[1]:
        raise ValueError(f"inputs have {x.shape[1]} features, the first layer expects {layers[0][0].shape[1]}")
    n = x.shape[0]
    margin = np.full(n, math.inf)
    point = np.full_like(x, np.nan)
    target = np.full(n, -1, dtype=np.int64)
    regions = np.zeros(n, dtype=np.int64)
    lo = np.full(x.shape[1], float(bounds[0]))
    hi = np.full(x.shape[1], float(bounds[1]))
    logits = _forward64(layers, x)
    for s in range(n):
        z = logits[s]
        others = np.delete(z, ref[s])
        if others.size and others.max() >= z[ref[s]]:
            margin[s], point[s], target[s] = 0.0, x[s], int(np.delete(np.arange(z.size), ref[s])[others.argmax()])
            continue
        value, delta, j, leaves = _margin_one(layers, x[s], int(ref[s]), lo, hi, norm)
        margin[s], target[s], regions[s] = value, j, leaves
        if delta is not None:
            point[s] = x[s] + delta
    return EnumerationResult(margin, point, target, regions, norm)


def enumerate_margin(model: nn.Module | Layers, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                     norm: Norm | str = "linf", *, bounds: tuple[float, float] = (0.0, 1.0)) -> EnumerationResult:
    """Exact input margins of a tiny ReLU network by exhaustive enumeration of its activation regions.

    ``model``: a feed-forward ReLU network (see :func:`marginkit.verify.network.as_relu_network`) or its
    dense layers [(W, b), ...]. The reference class is the prediction, or ``labels`` when given.
    Everything is float64; the cost is exponential in the number of hidden neurons.
    """
    layers = dense_layers(model, tuple(inputs.shape[1:]))
    x = inputs.detach().cpu().double().reshape(inputs.shape[0], -1).numpy()
    if labels is None:
        ref = _forward64(layers, x).argmax(1)
    else:
        from ..checks import check_labels

        ref = check_labels(labels, x.shape[0], layers[-1][0].shape[0]).cpu().numpy()
    return enumerate_margin_layers(layers, x, ref, norm, bounds=bounds)
