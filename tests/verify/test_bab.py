import functools
import math

import pytest
import torch

from marginkit.margins.gap import specification_matrix
from marginkit.verify import as_relu_network, certified_radius, certify, spec_lower_bounds
from marginkit.verify.bab import BabOptions, bab_bounds, bab_radius

from ._nets import abs_net, enumerated, tiny_mlp

NORMS = ("linf", "l2", "l1")
FAST = BabOptions(time_limit=10.0, alpha_steps=20)


@functools.lru_cache(maxsize=None)
def loose():
    """A 2-6-6-3 network and 3 points whose exact margins are known; CROWN certifies well below them."""
    from marginkit.verify.enumerate import enumerate_margin

    model = tiny_mlp(seed=1, width=6)
    x = torch.rand(3, 2, generator=torch.Generator().manual_seed(1))
    return model, x, {norm: torch.as_tensor(enumerate_margin(model, x, norm=norm).margin) for norm in NORMS}


def _ball_points(x: torch.Tensor, eps: torch.Tensor, norm: str, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape[0], m, x.shape[1], generator=g, dtype=torch.float64)
    p = {"linf": math.inf, "l2": 2.0, "l1": 1.0}[norm]
    d = d / torch.linalg.vector_norm(d, ord=p, dim=-1, keepdim=True)
    r = torch.rand(x.shape[0], m, 1, generator=g, dtype=torch.float64) ** 0.25
    return (x.double()[:, None] + eps.double()[:, None, None] * r * d).clamp(0, 1)


@pytest.mark.parametrize("norm", NORMS)
def test_bab_bound_is_sound_and_at_least_alpha_crown(norm):
    model, x, exact = loose()
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    eps = exact[norm] * 0.95
    alpha = spec_lower_bounds(net, x, ref, eps, norm, method="alpha-crown", alpha_steps=20)
    res = bab_bounds(net, x, ref, eps, norm, options=FAST)
    assert (res.lower >= alpha - 1e-9).all()
    assert (res.lower >= res.root - 1e-12).all()
    # CROWN alone leaves a row non-positive on this network; branch and bound verifies every point
    assert (alpha.min(1).values <= 0).any()
    assert res.status == ["verified"] * 3, res.status
    # sound: no sampled point of the set has a smaller gap than the bound of its row
    pts = _ball_points(x, eps, norm, 2000, seed=0)
    with torch.no_grad():
        logits = model.double()(pts.reshape(-1, 2)).reshape(3, 2000, -1)
    model.float()
    gaps = torch.einsum("nkc,nmc->nmk", specification_matrix(ref, 3, dtype=torch.float64), logits)
    assert (gaps >= res.lower[:, None] - 1e-9).all()


@pytest.mark.parametrize("norm", NORMS)
def test_bab_never_verifies_past_the_exact_margin(norm):
    model, x, exact = loose()
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    res = bab_bounds(net, x, ref, exact[norm] * 1.02, norm, options=BabOptions(time_limit=0.5))
    assert not res.verified.any()
    assert set(res.status) <= {"falsified", "stuck", "timed-out"}
    assert (res.lower.min(1).values <= 1e-9).all()


@pytest.mark.parametrize("norm", NORMS)
def test_bab_radius_between_alpha_crown_and_exact(norm):
    model, x, exact = loose()
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    start = certified_radius(net, x, ref, norm, upper=exact[norm], method="crown").lower
    res = bab_radius(net, x, ref, norm, upper=exact[norm], start=start, options=BabOptions(time_limit=1.0), rtol=0.05)
    assert (res.lower >= start).all()
    assert (res.lower <= exact[norm] * (1 + 1e-9)).all()
    # CROWN is loose here (below 0.9 of the exact margin on some point); branch and bound moves past it
    # (its first step is 10% above the start: twice the tolerance)
    loose_pt = start / exact[norm] < 0.9
    assert loose_pt.any()
    assert (res.lower[loose_pt] > start[loose_pt] * 1.04).any()


