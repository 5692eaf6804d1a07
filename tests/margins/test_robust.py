"""Robust accuracy from margins: the definition, checked by counting, and its users agree with it."""

import numpy as np
import pytest
import torch

from marginkit.margins.robust import robust_accuracy, robust_accuracy_curve


def test_counts_correct_samples_with_margin_above_eps():
    d = np.array([0.1, 0.5, np.inf, 0.3, 0.0])
    correct = np.array([True, True, True, False, True])
    # eps = 0.2: samples 1 (0.5) and 2 (inf) are correct with d > eps; 3 is wrong; 0 and 4 are too close.
    assert robust_accuracy(d, 0.2, correct) == pytest.approx(2 / 5)
    assert robust_accuracy(d, 0.5, correct) == pytest.approx(1 / 5)  # d > eps is strict
    assert robust_accuracy(d, 0.2) == pytest.approx(3 / 5)  # no mask: every margin counts
    assert robust_accuracy_curve(torch.tensor(d), [0.0, 0.2, 1e9], torch.tensor(correct)) == pytest.approx([0.6, 0.4, 0.2])


def test_random_tables_against_a_loop():
    rng = np.random.default_rng(0)
    d = rng.exponential(size=200)
    d[rng.random(200) < 0.1] = np.inf
    c = rng.random(200) < 0.8
    for eps in (0.0, 0.3, 1.0, 3.0):
        assert robust_accuracy(d, eps, c) == sum(ci and di > eps for ci, di in zip(c, d)) / 200


@pytest.mark.parametrize("margins, eps, correct, match", [
    ([0.1, float("nan")], 0.1, None, "NaN"),
    ([0.1, -0.2], 0.1, None, "negative"),
    ([0.1, 0.2], -1, None, "eps"),
    ([0.1, 0.2], float("inf"), None, "eps"),
    ([0.1, 0.2], 0.1, [True], "entries"),
    ([], 0.1, None, "empty"),
])
def test_bad_input(margins, eps, correct, match):
    with pytest.raises(ValueError, match=match):
        robust_accuracy(margins, eps, correct)


def test_consistency_and_training_use_the_same_formula():
    from marginkit.consistency import robust_accuracy as from_consistency
    from marginkit.training.evaluation import accuracy_from_margins

    d, c = torch.tensor([0.2, 0.7, 1.5]), torch.tensor([True, False, True])
    assert from_consistency is robust_accuracy
    assert accuracy_from_margins(d, c, [0.5]) == [robust_accuracy(d, 0.5, c)]
