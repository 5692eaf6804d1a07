import pytest
import torch
from torch import nn

from marginkit.attacks._oracle import SAFETY, SEARCH_FACTOR, Best, Oracle
from marginkit.attacks.fab import fab_rows
from marginkit.margins import affine_input_margin


def _two_class_affine() -> tuple[nn.Module, torch.Tensor]:
    """z_0 = 0, z_1 = w^T x + b with small logits (the flip test's scale is 1)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    w = torch.rand(6) * 0.4 + 0.1
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(6), w]))
        model.bias.copy_(torch.tensor([0.0, -float(w @ torch.full((6,), 0.5)) - 0.5]))  # gap -0.5 at x = 0.5
    return model.eval(), w


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_iterate_across_the_boundary_by_less_than_the_safety_margin_is_not_a_fixed_point(norm):
    """A FAB iterate with 0 < gap <= the flip test's margin is not accepted as adversarial, and it already
    satisfies the linearised constraint, so the projection leaves it in place: unless it is pulled back
    towards x_0 like an adversarial iterate, FAB stays there for ever and reports nothing."""
    model, w = _two_class_affine()
    x0 = torch.full((1, 6), 0.5)
    # on the segment from x_0 along w, past the boundary by half the flip test's margin
    start = x0 + (0.5 + SEARCH_FACTOR * SAFETY / 2) / float(w @ w) * w
    with torch.no_grad():
        gap = float(model(start)[0, 1] - model(start)[0, 0])
    assert 0 < gap <= SEARCH_FACTOR * SAFETY  # crossed, but not by enough to count
    oracle = Oracle(model, (6,), 1, torch.device("cpu"), budget=None, deadline=None, max_rows=8)
    best = Best(x0, torch.zeros(1, dtype=torch.long), norm)
    fab_rows(oracle, best, torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long), start.clone(),
             torch.zeros_like(x0), torch.ones_like(x0), best.norm, steps=30, patience=30)
    assert best.found.all()
    exact = float(affine_input_margin(model, x0, norm=norm).margin[0])
    # and FAB goes on towards the exact margin of this affine model
    assert exact <= float(best.value[0]) <= 1.1 * exact
