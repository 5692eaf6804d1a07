"""Conflict graphs and the 0-1 / cross-entropy bounds against closed forms and a second solver."""

import math

import numpy as np
import pytest

from marginkit.bounds import (ConflictGraph, PairBudgets, all_pairs, bound_curves, conflict_graph,
                              cross_entropy_bound, pairwise_input_budgets, zero_one_bound)


def _graph(edges, labels, eps=1.0):
    return ConflictGraph(eps, np.asarray(edges, dtype=np.int64).reshape(-1, 2), np.asarray(labels))


def test_single_edge_bounds():
    g = _graph([[0, 2]], [0, 0, 1, 1])
    assert zero_one_bound(g) == pytest.approx(1 / 4)
    # q = 1/2 on both ends of the edge: 2 * log 2 / n
    assert cross_entropy_bound(g) == pytest.approx(2 * math.log(2) / 4, rel=1e-5)


@pytest.mark.parametrize("a,b", [(1, 3), (2, 2), (3, 5)])
def test_complete_bipartite_closed_form(a, b):
    labels = [0] * a + [1] * b + [0, 1]  # two isolated vertices cost nothing
    edges = [[i, a + j] for i in range(a) for j in range(b)]
    n = len(labels)
    g = _graph(edges, labels)
    assert zero_one_bound(g) == pytest.approx(min(a, b) / n)
    # q = a/(a+b) on side A, b/(a+b) on side B minimises -(a log q + b log(1-q))
    expected = -(a * math.log(a / (a + b)) + b * math.log(b / (a + b))) / n
    assert cross_entropy_bound(g) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_matching_equals_lp_on_random_bipartite_graphs(seed):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 12 + [1] * 9)
    i, j = all_pairs(labels)
    keep = rng.random(len(i)) < 0.15
    g = _graph(np.stack([i[keep], j[keep]], 1), labels)
    assert zero_one_bound(g, method="matching") == pytest.approx(zero_one_bound(g, method="lp"), abs=1e-9)
    # networkx Hopcroft-Karp as a third opinion
    import networkx as nx

    m = nx.bipartite.maximum_matching(g.to_networkx(), top_nodes=set(range(12)))
    assert zero_one_bound(g) == pytest.approx(len(m) / 2 / len(labels))


def test_multiclass_degree_two_relaxation():
    # three points of three classes, all pairwise conflicting: q = 1/2 each is optimal for the relaxation
    g = _graph([[0, 1], [1, 2], [0, 2]], [0, 1, 2])
    assert not g.bipartite
    assert zero_one_bound(g) == pytest.approx(0.5, abs=1e-8)
    assert cross_entropy_bound(g) == pytest.approx(math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="bipartite"):
        zero_one_bound(g, method="matching")


def test_weights_change_the_bound_and_are_validated():
    g = _graph([[0, 1]], [0, 1])
    # heavier vertex 1 is classified correctly, the 0-1 loss is the lighter weight
    assert zero_one_bound(g, weights=np.array([0.2, 0.8])) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="probability"):
        zero_one_bound(g, weights=np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="probability"):
        cross_entropy_bound(g, weights=np.array([np.nan, 1.0]))


def test_input_space_graph_uses_half_distances():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    y = np.array([0, 1, 1])
    i, j = all_pairs(y)
    d = pairwise_input_budgets(x, x, "l2")[i, j]
    assert np.allclose(d, [2.5, 0.5])
    pb = PairBudgets(i, j, d, y)
    assert len(conflict_graph(pb, 0.49).edges) == 0
    assert len(conflict_graph(pb, 0.5).edges) == 1  # ||u - v|| <= 2 eps is an edge (closed balls)
    assert len(conflict_graph(pb, 2.5).edges) == 2
    assert pairwise_input_budgets(x[:1], x[1:2], "linf")[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="eps"):
        conflict_graph(pb, float("nan"))


def test_same_class_edge_rejected_and_curves_monotone():
    y = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="same class"):
        conflict_graph(PairBudgets(np.array([0]), np.array([1]), np.array([0.1]), y), 1.0)
    rng = np.random.default_rng(0)
    labels = np.array([0] * 8 + [1] * 8)
    i, j = all_pairs(labels)
    pb = PairBudgets(i, j, rng.uniform(0, 1, len(i)), labels)
    c = bound_curves(pb, [0.9, 0.1, 0.3, 0.6])
    assert np.all(np.diff(c.eps) > 0)
    assert np.all(np.diff(c.zero_one) >= -1e-12)
    assert np.all(np.diff(c.cross_entropy) >= -1e-6)
    assert np.all(c.zero_one <= 0.5 + 1e-12) and np.all(c.cross_entropy <= math.log(2) + 1e-6)


def test_multiclass_pipeline_from_points():
    """Three classes: every different-class pair is a candidate edge; the LP relaxation gives the 0-1 bound."""
    from marginkit.bounds import feature_chain, pair_budgets
    from marginkit.models import ModelSpec, build_model

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (9, 3))
    y = np.arange(9) % 3
    model = build_model(ModelSpec("mlp", (3,), 3, hidden=2, depth=1), seed=0)
    inp = pair_budgets(feature_chain(model, "input", (3,)), x, y)
    assert len(inp.i) == 27 and np.all(y[inp.i] != y[inp.j])
    relu = pair_budgets(feature_chain(model, "relu1", (3,)), x, y, prior=inp)
    assert np.all(relu.budget <= inp.budget + 1e-12)
    for eps in (0.1, 0.3, 0.6):
        g_in, g_relu = conflict_graph(inp, eps), conflict_graph(relu, eps)
        assert not g_in.bipartite
        assert zero_one_bound(g_relu) >= zero_one_bound(g_in) - 1e-9
        assert cross_entropy_bound(g_relu) >= cross_entropy_bound(g_in) - 1e-6
    # at a budget where every pair conflicts, q_v <= 1/2 for all v: the bound is 1/2 (0-1) and log 2 (CE)
    big = conflict_graph(inp, 10.0)
    assert zero_one_bound(big) == pytest.approx(0.5, abs=1e-8)
    assert cross_entropy_bound(big) == pytest.approx(math.log(2), rel=1e-5)


def test_neighbour_selection_keeps_each_vertex_best_partner():
    from marginkit.bounds.budgets import _select

    labels = np.array([0, 0, 0, 1, 1, 1])
    i, j = all_pairs(labels)
    ub = np.random.default_rng(0).uniform(0, 1, len(i))
    cand = np.ones(len(i), dtype=bool)
    cand[np.argmin(ub)] = False  # a non-candidate is never searched, however small its bound
    sel = _select(i, j, ub, cand, 1, None)
    assert cand[sel].all()
    for v in range(6):
        mine = np.flatnonzero(((i == v) | (j == v)) & cand)
        assert mine[np.argmin(ub[mine])] in sel
    assert len(_select(i, j, ub, cand, None, 3)) == 3
    assert len(_select(i, j, ub, cand, None, None)) == cand.sum()
