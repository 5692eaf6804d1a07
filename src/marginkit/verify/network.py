"""A classifier as a chain of affine maps with a ReLU between consecutive ones.

Bound propagation (CROWN, alpha-CROWN) and the big-M MILP of Tjeng et al. (2019) both need the network
in the form z_1 = A_1(x), z_k = A_k(relu(z_{k-1})), logits = z_n. :func:`as_relu_network` reads an
``nn.Sequential`` tree of Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d (eval statistics), AvgPool2d,
MaxPool2d, Dropout and Identity into that form:

- maps with no ReLU between them (Flatten, BatchNorm, AvgPool, Conv2d, Linear, ...) become one
  :class:`Affine` layer, a chain of primitive affine ops; a BatchNorm right after a Linear/Conv2d is
  folded into its weights, consecutive Linear maps are multiplied out;
- a max over a pooling window is rewritten exactly with ReLUs, pairwise:
  max(a, b) = relu(a - b) + relu(b) - relu(-b). A window of k entries adds ceil(log2 k) ReLU layers.
  After a ReLU the ``b`` entries are non-negative, so with interval bounds (which propagation always
  intersects with) relu(b) and relu(-b) are stable and cost neither relaxation nor binaries;
- a ReLU first (on the input) or last (on the logits) gets an identity affine layer on its other side.

Every op has ``forward`` (affine, with bias), ``linear`` (without the bias) and ``transpose`` (the linear part transposed: the
vector-Jacobian product used by backward bound propagation), batched over a leading dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UnsupportedLayerError", "Affine", "ReluNetwork", "as_relu_network", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = ("Sequential", "Linear", "Conv2d", "ReLU", "Flatten", "BatchNorm1d", "BatchNorm2d",
                    "AvgPool2d", "MaxPool2d (no padding, dilation 1)", "Dropout (eval)", "Identity")

# Consecutive Linear maps are multiplied out when the product has at most this many entries.
_MERGE_ENTRIES = 4_000_000


class UnsupportedLayerError(ValueError):
    """A module of the model that the ReLU-network reader cannot represent (named with its position)."""


# --------------------------------------------------------------------------------------------------
# primitive ops: each knows its in/out shapes (without batch), its forward (with bias) and transpose
# --------------------------------------------------------------------------------------------------


class _Op:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:  # (N, *in) -> (N, *out)
        raise NotImplementedError

    def linear(self, x: Tensor) -> Tensor:  # the linear part W x (no bias); ops without a bias override nothing
        return self.forward(x)

    def transpose(self, y: Tensor) -> Tensor:  # (K, *out) -> (K, *in), linear part only
        raise NotImplementedError

    def forward_abs(self, r: Tensor) -> Tensor:  # |W| r: the radius of an interval through the linear part
        raise NotImplementedError

    def params(self) -> Iterator[Tensor]:
        return iter(())


def _cast(t: Tensor, like: Tensor) -> Tensor:
    return t if (t.dtype == like.dtype and t.device == like.device) else t.to(dtype=like.dtype, device=like.device)


@dataclass(frozen=True, eq=False)
class LinearOp(_Op):
    weight: Tensor  # (out, in)
    bias: Tensor  # (out,)

    @property
    def in_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (int(self.weight.shape[1]),)

    @property
    def out_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (int(self.weight.shape[0]),)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))

    def linear(self, x: Tensor) -> Tensor:
        return F.linear(x, _cast(self.weight, x))

    def transpose(self, y: Tensor) -> Tensor:
        return y @ _cast(self.weight, y)

    def forward_abs(self, r: Tensor) -> Tensor:
        return r @ _cast(self.weight, r).abs().T

    def params(self) -> Iterator[Tensor]:
        return iter((self.weight, self.bias))


@dataclass(frozen=True, eq=False)
class ConvOp(_Op):
    weight: Tensor
    bias: Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, _cast(self.weight, x), _cast(self.bias, x), self.stride, self.padding, self.dilation, self.groups)

    def linear(self, x: Tensor) -> Tensor:
        return F.conv2d(x, _cast(self.weight, x), None, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, y: Tensor) -> Tensor:
        k = self.weight.shape[-2:]
        out_pad = tuple(
            self.in_shape[1 + i] - ((self.out_shape[1 + i] - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (k[i] - 1) + 1)
            for i in range(2)
        )
        return F.conv_transpose2d(y, _cast(self.weight, y), None, self.stride, self.padding, out_pad, self.groups, self.dilation)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.conv2d(r, _cast(self.weight, r).abs(), None, self.stride, self.padding, self.dilation, self.groups)

    def params(self) -> Iterator[Tensor]:
        return iter((self.weight, self.bias))


@dataclass(frozen=True, eq=False)
class ScaleShiftOp(_Op):
    """y = scale * x + shift per channel (dimension 0 of the sample shape): an unfolded BatchNorm."""

    scale: Tensor
    shift: Tensor
    in_shape: tuple[int, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.in_shape

    def _view(self, t: Tensor, like: Tensor) -> Tensor:
        return _cast(t, like).view(-1, *([1] * (len(self.in_shape) - 1)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self._view(self.scale, x) + self._view(self.shift, x)

    def linear(self, x: Tensor) -> Tensor:
        return x * self._view(self.scale, x)

    def transpose(self, y: Tensor) -> Tensor:
        return y * self._view(self.scale, y)

    def forward_abs(self, r: Tensor) -> Tensor:
        return r * self._view(self.scale, r).abs()

    def params(self) -> Iterator[Tensor]:
        return iter((self.scale, self.shift))


@dataclass(frozen=True, eq=False)
class ReshapeOp(_Op):
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def transpose(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], *self.in_shape)

    def forward_abs(self, r: Tensor) -> Tensor:
        return self.forward(r)


@dataclass(frozen=True, eq=False)
class AvgPoolOp(_Op):
    module: nn.AvgPool2d
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def transpose(self, y: Tensor) -> Tensor:
        # avg_pool2d is linear without bias, so its vector-Jacobian product is its transpose
        x = torch.zeros((1, *self.in_shape), dtype=y.dtype, device=y.device).expand(y.shape[0], *self.in_shape)
        out = torch.func.vjp(self.module, x)
        return out[1](y)[0]

    def forward_abs(self, r: Tensor) -> Tensor:  # non-negative weights
        return self.module(r)


@dataclass(frozen=True, eq=False)
class PairsOp(_Op):
    """For index pairs (a, b) of a flat input v: out = [v_a - v_b, v_b, -v_b] per pair, shape (3Q,)."""

    a: Tensor
    b: Tensor
    in_shape: tuple[int, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (3 * int(self.a.numel()),)

    def forward(self, x: Tensor) -> Tensor:
        v = x.reshape(x.shape[0], -1)
        va, vb = v[:, self.a.to(v.device)], v[:, self.b.to(v.device)]
        return torch.stack((va - vb, vb, -vb), dim=2).reshape(x.shape[0], -1)

    def transpose(self, y: Tensor) -> Tensor:
        g = y.reshape(y.shape[0], -1, 3)
        out = torch.zeros((y.shape[0], math.prod(self.in_shape)), dtype=y.dtype, device=y.device)
        out.index_add_(1, self.a.to(y.device), g[:, :, 0])
        out.index_add_(1, self.b.to(y.device), g[:, :, 2].neg() + g[:, :, 1] - g[:, :, 0])
        return out.reshape(y.shape[0], *self.in_shape)

    def forward_abs(self, r: Tensor) -> Tensor:
        v = r.reshape(r.shape[0], -1)
        ra, rb = v[:, self.a.to(v.device)], v[:, self.b.to(v.device)]
        same = (self.a == self.b).to(v.device)
        return torch.stack((torch.where(same, torch.zeros_like(ra), ra + rb), rb, rb), dim=2).reshape(r.shape[0], -1)


@dataclass(frozen=True, eq=False)
class CombineOp(_Op):
    """out_q = t_{3q} + t_{3q+1} - t_{3q+2}: after the ReLU, relu(a-b) + relu(b) - relu(-b) = max(a, b)."""

    out_shape: tuple[int, ...]

    @property
    def in_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (3 * math.prod(self.out_shape),)

    def forward(self, x: Tensor) -> Tensor:
        t = x.reshape(x.shape[0], -1, 3)
        return (t[:, :, 0] + t[:, :, 1] - t[:, :, 2]).reshape(x.shape[0], *self.out_shape)

    def transpose(self, y: Tensor) -> Tensor:
        g = y.reshape(y.shape[0], -1, 1)
        return torch.cat((g, g, -g), dim=2).reshape(y.shape[0], -1)

    def forward_abs(self, r: Tensor) -> Tensor:
        return r.reshape(r.shape[0], -1, 3).sum(2).reshape(r.shape[0], *self.out_shape)


# --------------------------------------------------------------------------------------------------
# the public layer and network
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Affine:
    """One affine map y = W x + b, stored as a chain of primitive ops applied left to right.

    ``forward``: (N, *in_shape) -> (N, *out_shape); ``transpose``: (K, *out_shape) -> (K, *in_shape),
    the linear part transposed (no bias); ``dense``: (W (out_features, in_features), b (out_features,)).
    An empty chain is the identity on ``shape``.
    """

    ops: tuple[_Op, ...]
    shape: tuple[int, ...] = ()  # the shape of an identity layer (used when ``ops`` is empty)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.ops[0].in_shape if self.ops else self.shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.ops[-1].out_shape if self.ops else self.shape

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    def forward(self, x: Tensor) -> Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x

    def transpose(self, y: Tensor) -> Tensor:
        for op in reversed(self.ops):
            y = op.transpose(y)
        return y

    def linear_bounds(self, mid: Tensor, rad: Tensor) -> tuple[Tensor, Tensor]:
        """Linear part of the centre/radius form of interval arithmetic, (N, *in_shape) -> (N, *out_shape).

        For any vectors l <= u with m = (u + l) / 2, r = (u - l) / 2: W+ l + W- u = W m - |W| r, and op by
        op |W_k| ... |W_1| >= |W_k ... W_1| entrywise, so (W m - R, W m + R) with R the returned radius
        bounds W v for every l <= v <= u. ``mid`` and ``rad`` may be linear functions (coefficient rows):
        the identity is linear, which forward-mode bound propagation uses.
        """
        for op in self.ops:
            mid, rad = op.linear(mid), op.forward_abs(rad)
        return mid, rad

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Interval bounds of the output for inputs in [lower, upper] (N, *in_shape), op by op (IBP)."""
        for op in self.ops:
            mid, rad = op.forward((upper + lower) / 2), op.forward_abs((upper - lower) / 2)
            lower, upper = mid - rad, mid + rad
        return lower, upper

    def forward_flat(self, x: Tensor) -> Tensor:
        """(N, in_features) -> (N, out_features)."""
        return self.forward(x.reshape(x.shape[0], *self.in_shape)).reshape(x.shape[0], -1)

    def transpose_flat(self, y: Tensor) -> Tensor:
        """(K, out_features) -> (K, in_features)."""
        return self.transpose(y.reshape(y.shape[0], *self.out_shape)).reshape(y.shape[0], -1)

    def bias(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """b = forward(0), flat (out_features,)."""
        zero = torch.zeros((1, *self.in_shape), dtype=dtype, device=self.device)
        return self.forward(zero).reshape(-1)

    @property
    def device(self) -> torch.device:
        for op in self.ops:
            for p in op.params():
                return p.device
        return torch.device("cpu")

    def dense(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        if len(self.ops) == 1 and isinstance(self.ops[0], LinearOp):
            op = self.ops[0]
            return op.weight.to(dtype).clone(), op.bias.to(dtype).clone()
        b = self.bias(dtype)
        if self.out_features <= self.in_features:
            eye = torch.eye(self.out_features, dtype=dtype, device=self.device)
            w = self.transpose_flat(eye)
        else:
            eye = torch.eye(self.in_features, dtype=dtype, device=self.device)
            w = (self.forward_flat(eye) - b).T.contiguous()
        return w, b


@dataclass(frozen=True, eq=False)
class ReluNetwork:
    """logits = L_n(relu(L_{n-1}(... relu(L_1(x))))): a ReLU between consecutive layers, none after the last."""

    layers: tuple[Affine, ...]
    input_shape: tuple[int, ...]

    @property
    def widths(self) -> list[int]:
        """Width of every ReLU layer (the pre-activations of layers 1..n-1)."""
        return [layer.out_features for layer in self.layers[:-1]]

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_features

    @property
    def device(self) -> torch.device:
        for layer in self.layers:
            if layer.ops:
                return layer.device
        return torch.device("cpu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of inputs (N, *input_shape), in the inputs' dtype."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer.forward(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h.reshape(h.shape[0], -1)

    __call__ = forward

    def dense(self, dtype: torch.dtype = torch.float64) -> list[tuple[Tensor, Tensor]]:
        """(W_k, b_k) of every layer on flattened activations, a ReLU between consecutive pairs."""
        return [layer.dense(dtype) for layer in self.layers]


# --------------------------------------------------------------------------------------------------
# reading a model
# --------------------------------------------------------------------------------------------------


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or type(module).__name__, module


def _check_finite(name: str, tensors: Sequence[Tensor]) -> None:
    for t in tensors:
        if not torch.isfinite(t).all():
            raise ValueError(f"layer {name!r} has non-finite parameters or statistics (NaN or inf): "
                             "bounds on such a network are meaningless")


def _unsupported(pos: int, name: str, module: nn.Module, why: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"layer {pos} {name!r} ({type(module).__name__}) is not supported{': ' + why if why else ''}; "
        f"supported: {', '.join(SUPPORTED_LAYERS)}, nested in nn.Sequential"
    )


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    assert bn.running_mean is not None and bn.running_var is not None
    var = bn.running_var.detach().double()
    scale = 1.0 / torch.sqrt(var + bn.eps)
    shift = -bn.running_mean.detach().double() * scale
    if bn.affine:
        scale = scale * bn.weight.detach().double()
        shift = shift * bn.weight.detach().double() + bn.bias.detach().double()
    return scale, shift


def _maxpool_pairs(shape: tuple[int, ...], module: nn.MaxPool2d, pos: int, name: str) -> tuple[list[tuple[Tensor, Tensor]], tuple[int, ...]]:
    """Index pairs of each tree level of the pairwise max over every pooling window, and the output shape."""
    k, s = _pair(module.kernel_size), _pair(module.stride if module.stride is not None else module.kernel_size)
    if _pair(module.padding) != (0, 0) or _pair(module.dilation) != (1, 1) or module.ceil_mode or module.return_indices:
        raise _unsupported(pos, name, module, "only MaxPool2d without padding, dilation, ceil_mode or return_indices is read")
    if len(shape) != 3:
        raise _unsupported(pos, name, module, f"needs (C, H, W) activations, got shape {shape}")
    c, h, w = shape
    ho, wo = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    if ho < 1 or wo < 1:
        raise _unsupported(pos, name, module, f"window {k} larger than the activation {shape}")
    ci = torch.arange(c).view(c, 1, 1, 1)
    oi = torch.arange(ho).view(1, ho, 1, 1) * s[0]
    oj = torch.arange(wo).view(1, 1, wo, 1) * s[1]
    di = torch.arange(k[0]).repeat_interleave(k[1]).view(1, 1, 1, -1)
    dj = torch.arange(k[1]).repeat(k[0]).view(1, 1, 1, -1)
    cols = ((ci * h + oi + di) * w + oj + dj).reshape(c * ho * wo, k[0] * k[1])  # window entries, flat
    levels: list[tuple[Tensor, Tensor]] = []
    # level 0 indexes the flat input; later levels index the previous level's maxima (window-major)
    cur = cols
    while True:
        m = cur.shape[1]
        if m == 1 and levels:
            break
        half = (m + 1) // 2
        a = cur[:, 0::2]
        b = torch.cat((cur[:, 1::2], cur[:, -1:]), dim=1)[:, :half] if m % 2 else cur[:, 1::2]
        levels.append((a.reshape(-1).contiguous(), b.reshape(-1).contiguous()))
        p = cur.shape[0]
        cur = torch.arange(p * half).view(p, half)
        if half == 1:
            break
    return levels, (c, ho, wo)


def _merge_linear(ops: list[_Op]) -> list[_Op]:
    """Multiply out consecutive Linear ops (exact, and cheaper for propagation) when the product is small."""
    out: list[_Op] = []
    for op in ops:
        prev = out[-1] if out else None
        if isinstance(op, LinearOp) and isinstance(prev, LinearOp) and op.weight.shape[0] * prev.weight.shape[1] <= _MERGE_ENTRIES:
            w = op.weight.double() @ prev.weight.double()
            b = op.weight.double() @ prev.bias.double() + op.bias.double()
            out[-1] = LinearOp(w.to(op.weight.dtype), b.to(op.weight.dtype))
        else:
            out.append(op)
    return out


def as_relu_network(model: nn.Module, input_shape: Sequence[int]) -> ReluNetwork:
    """Read ``model`` (an ``nn.Sequential`` tree, see the module docstring) as a :class:`ReluNetwork`.

    ``input_shape``: the shape of one input without the batch dimension. Raises
    :class:`UnsupportedLayerError` naming the first module it cannot represent (position and name) and
    ``ValueError`` on non-finite weights. The result's logits equal the model's up to float rounding.
    """
    shape = tuple(int(s) for s in input_shape)
    in_shape = shape
    layers: list[Affine] = []
    pending: list[_Op] = []
    relu_pending = False  # a ReLU was read and waits for the next affine op

    def close_layer() -> None:
        nonlocal pending
        ops = _merge_linear(pending)
        layers.append(Affine(tuple(ops), shape=shape))
        pending = []

    def add(op: _Op) -> None:
        nonlocal relu_pending
        if relu_pending:
            close_layer()
            relu_pending = False
        pending.append(op)

    def relu() -> None:
        nonlocal relu_pending
        relu_pending = True

    for pos, (name, m) in enumerate(_leaves(model, "")):
        _check_finite(name, [t for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()])
        if isinstance(m, (nn.Identity, nn.Dropout)):
            if isinstance(m, nn.Dropout) and m.training:
                raise _unsupported(pos, name, m, "Dropout in training mode is random; call model.eval()")
            continue
        if isinstance(m, nn.ReLU):
            relu()
        elif isinstance(m, nn.Flatten):
            end = m.end_dim if m.end_dim >= 0 else len(shape) + 1 + m.end_dim
            if m.start_dim != 1 or end != len(shape):
                raise _unsupported(pos, name, m, "only Flatten(start_dim=1, end_dim=-1) is read")
            new = (math.prod(shape),)
            if new != shape:
                add(ReshapeOp(shape, new))
            shape = new
        elif isinstance(m, nn.Linear):
            if shape != (m.in_features,):
                raise _unsupported(pos, name, m, f"expects {m.in_features} features, the activation has shape {shape}")
            bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device)
            add(LinearOp(m.weight.detach().clone(), bias.clone()))
            shape = (m.out_features,)
        elif isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise _unsupported(pos, name, m, "only zero padding is read")
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise _unsupported(pos, name, m, f"expects {m.in_channels} input channels, the activation has shape {shape}")
            with torch.no_grad():
                probe = torch.zeros((1, *shape), dtype=m.weight.dtype, device=m.weight.device)
                out_shape = tuple(m(probe).shape[1:])
            if isinstance(m.padding, str):  # "valid" or "same": the explicit (left, right, top, bottom) split
                lr_tb = m._reversed_padding_repeated_twice
                if lr_tb[0] != lr_tb[1] or lr_tb[2] != lr_tb[3]:
                    raise _unsupported(pos, name, m, "padding='same' with an asymmetric split is not read")
                pad = (int(lr_tb[2]), int(lr_tb[0]))
            else:
                pad = _pair(m.padding)
            bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels, dtype=m.weight.dtype, device=m.weight.device)
            add(ConvOp(m.weight.detach().clone(), bias.clone(), _pair(m.stride), pad, _pair(m.dilation), m.groups, shape, out_shape))
            shape = out_shape
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.training:
                raise _unsupported(pos, name, m, "BatchNorm in training mode uses batch statistics; call model.eval()")
            if m.running_mean is None or m.running_var is None:
                raise _unsupported(pos, name, m, "BatchNorm without running statistics (track_running_stats=False)")
            if (isinstance(m, nn.BatchNorm2d) and len(shape) != 3) or (isinstance(m, nn.BatchNorm1d) and len(shape) != 1):
                raise _unsupported(pos, name, m, f"activation shape {shape} does not match")
            scale, shift = _bn_scale_shift(m)
            prev = pending[-1] if pending and not relu_pending else None
            if isinstance(prev, LinearOp):  # fold: W' = diag(s) W, b' = s b + t
                pending[-1] = LinearOp((scale[:, None] * prev.weight.double()).to(prev.weight.dtype),
                                       (scale * prev.bias.double() + shift).to(prev.bias.dtype))
            elif isinstance(prev, ConvOp):
                pending[-1] = ConvOp((scale.view(-1, 1, 1, 1) * prev.weight.double()).to(prev.weight.dtype),
                                     (scale * prev.bias.double() + shift).to(prev.bias.dtype),
                                     prev.stride, prev.padding, prev.dilation, prev.groups, prev.in_shape, prev.out_shape)
            else:
                dt = m.running_mean.dtype
                add(ScaleShiftOp(scale.to(dt), shift.to(dt), shape))
        elif isinstance(m, nn.AvgPool2d):
            if len(shape) != 3:
                raise _unsupported(pos, name, m, f"needs (C, H, W) activations, got shape {shape}")
            with torch.no_grad():
                out_shape = tuple(m(torch.zeros((1, *shape))).shape[1:])
            add(AvgPoolOp(m, shape, out_shape))
            shape = out_shape
        elif isinstance(m, nn.MaxPool2d):
            levels, out_shape = _maxpool_pairs(shape, m, pos, name)
            for level, (a, b) in enumerate(levels):
                prev_width = int(levels[level - 1][0].numel()) if level else 0
                if level:
                    add(CombineOp((prev_width,)))
                add(PairsOp(a, b, shape if level == 0 else (prev_width,)))
                relu()
            add(CombineOp(out_shape))
            shape = out_shape
        else:
            raise _unsupported(pos, name, m)
    if relu_pending:  # a ReLU on the logits: an identity layer after it
        close_layer()
        layers.append(Affine((), shape=shape))
    elif pending or not layers:
        close_layer()
    return ReluNetwork(tuple(_fix_shapes(layers, in_shape)), in_shape)


def _fix_shapes(layers: list[Affine], in_shape: tuple[int, ...]) -> list[Affine]:
    # identity layers take the shape of the activation they pass on
    fixed: list[Affine] = []
    shape = in_shape
    for layer in layers:
        if not layer.ops:
            layer = Affine((), shape=shape)
        fixed.append(layer)
        shape = layer.out_shape
    return fixed
