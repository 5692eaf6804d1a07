import math

import numpy as np
import pytest
import torch
from torch import nn

from marginkit.verify import as_relu_network, certified_radius, certify
from marginkit.verify.radius import box_cap

from ._nets import abs_net, enumerated

NORMS = ("linf", "l2", "l1")


@pytest.mark.parametrize("norm", NORMS)
def test_certified_lower_never_exceeds_the_exact_margin(norm):
    model, x, exact = enumerated(norm)
    for method in ("ibp", "crown", "alpha-crown"):
        res = certify(model, x, norm=norm, upper=exact, method=method, rtol=0.01, alpha_steps=10)
        assert (res.lower <= exact * (1 + 1e-9)).all(), (method, res.lower, exact)
        assert (res.lower > 0).all()
        assert res.status == ["bracketed"] * x.shape[0]
    # on 2-D inputs the backward relaxation is nearly tight: CROWN reaches most of the exact margin
    crown = certify(model, x, norm=norm, upper=exact, method="crown", rtol=0.01)
    assert (crown.lower >= 0.5 * exact).all()


def test_known_radius_of_the_absolute_value_network():
    model = abs_net(threshold=0.2)
    x = torch.tensor([[0.5, 0.5], [0.4, 0.9], [0.62, 0.1]])
    margin = torch.tensor([0.2, 0.1, 0.08], dtype=torch.float64)  # 0.2 - |x_1 - 0.5|
    for norm in NORMS:
        crown = certify(model, x, norm=norm, upper=margin, method="crown", rtol=1e-3)
        assert (crown.lower <= margin * (1 + 1e-6)).all()
        assert (crown.lower >= margin * (1 - 1e-3) - 1e-6).all()
        ibp = certify(model, x, norm=norm, upper=margin, method="ibp", rtol=1e-3)
        assert ibp.lower[0].item() == pytest.approx(0.1, rel=2e-3)  # intervals double the chord: half the radius


def test_whole_box_certified_gives_infinite_margin_and_exact_status():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[2].weight.zero_()
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.rand(4, 2)
    res = certify(model, x, norm="l2", upper=torch.full((4,), math.inf), method="crown")
    assert torch.isinf(res.lower).all() and res.status == ["exact"] * 4


def test_misclassified_labels_and_columns():
    model = abs_net()
    x = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.05, 0.5]])
    labels = torch.tensor([0, 1, 1])  # the second is misclassified
    res = certify(model, x, labels, "linf", upper=np.array([0.2, 0.0, 0.25]), method="crown")
    assert res.status[1] == "misclassified" and res.lower[1].item() == 0.0 and res.upper[1].item() == 0.0
    assert res.status[0] == "bracketed" and res.status[2] == "bracketed"
    cols = res.columns()
    assert set(cols) == {"input_margin_lower", "input_margin_upper", "norm", "status", "method", "seconds"}
    assert cols["method"][0] == "crown" and all(len(v) == 3 for v in cols.values())
    assert cols["seconds"].sum() == pytest.approx(res.total_seconds)


def test_tolerance_and_bracket_contract():
    model, x, exact = enumerated("l2")
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    coarse = certified_radius(net, x, ref, "l2", upper=exact, method="crown", rtol=0.2)
    fine = certified_radius(net, x, ref, "l2", upper=exact, method="crown", rtol=1e-3)
    # both certified, the finer one within its tolerance of the coarser threshold and no further iterations wasted
    assert (coarse.lower <= fine.lower * (1 + 1e-12)).all()
    assert (fine.evaluations > coarse.evaluations).all()
    assert (fine.lower >= (1 - 0.2) * coarse.lower).all()


def test_box_cap_and_bad_arguments():
    assert box_cap("linf", 784, (0.0, 1.0)) == 1.0
    assert box_cap("l2", 4, (0.0, 1.0)) == 2.0
    assert box_cap("l1", 4, (0.0, 2.0)) == 8.0
    assert math.isinf(box_cap("l2", 4, None))
    model = abs_net()
    x = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ValueError, match="NaN or a negative"):
        certify(model, x, norm="l2", upper=torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="entries for 1 inputs"):
        certify(model, x, norm="l2", upper=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="rtol"):
        certify(model, x, norm="l2", upper=torch.tensor([0.1]), rtol=0.0)


@pytest.mark.filterwarnings("ignore:the model returned an all-zero input gradient")
def test_cnn_radius_stays_below_the_attack_on_the_receptive_field_path():
    from marginkit.attacks import input_margin

    from ._nets import tiny_demo_cnn

    model = tiny_demo_cnn(2)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    up = input_margin(model, x, norm="l2").upper
    res = certify(model, x, norm="l2", upper=up, method="crown", rtol=0.01)
    dense = certified_radius(as_relu_network(model, (1, 8, 8)), x, model(x).argmax(1), "l2", upper=up, method="crown",
                             intermediate="dense")
    ok = torch.isfinite(up)
    assert ok.all() and (res.lower[ok] <= up[ok] * (1 + 1e-9)).all()
    assert (res.lower > 0).any()
    assert torch.allclose(res.lower, dense.lower, rtol=1e-6)
