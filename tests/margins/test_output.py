import numpy as np
import pytest
import torch
from torch import nn

from marginkit.margins import (affine_input_margin_solver, equidistance_summary, feature_margin, head_distances,
                               logit_margin, output_margins)
from marginkit.models import ModelSpec, build_model, split_head


def _logits(seed=0, n=50, c=6):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_logit_margin_is_top1_minus_top2():
    z = _logits()
    top = z.topk(2, dim=1).values
    torch.testing.assert_close(logit_margin(z), top[:, 0] - top[:, 1])
    assert (logit_margin(z) >= 0).all()


def test_logit_margin_with_labels_sign_and_invariances():
    z = _logits(1)
    y = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(2))
    m = logit_margin(z, y)
    wrong = z.argmax(1) != y
    assert (m[wrong] <= 0).all() and (m[~wrong] >= 0).all()
    # the margin of the decision equals the labelled margin when the label is the prediction
    torch.testing.assert_close(logit_margin(z, z.argmax(1)), logit_margin(z))
    # shift invariance and positive homogeneity
    torch.testing.assert_close(logit_margin(z + 3.0, y), m)
    torch.testing.assert_close(logit_margin(2.5 * z, y), 2.5 * m)


def test_feature_margin_equals_exact_unboxed_input_margin_of_a_linear_model():
    """Eq. (2) with h = identity is the exact input margin without a box (checked against HiGHS/Clarabel)."""
    model = build_model(ModelSpec("linear", (7,), 4), seed=3).double()
    x = torch.rand(12, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    split = split_head(model)
    logits = model(x)
    for norm in ("l1", "l2", "linf"):
        fm = feature_margin(logits, split.weight, norm)
        ref = affine_input_margin_solver(model, x, norm=norm, bounds=None).margin
        np.testing.assert_allclose(fm.detach().numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)


def test_feature_margin_is_logit_margin_over_omega_for_equidistant_heads():
    """Eq. (3): with ||w_i - w_j|| = omega for all pairs the feature margin is d_out / omega."""
    w = torch.eye(4, dtype=torch.float64) * 3.0  # pairwise l2 distance 3*sqrt(2)
    z = _logits(5, c=4)
    fm = feature_margin(z, w, "l2")
    torch.testing.assert_close(fm, logit_margin(z) / (3.0 * 2 ** 0.5))
    eq = equidistance_summary(w, "l2")
    assert eq.relative_iqr == pytest.approx(0.0, abs=1e-12)


def test_head_distances_use_the_dual_norm():
    w = torch.tensor([[0.0, 0.0], [3.0, -4.0]])
    d_linf_input = head_distances(w, "linf")  # dual is l1
    d_l1_input = head_distances(w, "l1")  # dual is linf
    assert d_linf_input[0, 1] == pytest.approx(7.0) and d_l1_input[0, 1] == pytest.approx(4.0)


def test_output_margins_one_pass_matches_parts():
    model = build_model(ModelSpec("mlp", (1, 8, 8), 5, hidden=16, depth=2), seed=0)
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    om = output_margins(model, x, norm="linf", batch_size=7, keep_features=True)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(om.logits, logits)
    torch.testing.assert_close(om.logit_margin, logit_margin(logits))
    torch.testing.assert_close(om.feature_margin, feature_margin(logits, split_head(model).weight, "linf"))
    assert om.features.shape == (30, 16)


def test_output_margins_without_a_linear_head_has_no_feature_margin():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softplus()).eval()
    om = output_margins(model, torch.rand(5, 4))
    assert om.feature_margin is None and om.logit_margin.shape == (5,)


def test_output_margins_rejects_non_finite_logits():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    with pytest.raises(ValueError, match="non-finite"):
        output_margins(Bad().eval(), torch.rand(4, 2))
