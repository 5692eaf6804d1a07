"""Boundary refinement: the line search closes the boundary along the segment to x_0 in a few forward
passes and only ever replaces a best point by a verified smaller one."""

import torch
from torch import nn

from marginkit.attacks._oracle import SEARCH_FACTOR, Best, Oracle, is_flipped
from marginkit.attacks.refine import line_search


def _setup(model, x0, far, rtol_scale=1.0):
    oracle = Oracle(model, (x0.shape[1],), x0.shape[0], torch.device("cpu"), None, None, 1024)
    with torch.no_grad():
        clean = model(x0)
    best = Best(x0, clean.argmax(1), "l2")
    best.offer(torch.arange(x0.shape[0]), far, model(far).detach(), code=0)
    return oracle, best, clean


def test_line_search_finds_the_affine_boundary_in_a_few_passes():
    torch.manual_seed(0)
    model = nn.Linear(10, 3).double().eval()
    x0 = torch.rand(32, 10, dtype=torch.float64)
    direction = torch.randn(32, 10, dtype=torch.float64)
    # push far enough along a random direction that every row flips (t where it first flips is the root)
    ts = torch.linspace(0, 50, 5001, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x0).argmax(1)
        path = model(x0[:, None, :] + ts[None, :, None] * direction[:, None, :])
        flips = path.argmax(2) != ref[:, None]
    keep = flips.any(1)
    x0, direction, flips = x0[keep], direction[keep], flips[keep]
    t_far = ts[flips.float().argmax(1)] * 2 + 1e-3
    far = x0 + t_far[:, None] * direction
    oracle, best, clean = _setup(model, x0, far)
    before = best.value.clone()
    line_search(oracle, best, torch.arange(x0.shape[0]), clean, rtol=1e-6)
    # the first point along the segment that passes the search's flip test, by bisection on the float64 model
    lo, hi = torch.zeros_like(t_far), t_far.clone()
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        with torch.no_grad():
            up = is_flipped(model(x0 + mid[:, None] * direction), best.ref, factor=SEARCH_FACTOR)
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    root_norm = hi * direction.norm(dim=1)
    assert (best.value <= before).all()
    assert (best.value >= root_norm * (1 - 1e-9)).all()
    assert (best.value <= root_norm * (1 + 1e-5)).all()
    with torch.no_grad():
        assert is_flipped(model(best.x), best.ref).all()
    # secant steps on a gap that is linear along the segment: a handful of passes, not a bisection
    assert float(oracle.forwards.double().mean()) <= 6


def test_line_search_never_worsens_a_point_on_the_boundary_of_a_relu_net():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double().eval()
    x0 = torch.rand(16, 8, dtype=torch.float64)
    far = (x0 + 4 * torch.randn(16, 8, dtype=torch.float64))
    oracle, best, clean = _setup(model, x0, far)
    found = best.found.clone()
    before = best.value.clone()
    line_search(oracle, best, torch.arange(16), clean)
    assert (best.value[found] <= before[found]).all() and (best.value[found] < before[found]).any()
    assert torch.isinf(best.value[~found]).all()
    with torch.no_grad():
        assert is_flipped(model(best.x[found]), best.ref[found]).all()
