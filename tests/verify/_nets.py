"""Tiny seeded networks shared by the verify tests."""

import functools

import torch
from torch import nn


def tiny_mlp(seed: int = 0, width: int = 5, classes: int = 3) -> nn.Sequential:
    """A random 2-width-width-classes ReLU MLP whose first-layer hyperplanes cross the unit square
    (each passes through a random point of it), so decisions change inside the box."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))
    with torch.no_grad():
        w1 = torch.randn(width, 2, generator=g)
        model[0].weight.copy_(w1)
        model[0].bias.copy_(-(w1 * torch.rand(width, 2, generator=g)).sum(1))
        model[2].weight.copy_(torch.randn(width, width, generator=g))
        model[2].bias.copy_(0.1 * torch.randn(width, generator=g))
        model[4].weight.copy_(torch.randn(classes, width, generator=g))
        model[4].bias.copy_(0.1 * torch.randn(classes, generator=g))
    return model.eval()


def abs_net(centre: float = 0.5, threshold: float = 0.2) -> nn.Sequential:
    """Class 1 exactly when |x_1 - centre| > threshold: z = (threshold, relu(x_1 - c) + relu(c - x_1)).

    The margin of any class-0 point x in any l_p norm is threshold - |x_1 - centre| (move x_1 only).
    CROWN's chord bounds relu(a) + relu(-a) by eps on [-eps, eps], so it certifies exactly that radius;
    interval arithmetic bounds it by 2 eps and certifies half of it (at the centre).
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([-centre, centre]))
        model[2].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        model[2].bias.copy_(torch.tensor([threshold, 0.0]))
    return model.eval()


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 8), nn.ReLU(),
                         nn.Linear(8, 4)).eval()


@functools.lru_cache(maxsize=None)
def enumerated(norm: str) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A 2-4-4-3 network, 2 points (1 in l1 and linf, whose linear programs take longer) and their exact
    margins in ``norm`` (enumeration of activation regions)."""
    from marginkit.verify.enumerate import enumerate_margin

    model = tiny_mlp(width=4, seed=4)
    x = torch.rand(2, 2, generator=torch.Generator().manual_seed(1))[: 2 if norm == "l2" else 1]
    return model, x, torch.as_tensor(enumerate_margin(model, x, norm=norm).margin)


def tiny_demo_cnn(seed: int = 0) -> nn.Sequential:
    """The demo CNN's layout (conv, ReLU, max-pool twice, then a dense ReLU layer) on 1x8x8 inputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():  # centred, larger weights: decisions change inside the unit box
        for layer in (model[0], model[3], model[7], model[9]):
            layer.weight.mul_(3.0)
            layer.bias.copy_(-0.5 * layer.weight.sum(tuple(range(1, layer.weight.dim()))))
    return model