@pytest.mark.slow
def test_bab_reaches_the_exact_margin_with_enough_budget():
    model, x, exact = loose()
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    ex = exact["linf"]
    crown = certified_radius(net, x, ref, "linf", upper=ex, method="crown").lower
    res = bab_radius(net, x, ref, "linf", upper=ex, options=BabOptions(time_limit=20.0), rtol=0.005)
    assert (crown / ex).min() < 0.5
    assert torch.allclose(res.lower, ex, rtol=0.01, atol=0), (res.lower / ex)


@pytest.mark.parametrize("norm", NORMS)
def test_enumerated_net_bab_radius_below_exact(norm):
    model, x, margin = enumerated(norm)
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    res = bab_radius(net, x, ref, norm, upper=margin, options=BabOptions(time_limit=1.0), rtol=0.01)
    assert (res.lower <= margin * (1 + 1e-9)).all()
    assert (res.lower >= 0.9 * margin).all()


def test_time_out_keeps_the_unrefined_bound():
    model, x, exact = loose()
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    eps = exact["linf"] * 0.99
    res = bab_bounds(net, x, ref, eps, "linf", options=BabOptions(time_limit=0.0))
    hard = (res.root <= 0).any(1)
    assert hard.any()
    assert all(s == "timed-out" for s, h in zip(res.status, hard) if h)
    assert torch.equal(res.lower[hard], res.root[hard])
    # a radius search without time returns its start, never more than the upper bound
    start = torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64)
    rad = bab_radius(net, x, ref, "linf", upper=exact["linf"], start=start, options=BabOptions(time_limit=0.0))
    assert torch.equal(rad.lower, start)


def test_domain_budget_and_hand_built_net():
    # |x_1 - 0.5| < 0.2 is class 0: CROWN is exact on this net (docstring of abs_net), so no branching
    model = abs_net()
    x = torch.tensor([[0.5, 0.5], [0.6, 0.3]])
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    res = bab_radius(net, x, ref, "linf", upper=torch.tensor([0.2, 0.1], dtype=torch.float64), options=BabOptions(time_limit=2.0))
    assert torch.allclose(res.lower, torch.tensor([0.2, 0.1], dtype=torch.float64), rtol=0.011)
    model, x, exact = loose()
    net = as_relu_network(model, (2,))
    ref = model(x).argmax(1)
    one = bab_bounds(net, x, ref, exact["l2"] * 0.99, "l2", options=BabOptions(max_domains=1, time_limit=10.0))
    assert (one.domains <= 2 * 256 + 1).all()
    assert (one.lower >= one.root - 1e-12).all()


def test_certify_method_bab():
    model, x, exact = loose()
    res = certify(model, x[:1], norm="l2", upper=exact["l2"][:1], method="bab", time_limit=1.0)
    base = certify(model, x[:1], norm="l2", upper=exact["l2"][:1], method="alpha-crown")
    assert res.method == "bab" and res.settings["time_limit"] == 1.0
    assert (res.lower >= base.lower - 1e-12).all()
    assert (res.lower <= exact["l2"][:1] * (1 + 1e-9)).all()
    assert res.status == ["bracketed"]


def test_bad_options():
    with pytest.raises(ValueError):
        BabOptions(batch=0)
    with pytest.raises(ValueError):
        BabOptions(time_limit=-1.0)


def test_estimator_passes_method_bab():
    import numpy as np

    from marginkit.norms import Norm
    from marginkit.pipeline.estimate import input_margin_columns

    model, x, exact = loose()
    cols = input_margin_columns(model, x[:1], Norm.L2, "certify", bounds=(0.0, 1.0),
                                verify_options={"method": "bab", "time_limit": 0.5})
    assert list(cols["method"]) == ["bab"]
    assert 0 < cols["input_margin_lower"][0] <= cols["input_margin_upper"][0]
    assert np.isfinite(cols["input_margin_lower"]).all()
