import math

import pytest
import torch
from torch import nn

from marginkit.verify import ReluNetwork, UnsupportedLayerError, as_relu_network


def _randomise_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


def _dense_forward(net: ReluNetwork, x: torch.Tensor) -> torch.Tensor:
    h = x.double().reshape(x.shape[0], -1)
    pairs = net.dense()
    for i, (w, b) in enumerate(pairs):
        h = h @ w.T + b
        if i < len(pairs) - 1:
            h = h.relu()
    return h


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 3, 3, stride=2), nn.ReLU()), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))


def test_cnn_logits_and_dense_layers_match_the_model():
    model = _cnn()
    x = torch.rand(6, 1, 10, 10)
    net = as_relu_network(model, (1, 10, 10))
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(net(x), ref, atol=1e-5)
        assert torch.allclose(_dense_forward(net, x), ref.double(), atol=1e-5)
    # a ReLU between every pair: the maxpool adds ceil(log2 4) = 2 ReLU layers
    assert len(net.layers) == 6
    assert net.num_classes == 3


def test_transpose_is_the_adjoint_of_the_linear_part():
    net = as_relu_network(_cnn(), (1, 10, 10))
    torch.manual_seed(1)
    for layer in net.layers:
        u = torch.randn(3, *layer.in_shape, dtype=torch.float64)
        v = torch.randn(3, *layer.out_shape, dtype=torch.float64)
        lin = layer.forward(u) - layer.bias().view(1, *layer.out_shape)
        assert torch.allclose((v * lin).sum(), (layer.transpose(v) * u).sum(), atol=1e-9)


@pytest.mark.parametrize("kernel,stride,size", [(2, 2, 8), (3, 2, 9), (3, 1, 5), (1, 1, 4)])
def test_maxpool_rewritten_with_relus_is_exact(kernel, stride, size):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(kernel, stride), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(4))
    x = torch.rand(5, 2, size, size)
    model(x)
    model.eval()
    net = as_relu_network(model, (2, size, size))
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
        assert torch.allclose(_dense_forward(net, x), model(x).double(), atol=1e-5)
    assert len(net.layers) == 2 + max(1, math.ceil(math.log2(kernel * kernel)))


def test_consecutive_linear_maps_are_composed_and_relu_at_either_end_kept():
    torch.manual_seed(3)
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4, 6), nn.Linear(6, 5), nn.ReLU(), nn.ReLU(),
                          nn.Linear(5, 3), nn.ReLU()).eval()
    net = as_relu_network(model, (2, 2))
    assert [layer.out_features for layer in net.layers] == [4, 5, 3, 3]
    x = torch.randn(7, 2, 2)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
        assert torch.allclose(_dense_forward(net, x), model(x).double(), atol=1e-5)


def test_unsupported_layer_is_named_with_its_position():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sequential(nn.Tanh()), nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 '2\.0' \(Tanh\).*supported: .*Linear"):
        as_relu_network(model, (4,))
    with pytest.raises(UnsupportedLayerError, match="MaxPool2d"):
        as_relu_network(nn.Sequential(nn.MaxPool2d(2, padding=1)), (1, 4, 4))
    with pytest.raises(UnsupportedLayerError, match="BatchNorm1d.*training"):
        as_relu_network(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), (2,))


def test_non_finite_weights_are_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match="layer '2'.*non-finite"):
        as_relu_network(model, (3,))


def test_shape_mismatch_is_named():
    with pytest.raises(UnsupportedLayerError, match="expects 5 features"):
        as_relu_network(nn.Sequential(nn.Linear(5, 2)), (4,))


def test_demo_mlp_shaped_model_keeps_its_layers_as_linear():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    net = as_relu_network(model, (1, 3, 4))
    w, b = net.layers[1].dense()
    assert torch.equal(w, model[3].weight.double()) and torch.equal(b, model[3].bias.double())
    assert net.widths == [8, 8]
