"""Seeded tiny networks of the exact-margin tests (enumeration and MILP)."""

from __future__ import annotations

import torch
from torch import nn


def two_relu_net() -> nn.Sequential:
    """z0 = 0.1, z1 = relu(x1 - 0.6) + relu(x2 - 0.6) on [0, 1]^2: from (0.5, 0.5) class 1 needs one
    coordinate at 0.7 (l1 = l2 = 0.2) or both at 0.65 (linf = 0.15), a non-convex flipping set."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.fill_(-0.6)
        net[2].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([0.1, 0.0]))
    return net


def tiny_net(seed: int, widths: tuple[int, ...] = (3, 5, 4, 3)) -> nn.Sequential:
    """A ReLU MLP whose classes all own part of [0, 1]^d: the output bias ties the logits at the centre."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for k in range(len(widths) - 1):
        lin = nn.Linear(widths[k], widths[k + 1])
        with torch.no_grad():
            lin.weight.copy_(2 * torch.randn(widths[k + 1], widths[k], generator=g))
            lin.bias.copy_(torch.randn(widths[k + 1], generator=g))
        layers += [lin, nn.ReLU()]
    net = nn.Sequential(*layers[:-1]).double()
    with torch.no_grad():
        centre = net(torch.full((1, widths[0]), 0.5, dtype=torch.float64))[0]
        net[-1].bias -= centre - 0.1 * torch.randn(widths[-1], generator=g, dtype=torch.float64)
    return net.float().eval()
