"""Bound propagation on ReLU networks: IBP, CROWN (DeepPoly) and alpha-CROWN over S = B_p(x, eps) ∩ box.

The decision for reference class i is certified on S when every row of the specification
C = marginkit.margins.gap.specification_matrix(ref, C) (rows e_i - e_j) has a positive lower bound of
C f(x') over x' in S.

- **IBP** (Gowal et al. 2018, interval bound propagation): the first layer's pre-activations are bounded
  exactly over S (it is affine, see *Concretisation*), later layers by interval arithmetic; the last
  layer is folded into C (the bound of C W_n h + C b_n over the interval of h).
- **CROWN** (Zhang et al. 2018, "Efficient neural network robustness certification with general
  activation functions", Theorem 3.2; DeepPoly, Singh et al. 2019): every unstable ReLU (l < 0 < u) is
  relaxed by the upper line u (z - l) / (u - l) and a lower line alpha z with alpha = 1 if u >= -l else 0
  (the adaptive choice); a linear function of the output is pushed backwards through the transposed
  layers, choosing the upper or lower line by the sign of its coefficient, and concretised over S.
  Intermediate pre-activation bounds come from the same backward pass, layer by layer, for the neurons
  that interval arithmetic leaves unstable, and are intersected with the interval bounds.
- **alpha-CROWN** (Xu et al. 2021, "Fast and complete", section 3.1): the lower slopes alpha in [0, 1]
  become per-(sample, specification row, neuron) variables, optimised by projected Adam on the sum of
  the specification bounds (``alpha_steps``). Intermediate bounds are CROWN's, or, with
  ``alpha_intermediate`` > 0, each intermediate neuron's bounds get their own slopes, optimised the
  same way for that many steps (more expensive: every unstable neuron is a row). Every iterate is a
  sound bound, so the best value per row over the iterates (the first one is CROWN's) is kept.

Each method returns the elementwise maximum of its bound and the cheaper methods' bounds (all are
sound), so CROWN is never looser than IBP and alpha-CROWN never looser than CROWN.

**Concretisation** of min_{x' in S} a^T x' (S = {||x' - x||_p <= eps, lo <= x' <= hi}):

- linf: S is the box [max(x - eps, lo), min(x + eps, hi)]: exact.
- l1 (specification rows): exact, a fractional knapsack: coordinates move, in decreasing order of |a_k|,
  as far as the box allows in the direction -sign(a_k) until the budget eps is spent.
- l2 (specification rows): the Lagrangian dual max_{lam >= 0} sum_k min_{d_k in [l_k, u_k]}
  (a_k d_k + lam d_k^2 / 2) - lam eps^2 / 2 + a^T x, with [l_k, u_k] the box above minus x; any lam gives a
  sound bound (weak duality), lam is found by a 12-step bisection on the sign of the dual's derivative,
  starting from the ball-only optimum ||a||_2 / eps (whose value is already at least the ball-only bound
  a^T x - eps ||a||_2).
- l1 / l2 (intermediate neurons, many rows): the larger of two cheap sound bounds: the box bound above,
  and the ball bound with the blocked directions removed, a^T x - eps ||a~||_q, where a~ zeroes the
  coordinates whose descent direction leaves the box at once (a_k > 0 with x_k = lo, a_k < 0 with
  x_k = hi: MNIST-like inputs sit on the box for most pixels).

**Intermediate layers** (``intermediate``): CROWN bounds each unstable neuron of a ReLU layer by one
backward pass. "dense" carries each pass as a full-width row through the transposed layers. On
convolutional networks a neuron depends on a small window of each layer below (its receptive field), so
"sparse" carries the row only over that window, the idea of auto_LiRPA's "patches" mode applied to
any sparse layer: each layer's nonzero weights are read once into a fan-in table (out, F) (the product
of its ops' sparse matrices), the receptive fields of a chunk of neurons are found by pushing index sets
down the tables (a window read by several output channels is computed once), and the pass gathers the
weights and scatter-adds into the window below. Same sums as the dense pass, in another order. "auto"
uses it for a layer when a row over the receptive fields costs less than a full-width row (a dense
layer above a convolution sees everything, so it stays dense), and only on networks with a convolution
or pooling below the last layer. "forward" (opt-in) bounds the intermediate layers by forward-mode
linear bounds in x (cost proportional to the input dimension, looser than the backward passes after a
few layers), with backward passes for a layer whose unstable neurons number at most ``backward_rows``
per sample afterwards; every mode intersects with the interval bounds.

Computation runs in float64 by default (``dtype``) on the network's device; samples and specification
or neuron rows are processed in chunks of at most ``max_elements`` entries per (rows, width) tensor.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..margins.gap import specification_matrix
from ..norms import Norm, as_norm
from .network import Affine, ReluNetwork

__all__ = ["METHODS", "preactivation_bounds", "spec_lower_bounds", "Bounds"]

METHODS = ("ibp", "crown", "alpha-crown")

_L2_DUAL_STEPS = 12
_MAX_ELEMENTS = 2**23  # entries of one (rows, width) tensor in a chunk: 64 MiB in float64
_BACKWARD_ROWS = 256  # forward mode: backward passes for a layer with at most this many unstable neurons left


# --------------------------------------------------------------------------------------------------
# the input set and its concretisation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    x: Tensor  # (n, D)
    eps: Tensor  # (n,)
    norm: Norm
    lo: float | None
    hi: float | None

    @property
    def xl(self) -> Tensor:
        low = self.x - self.eps[:, None]
        return low if self.lo is None else low.clamp_min(self.lo)

    @property
    def xu(self) -> Tensor:
        up = self.x + self.eps[:, None]
        return up if self.hi is None else up.clamp_max(self.hi)

    def subset(self, idx: slice) -> "_Input":
        return _Input(self.x[idx], self.eps[idx], self.norm, self.lo, self.hi)


def _box_bound(a: Tensor, xl: Tensor, xu: Tensor) -> Tensor:
    return (a.clamp_min(0) * xl[:, None]).sum(-1) + (a.clamp_max(0) * xu[:, None]).sum(-1)


def _masked_ball_bound(a: Tensor, inp: _Input) -> Tensor:
    ax = (a * inp.x[:, None]).sum(-1)
    keep_pos = (inp.x > inp.lo) if inp.lo is not None else torch.ones_like(inp.x, dtype=torch.bool)
    keep_neg = (inp.x < inp.hi) if inp.hi is not None else torch.ones_like(inp.x, dtype=torch.bool)
    am = torch.where(a > 0, a * keep_pos[:, None], a * keep_neg[:, None])
    q = inp.norm.dual.p
    return ax - inp.eps[:, None] * torch.linalg.vector_norm(am, ord=q, dim=-1)


def _l1_exact(a: Tensor, inp: _Input) -> Tensor:
    x, eps = inp.x[:, None], inp.eps[:, None, None]
    cap = torch.where(a > 0, x - inp.xl[:, None], inp.xu[:, None] - x)
    gain, order = a.abs().sort(dim=-1, descending=True)
    cap = cap.gather(-1, order)
    before = cap.cumsum(-1) - cap
    take = torch.minimum((eps - before).clamp_min(0), cap)
    return (a * x).sum(-1) - (gain * take).sum(-1)


def _l2_dual(a: Tensor, inp: _Input) -> Tensor:
    x, eps = inp.x[:, None], inp.eps[:, None]
    dl, du = inp.xl[:, None] - x, inp.xu[:, None] - x
    ax = (a * x).sum(-1)
    a_norm = torch.linalg.vector_norm(a, dim=-1)
    # any lam > 0 is sound; the floor keeps lam_hi * 2^-16 a normal number in float32 too
    lam_hi = (a_norm / eps.clamp_min(1e-30)).clamp_min(1e-20)
    lam_lo = lam_hi * 2.0**-16
    best = torch.full_like(ax, -math.inf)
    lam = lam_hi
    for step in range(_L2_DUAL_STEPS):
        d = (-a / lam[..., None]).clamp(dl, du)
        sq = (d * d).sum(-1)
        val = (a * d).sum(-1) + lam * (sq - eps * eps) / 2
        best = torch.maximum(best, val)
        too_long = sq > eps * eps  # the dual's derivative is positive: lam must grow
        lam_lo = torch.where(too_long, lam, lam_lo)
        lam_hi = torch.where(too_long, lam_hi, lam)
        lam = torch.sqrt(lam_lo * lam_hi)
    return torch.where((eps > 0) & (a_norm > 0), ax + best, ax)


def _concretize(a: Tensor, inp: _Input, tight: bool) -> Tensor:
    """Lower bound of min over S of a^T x', a (n, K, D) -> (n, K) (module docstring, *Concretisation*)."""
    boxed = inp.lo is not None or inp.hi is not None
    if inp.norm is Norm.LINF:
        return _box_bound(a, inp.xl, inp.xu)
    if tight and inp.norm is Norm.L1:
        return _l1_exact(a, inp)
    if tight:
        out = _l2_dual(a, inp)
    else:
        out = _masked_ball_bound(a, inp)
    return torch.maximum(out, _box_bound(a, inp.xl, inp.xu)) if boxed else out


# --------------------------------------------------------------------------------------------------
# receptive-field (sparse) backward passes for the intermediate layers
# --------------------------------------------------------------------------------------------------


def _op_matrix(op: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The linear part of one primitive op as a sparse COO matrix (out_features, in_features)."""
    from .network import CombineOp, ConvOp, LinearOp, PairsOp, ReshapeOp, ScaleShiftOp

    def coo(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
        return torch.sparse_coo_tensor(torch.stack((rows, cols)), vals.to(dtype), shape, device=device, check_invariants=False)

    if isinstance(op, LinearOp):
        return op.weight.detach().to(dtype=dtype, device=device).to_sparse()
    n_in, n_out = math.prod(op.in_shape), math.prod(op.out_shape)  # type: ignore[attr-defined]
    if isinstance(op, ReshapeOp):
        eye = torch.arange(n_in, device=device)
        return coo(eye, eye, torch.ones(n_in, dtype=dtype, device=device), (n_out, n_in))
    if isinstance(op, ScaleShiftOp):
        eye = torch.arange(n_in, device=device)
        scale = op.scale.to(dtype=dtype, device=device).repeat_interleave(n_in // op.scale.numel())
        return coo(eye, eye, scale, (n_out, n_in))
    if isinstance(op, PairsOp):
        a, b = op.a.to(device), op.b.to(device)
        q = torch.arange(a.numel(), device=device)
        one = torch.ones(a.numel(), dtype=dtype, device=device)
        return coo(torch.cat((3 * q, 3 * q, 3 * q + 1, 3 * q + 2)), torch.cat((a, b, b, b)), torch.cat((one, -one, one, -one)), (n_out, n_in))
    if isinstance(op, CombineOp):
        q = torch.arange(n_out, device=device)
        one = torch.ones(n_out, dtype=dtype, device=device)
        return coo(torch.cat((q, q, q)), torch.cat((3 * q, 3 * q + 1, 3 * q + 2)), torch.cat((one, one, -one)), (n_out, n_in))
    if isinstance(op, ConvOp) and op.groups == 1:
        # each output position reads one patch of the input: unfold the input's flat indices (+1, 0 = padding)
        grid = (torch.arange(n_in, device=device, dtype=torch.float64) + 1).reshape(1, *op.in_shape)
        patch = torch.nn.functional.unfold(grid, op.weight.shape[-2:], op.dilation, op.padding, op.stride)[0].long() - 1
        c_out, positions = op.out_shape[0], patch.shape[1]
        w = op.weight.detach().to(dtype=dtype, device=device).reshape(c_out, -1)  # (c_out, patch entries)
        rows = (torch.arange(c_out, device=device)[:, None, None] * positions + torch.arange(positions, device=device)[None, None, :])
        rows = rows.expand(c_out, patch.shape[0], positions)
        cols = patch[None].expand_as(rows)
        vals = w[:, :, None].expand_as(rows)
        keep = cols >= 0
        return coo(rows[keep], cols[keep], vals[keep], (n_out, n_in))
    # any other op: its transpose applied to the unit vectors
    dense = op.transpose(torch.eye(n_out, dtype=dtype, device=device).reshape(n_out, *op.out_shape))  # type: ignore[attr-defined]
    return dense.reshape(n_out, n_in).to_sparse()


@functools.lru_cache(maxsize=32)
def _fan_in(layer: Affine, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Each output's nonzero weights: ``idx`` (out + 1, F) input indices and ``w`` (out + 1, F) weights.

    The layer's matrix is the product of its ops' sparse matrices. Padding entries (and the extra last
    row, the image of the padding index ``out``) point at the dummy input index ``in_features``, weight 0.
    """
    n_out, n_in = layer.out_features, layer.in_features
    if not layer.ops:
        mat = torch.sparse_coo_tensor(torch.arange(n_in, device=device).repeat(2, 1), torch.ones(n_in, dtype=dtype, device=device),
                                      (n_out, n_in), check_invariants=False)
    else:
        mat = _op_matrix(layer.ops[0], dtype, device)
        with warnings.catch_warnings():  # torch labels its sparse products beta
            warnings.simplefilter("ignore", UserWarning)
            for op in layer.ops[1:]:
                mat = torch.sparse.mm(_op_matrix(op, dtype, device), mat)
    mat = mat.coalesce()
    row, col = mat.indices()
    val = mat.values()
    keep = val != 0
    row, col, val = row[keep], col[keep], val[keep]
    count = torch.bincount(row, minlength=n_out)
    rank = torch.arange(row.shape[0], device=device) - (count.cumsum(0) - count)[row]
    f = max(1, int(count.max()) if count.numel() else 1)
    idx = torch.full((n_out + 1, f), n_in, dtype=torch.long, device=device)
    w = torch.zeros((n_out + 1, f), dtype=dtype, device=device)
    idx[row, rank] = col
    w[row, rank] = val
    return idx, w


def _is_sparse(net: ReluNetwork) -> bool:
    """Whether a layer below the last is convolutional or pooling (its outputs see few of its inputs)."""
    from .network import AvgPoolOp, ConvOp, PairsOp

    return any(isinstance(op, (ConvOp, PairsOp, AvgPoolOp)) for layer in net.layers[:-1] for op in layer.ops)


@dataclass(frozen=True)
class _Support:
    """Receptive fields of a set of neurons of layer j, per lower layer i (j-1 ... 0, then the input).

    Receptive fields repeat (a convolution reads the same window for every output channel), so each
    level keeps its distinct ones: ``pos[s]`` (u_s, m_s) sorted flat indices (padding: the layer width);
    ``parent[s]`` (u_{s-1},) the field at level s of each field one level up (level -1: the neurons);
    ``slot[s]`` (u_{s-1}, m_{s-1} F) the column of ``pos[s]`` each (entry above, fan-in) lands in
    (padding: m_s, a dummy column); ``w[s]`` (u_{s-1}, m_{s-1}, F) the weights. Step s = 0 is layer j-1,
    the last step the input.
    """

    pos: list[Tensor]
    parent: list[Tensor]
    slot: list[Tensor]
    w: list[Tensor]

    def ids(self, neuron_ids: Tensor) -> list[Tensor]:
        """Per step, the field index of each entry of ``neuron_ids`` (indices into the support's neurons)."""
        out = []
        cur = neuron_ids
        for parent in self.parent:
            out.append(cur)  # the index into slot/w of this step (the field one level up)
            cur = parent[cur]
        return out + [cur]


def _support(net: ReluNetwork, j: int, neurons: Tensor, dtype: torch.dtype, limit: float = math.inf) -> _Support | None:
    """None once the cost of a row (the sum of m_{s-1} F + m_s so far) exceeds ``limit``."""
    pos: list[Tensor] = []
    parents: list[Tensor] = []
    slots: list[Tensor] = []
    ws: list[Tensor] = []
    cost = 0
    cur = neurons[:, None]
    for i in range(j - 1, -2, -1):
        table_idx, table_w = _fan_in(net.layers[i + 1], dtype, neurons.device)
        width = net.layers[i + 1].in_features  # the width of z_i (or of the input for i = -1)
        u, m = cur.shape
        cost += m * table_idx.shape[1]
        if cost > limit:
            return None
        cand_all = table_idx[cur].reshape(u, -1)
        # fields with the same input indices (one window, several output channels) share everything below
        cand, cinv = torch.unique(cand_all, dim=0, return_inverse=True)
        u = cand.shape[0]
        # sort each field's inputs; the running count of first occurrences is each input's column
        srt, order = cand.sort(dim=1)
        first = srt < width
        first[:, 1:] &= srt[:, 1:] != srt[:, :-1]
        rank = first.cumsum(1) - 1
        size = max(1, int(first.sum(1).max()))
        slot_sorted = torch.where(srt < width, rank, size)
        nxt = torch.full((u, size + 1), width, dtype=torch.long, device=cand.device)
        nxt.scatter_(1, torch.where(first, rank, size), srt)
        nxt, parent = torch.unique(nxt[:, :size], dim=0, return_inverse=True)
        slot = torch.empty_like(slot_sorted).scatter_(1, order, slot_sorted)
        cost += size
        pos.append(nxt)
        parents.append(parent[cinv])
        slots.append(slot[cinv])
        ws.append(table_w[cur])
        cur = nxt
    return _Support(pos, parents, slots, ws)


def _gather_rows(t: Tensor, pos: Tensor) -> Tensor:
    """t (n, w) per-sample values, pos (n, R, m) indices in [0, w] (w: padding, read as 0) -> (n, R, m)."""
    ext = torch.nn.functional.pad(t, (0, 1))
    n, r, m = pos.shape
    return ext.gather(1, pos.reshape(n, r * m)).reshape(n, r, m)


def _sparse_backward(net: ReluNetwork, j: int, sel: Tensor, relax: Sequence[_Relax], biases: Sequence[Tensor], inp: _Input,
                     tight: bool) -> Tensor:
    """CROWN lower bounds of +z_j[sel] and -z_j[sel], (n, 2k): :func:`_backward` carried over receptive fields.

    Row r of the backward matrix at layer i is nonzero only on the neurons z_j[sel_r] depends on, so it is
    stored as (values, flat indices) over that support and pushed down through each layer's fan-in table
    (gather the weights, scatter-add into the support below): the same sums as the dense pass, in
    another order, at a cost proportional to the receptive field rather than the layer width.
    """
    n, k = sel.shape
    neurons, inv = torch.unique(sel, return_inverse=True)
    sup = _support(net, j, neurons, inp.x.dtype)
    assert sup is not None
    ids = sup.ids(torch.cat((inv, inv), dim=1))  # (n, 2k) per step: the rows +e and -e
    dt = inp.x.dtype
    a = torch.cat((torch.ones((n, k, 1), dtype=dt, device=sel.device), -torch.ones((n, k, 1), dtype=dt, device=sel.device)), 1)
    const = a[..., 0] * biases[j].gather(0, sel.reshape(-1)).reshape(n, k).repeat(1, 2)
    for step, i in enumerate(range(j - 1, -2, -1)):
        w = sup.w[step][ids[step]]  # (n, 2k, m_{s-1}, F)
        contrib = (a[..., :w.shape[2], None] * w).reshape(n, 2 * k, -1)
        size = sup.pos[step].shape[1]
        a = torch.zeros((n, 2 * k, size + 1), dtype=dt, device=sel.device)
        a.scatter_add_(2, sup.slot[step][ids[step]], contrib)
        if i < 0:
            break
        p = sup.pos[step][ids[step + 1]]  # (n, 2k, m_s)
        r = relax[i]
        core = a[..., :size]
        neg = core < 0
        const = const + (torch.where(neg, core, 0.0) * _gather_rows(r.up_int, p)).sum(-1)
        core = core * torch.where(neg, _gather_rows(r.up_slope, p), _gather_rows(r.alpha0, p))
        const = const + (core * torch.nn.functional.pad(biases[i], (0, 1))[p]).sum(-1)
        a = torch.nn.functional.pad(core, (0, 1))
    d = net.layers[0].in_features
    dense = torch.zeros((n, 2 * k, d + 1), dtype=dt, device=sel.device)
    dense.scatter_add_(2, sup.pos[-1][ids[-1]], a[..., :sup.pos[-1].shape[1]])
    return _concretize(dense[..., :d], inp, tight) + const


# --------------------------------------------------------------------------------------------------
# forward-mode linear bounds of the intermediate layers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Linear:
    """Linear bounds of one layer's pre-activations in the flat input x, as centre and radius functions.

    ``mid``, ``rad`` (n, 1 + D, width): row 0 the constant, rows 1..D the coefficients of x, so that
    mid(x) - rad(x) <= z(x) <= mid(x) + rad(x) for every x in S.
    """

    mid: Tensor
    rad: Tensor

    @staticmethod
    def first(net: ReluNetwork, inp: _Input, bias: Tensor) -> "_Linear":
        """z_1 = W_1 x + b_1 exactly: the coefficients are the linear part applied to the unit vectors."""
        layer = net.layers[0]
        d = layer.in_features
        eye = torch.eye(d, dtype=inp.x.dtype, device=inp.x.device).reshape(d, *layer.in_shape)
        coef = layer.linear_bounds(eye, torch.zeros_like(eye))[0].reshape(d, -1)
        mid = torch.cat((bias[None], coef))[None].expand(inp.x.shape[0], -1, -1)
        return _Linear(mid, torch.zeros_like(mid))

    def relu(self, r: "_Relax") -> "_Linear":
        """Through relu: alpha lower(z) <= relu(z) <= s upper(z) + t (alpha, s >= 0, the CROWN lines)."""
        alpha, s = r.alpha0[:, None], r.up_slope[:, None]
        lo = alpha * (self.mid - self.rad)
        up = s * (self.mid + self.rad)
        up[:, 0] += r.up_int
        return _Linear((up + lo) / 2, (up - lo) / 2)

    def through(self, layer: Affine, bias: Tensor) -> "_Linear":
        n, rows = self.mid.shape[:2]
        mid, rad = layer.linear_bounds(self.mid.reshape(n * rows, *layer.in_shape), self.rad.reshape(n * rows, *layer.in_shape))
        mid, rad = mid.reshape(n, rows, -1), rad.reshape(n, rows, -1)
        mid[:, 0] += bias
        return _Linear(mid, rad)

    def concretize(self, inp: _Input) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds over S, (n, width) each (the intermediate concretisation of the module docstring)."""
        lo = self.mid - self.rad
        lower = _concretize(lo[:, 1:].transpose(1, 2), inp, False) + lo[:, 0]
        del lo
        up = self.mid + self.rad
        upper = up[:, 0] - _concretize(-up[:, 1:].transpose(1, 2), inp, False)
        return lower, upper


# --------------------------------------------------------------------------------------------------
# relaxations and the backward pass
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Relax:
    """Linear bounds of relu(z) for z in [l, u]: lower slope (default), upper slope and intercept."""

    unstable: Tensor
    active: Tensor
    alpha0: Tensor
    up_slope: Tensor
    up_int: Tensor

    @staticmethod
    def of(lower: Tensor, upper: Tensor) -> "_Relax":
        unstable = (lower < 0) & (upper > 0)
        active = lower >= 0
        denom = torch.where(unstable, upper - lower, torch.ones_like(upper))
        s = torch.where(unstable, upper / denom, active.to(upper.dtype))
        t = torch.where(unstable, -s * lower, torch.zeros_like(lower))
        alpha0 = torch.where(unstable, (upper >= -lower).to(upper.dtype), active.to(upper.dtype))
        return _Relax(unstable, active, alpha0, s, t)

    def lower_slope(self, alpha: Tensor | None) -> Tensor:
        if alpha is None:
            return self.alpha0[:, None]
        return torch.where(self.unstable[:, None], alpha, self.active[:, None].to(alpha.dtype))


def _biases(net: ReluNetwork, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    return [layer.bias(dtype).to(device) for layer in net.layers]


def _backward(net: ReluNetwork, j: int, a: Tensor, relax: Sequence[_Relax], biases: Sequence[Tensor], inp: _Input,
              tight: bool, alphas: Sequence[Tensor] | None = None) -> Tensor:
    """Lower bound of a^T z_j over S, a (n, K, width of layer j's output) -> (n, K) (CROWN, Theorem 3.2)."""
    n, k = a.shape[:2]
    const = a @ biases[j]
    for i in range(j - 1, -1, -1):
        a = net.layers[i + 1].transpose_flat(a.reshape(n * k, -1)).reshape(n, k, -1)  # over h_i = relu(z_i)
        r = relax[i]
        # negative coefficients take the upper line (slope s, intercept t), the others the lower line
        neg = a < 0
        const = const + torch.bmm(torch.where(neg, a, 0.0), r.up_int[:, :, None]).squeeze(-1)
        a = a * torch.where(neg, r.up_slope[:, None], r.lower_slope(None if alphas is None else alphas[i]))
        const = const + a @ biases[i]
    a = net.layers[0].transpose_flat(a.reshape(n * k, -1)).reshape(n, k, -1)
    return _concretize(a, inp, tight) + const


@functools.lru_cache(maxsize=2)
def _dense_cached(layer: Affine, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    w, b = layer.dense(dtype)
    return w.to(device), b.to(device)


def _first_layer(net: ReluNetwork, inp: _Input, max_elements: int) -> tuple[Tensor, Tensor]:
    """Exact-over-S (linf) or box-and-masked-ball (l1, l2) bounds of z_1 = W_1 x + b_1, (n, w_1)."""
    n = inp.x.shape[0]
    w, b = _dense_cached(net.layers[0], inp.x.dtype, inp.x.device)
    xl, xu = inp.xl, inp.xu
    if inp.lo is not None or inp.hi is not None or inp.norm is Norm.LINF:
        lower = xl @ w.clamp_min(0).T + xu @ w.clamp_max(0).T
        upper = xu @ w.clamp_min(0).T + xl @ w.clamp_max(0).T
    else:
        lower = torch.full((n, w.shape[0]), -math.inf, dtype=w.dtype, device=w.device)
        upper = -lower
    if inp.norm is not Norm.LINF:
        wx = inp.x @ w.T
        up_room = (inp.x < inp.hi) if inp.hi is not None else torch.ones_like(inp.x, dtype=torch.bool)
        down_room = (inp.x > inp.lo) if inp.lo is not None else torch.ones_like(inp.x, dtype=torch.bool)
        wp, wn = w.clamp_min(0), w.clamp_max(0)
        eps = inp.eps[:, None]
        if inp.norm is Norm.L2:
            dt = w.dtype
            # lower bound: descend, so positive weights need room below and negative ones room above
            dn = torch.sqrt(down_room.to(dt) @ (wp * wp).T + up_room.to(dt) @ (wn * wn).T)
            up = torch.sqrt(up_room.to(dt) @ (wp * wp).T + down_room.to(dt) @ (wn * wn).T)
        else:  # l1: the largest admissible |w_k|, in chunks of samples to bound the (n, w, D) temporary
            rows = max(1, max_elements // max(1, w.numel()))
            dn_parts, up_parts = [], []
            for s in range(0, n, rows):
                dr, ur = down_room[s:s + rows, None], up_room[s:s + rows, None]
                dn_parts.append(torch.maximum(wp * dr, -wn * ur).amax(-1))
                up_parts.append(torch.maximum(wp * ur, -wn * dr).amax(-1))
            dn, up = torch.cat(dn_parts), torch.cat(up_parts)
        lower = torch.maximum(lower, wx - eps * dn)
        upper = torch.minimum(upper, wx + eps * up)
    return lower + b, upper + b


def _interval_next(net: ReluNetwork, j: int, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Interval bounds of z_j from bounds of z_{j-1} (n, w) through relu and layer j, flat."""
    layer = net.layers[j]
    n = lower.shape[0]
    lo, hi = layer.interval(lower.clamp_min(0).reshape(n, *layer.in_shape), upper.clamp_min(0).reshape(n, *layer.in_shape))
    return lo.reshape(n, -1), hi.reshape(n, -1)


def _unstable_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample the indices of the True entries first (padded), (n, K) indices and validity."""
    count = int(mask.sum(1).max()) if mask.numel() else 0
    order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :count]
    return order, mask.gather(1, order)


def _crown_layer(net: ReluNetwork, j: int, ibp: tuple[Tensor, Tensor], relax: Sequence[_Relax], biases: Sequence[Tensor],
                 inp: _Input, max_elements: int, tight: bool = False, alpha_steps: int = 0, alpha_lr: float = 0.1,
                 sparse: str = "off") -> tuple[Tensor, Tensor]:
    lower, upper = ibp[0].clone(), ibp[1].clone()
    mask = (lower < 0) & (upper > 0)
    idx, valid = _unstable_rows(mask)
    n, width = lower.shape
    if idx.shape[1] == 0:
        return lower, upper
    use_sparse = sparse != "off" and alpha_steps == 0
    if use_sparse:  # the widest receptive field of a spread of unstable neurons sets the chunk
        # receptive fields about as wide as the layers (a dense layer above a convolution): the dense pass is cheaper
        dense_cost = sum(lay.out_features for lay in net.layers[:j]) + net.layers[0].in_features
        probe = _support(net, j, torch.unique(idx[:, :: max(1, idx.shape[1] // 16)]), lower.dtype,
                         dense_cost if sparse == "auto" else math.inf)
        use_sparse = probe is not None
        if probe is not None:
            row_cost = sum(w.shape[1] * w.shape[2] + p.shape[1] for w, p in zip(probe.w, probe.pos)) + net.layers[0].in_features
            per = max(1, max_elements // (n * row_cost * 2))
    if not use_sparse:
        widest = max([width] + [lay.out_features for lay in net.layers[:j]] + [net.layers[0].in_features])
        per = max(1, max_elements // (n * widest * 2))
    for s in range(0, idx.shape[1], per):
        sel, ok = idx[:, s:s + per], valid[:, s:s + per]
        k = sel.shape[1]
        if use_sparse:
            both = _sparse_backward(net, j, sel, relax, biases, inp, tight)
        else:
            rows = torch.zeros((n, k, width), dtype=lower.dtype, device=lower.device)
            rows.scatter_(2, sel[..., None], ok[..., None].to(lower.dtype))
            signed = torch.cat((rows, -rows), dim=1)
            both = _backward(net, j, signed, relax, biases, inp, tight=tight)
            if alpha_steps > 0:
                both = _optimise_slopes(net, j, signed, relax, biases, inp, both, alpha_steps, alpha_lr, tight)
        lo_k, hi_k = both[:, :k], -both[:, k:]
        cur_lo, cur_hi = lower.gather(1, sel), upper.gather(1, sel)
        lower.scatter_(1, sel, torch.where(ok, torch.maximum(cur_lo, lo_k), cur_lo))
        upper.scatter_(1, sel, torch.where(ok, torch.minimum(cur_hi, hi_k), cur_hi))
    return lower, upper


def _intermediate(net: ReluNetwork, inp: _Input, method: str, max_elements: int, biases: Sequence[Tensor],
                  tight_intermediate: bool = False, alpha_steps: int = 0, alpha_lr: float = 0.1,
                  intermediate: str = "dense", backward_rows: int = 0
                  ) -> tuple[list[tuple[Tensor, Tensor]], list[_Relax]]:
    bounds: list[tuple[Tensor, Tensor]] = []
    relax: list[_Relax] = []
    forward = method != "ibp" and intermediate == "forward" and len(net.layers) > 2
    lin: _Linear | None = _Linear.first(net, inp, biases[0]) if forward else None
    for j in range(len(net.layers) - 1):
        if j == 0:
            lo, hi = _first_layer(net, inp, max_elements)
        else:
            lo, hi = _interval_next(net, j, *bounds[-1])
            if lin is not None:
                lin = lin.relu(relax[-1]).through(net.layers[j], biases[j])
                flo, fhi = lin.concretize(inp)
                lo, hi = torch.maximum(lo, flo), torch.minimum(hi, fhi)
                if j == len(net.layers) - 2:
                    lin = None  # the last ReLU layer: nothing is propagated further
            if method != "ibp" and (not forward or int(((lo < 0) & (hi > 0)).sum(1).max()) <= backward_rows):
                lo, hi = _crown_layer(net, j, (lo, hi), relax, biases, inp, max_elements, tight_intermediate,
                                      alpha_steps if method == "alpha-crown" else 0, alpha_lr,
                                      sparse={"dense": "off", "sparse": "on"}.get(intermediate, "auto"))
        bounds.append((lo, hi))
        relax.append(_Relax.of(lo, hi))
    return bounds, relax


def _resolve_intermediate(net: ReluNetwork, intermediate: str) -> str:
    """"auto" stays "auto" (per layer, receptive-field passes where they are cheaper) when a layer below the
    last is convolutional or pooling, and becomes "dense" otherwise."""
    mode = intermediate.lower()
    if mode not in ("auto", "dense", "sparse", "forward"):
        raise ValueError(f"unknown intermediate mode {intermediate!r}: choose auto, dense, sparse or forward")
    if mode == "auto":
        return "auto" if _is_sparse(net) else "dense"
    return mode


def _ibp_spec(net: ReluNetwork, c: Tensor, bounds: Sequence[tuple[Tensor, Tensor]], inp: _Input, biases: Sequence[Tensor]) -> Tensor:
    """IBP bound of C z_n with the last layer folded into C."""
    last = len(net.layers) - 1
    if last == 0:
        return _backward(net, 0, c, [], biases, inp, tight=True)
    n, k = c.shape[:2]
    a = net.layers[last].transpose_flat(c.reshape(n * k, -1)).reshape(n, k, -1)
    hl, hu = bounds[-1][0].clamp_min(0), bounds[-1][1].clamp_min(0)
    return (a.clamp_min(0) * hl[:, None]).sum(-1) + (a.clamp_max(0) * hu[:, None]).sum(-1) + c @ biases[last]


def _optimise_slopes(net: ReluNetwork, j: int, a: Tensor, relax: Sequence[_Relax], biases: Sequence[Tensor], inp: _Input,
                     start: Tensor, steps: int, lr: float, tight: bool, stop_when_certified: bool = False) -> Tensor:
    """Projected Adam on per-(sample, row, neuron) lower slopes of the ReLUs below layer j; best iterate per row."""
    best = start.clone()
    if steps <= 0 or j == 0:
        return best
    k = a.shape[1]
    alphas = [r.alpha0[:, None].expand(-1, k, -1).clone().requires_grad_(True) for r in relax[:j]]
    opt = torch.optim.Adam(alphas, lr=lr)
    for _ in range(steps):
        if stop_when_certified and bool((best > 0).all()):
            break
        with torch.enable_grad():
            lb = _backward(net, j, a, relax, biases, inp, tight=tight, alphas=alphas)
            opt.zero_grad(set_to_none=True)
            (-lb.sum()).backward()
        best = torch.maximum(best, lb.detach())
        opt.step()
        with torch.no_grad():
            for al in alphas:
                al.clamp_(0.0, 1.0)
    with torch.no_grad():
        return torch.maximum(best, _backward(net, j, a, relax, biases, inp, tight=tight, alphas=alphas))


def _alpha_spec(net: ReluNetwork, c: Tensor, relax: Sequence[_Relax], biases: Sequence[Tensor], inp: _Input, start: Tensor,
                steps: int, lr: float, stop_when_certified: bool) -> Tensor:
    """alpha-CROWN on the specification rows: projected Adam on the lower slopes, best iterate per row."""
    return _optimise_slopes(net, len(net.layers) - 1, c, relax, biases, inp, start, steps, lr, True, stop_when_certified)


# --------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """Bounds of one chunk: ``spec`` (n, C-1) lower bounds; ``preact`` per ReLU layer (lower, upper) (n, width)."""

    spec: Tensor | None
    preact: list[tuple[Tensor, Tensor]]


def _prepare(net: ReluNetwork, x: Tensor, eps: Tensor | float, norm: Norm | str, bounds: tuple[float, float] | None,
             dtype: torch.dtype) -> _Input:
    device = net.device
    n = x.shape[0]
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        raise ValueError(f"inputs have shape {tuple(x.shape[1:])} per sample, the network expects {net.input_shape}")
    flat = x.detach().to(device=device, dtype=dtype).reshape(n, net.layers[0].in_features)
    e = torch.as_tensor(eps, dtype=dtype, device=device)
    e = e.expand(n).clone() if e.dim() == 0 else e.reshape(-1)
    if e.shape[0] != n:
        raise ValueError(f"eps has {e.shape[0]} entries for {n} inputs")
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError("eps must be finite and non-negative")
    lo, hi = (None, None) if bounds is None else (float(bounds[0]), float(bounds[1]))
    if lo is not None and hi is not None:
        if lo >= hi:
            raise ValueError(f"bounds must satisfy lower < upper, got {bounds}")
        if bool((flat < lo - 1e-6).any()) or bool((flat > hi + 1e-6).any()):
            raise ValueError(f"inputs lie outside the box {bounds}: the ball around them would miss it")
        flat = flat.clamp(lo, hi)
    return _Input(flat, e, as_norm(norm), lo, hi)


def _check_method(method: str) -> str:
    m = method.lower().replace("_", "-")
    if m == "alphacrown":
        m = "alpha-crown"
    if m not in METHODS:
        raise ValueError(f"unknown bound method {method!r}: choose one of {', '.join(METHODS)}")
    return m


def _sample_chunk(net: ReluNetwork, rows: int, max_elements: int, intermediate: str = "auto") -> int:
    total = sum(net.widths) + net.layers[0].in_features
    step = max(1, max_elements // max(1, 4 * rows * total))
    if intermediate == "forward":  # about six (1 + D, width) tensors per sample live at once
        widest = max([net.layers[0].in_features] + [lay.out_features for lay in net.layers])
        step = min(step, max(1, max_elements // (6 * (net.layers[0].in_features + 1) * widest)))
    return step


def compute_bounds(net: ReluNetwork, inp: _Input, c: Tensor | None, method: str, *, alpha_steps: int = 40, alpha_lr: float = 0.1,
                   alpha_intermediate: int = 0, stop_when_certified: bool = False, max_elements: int = _MAX_ELEMENTS,
                   intermediate: str = "auto", backward_rows: int = _BACKWARD_ROWS) -> Bounds:
    """Bounds of one chunk of samples (see :func:`spec_lower_bounds`); ``c`` None: pre-activations only.

    The whole chunk is processed at once: in forward mode its memory grows with (1 + D) x width per sample.
    """
    mode = _resolve_intermediate(net, intermediate)
    with torch.no_grad():
        biases = _biases(net, inp.x.dtype, inp.x.device)
        preact, relax = _intermediate(net, inp, method, max_elements, biases, False, alpha_intermediate, alpha_lr,
                                      mode, backward_rows)
        if c is None:
            return Bounds(None, preact)
        spec = _ibp_spec(net, c, preact, inp, biases)
        if method != "ibp":
            spec = torch.maximum(spec, _backward(net, len(net.layers) - 1, c, relax, biases, inp, tight=True))
    if method == "alpha-crown":
        spec = _alpha_spec(net, c, relax, biases, inp, spec, alpha_steps, alpha_lr, stop_when_certified)
    return Bounds(spec, preact)


def preactivation_bounds(net: ReluNetwork, x: Tensor, eps: Tensor | float, norm: Norm | str, *,
                         bounds: tuple[float, float] | None = (0.0, 1.0), method: str = "crown",
                         dtype: torch.dtype = torch.float64, max_elements: int = _MAX_ELEMENTS, intermediate: str = "auto",
                         backward_rows: int = _BACKWARD_ROWS) -> list[tuple[Tensor, Tensor]]:
    """Sound bounds of every ReLU layer's pre-activations over B_p(x, eps) ∩ box, per layer (lower, upper) (N, width).

    ``eps`` a float or (N,) per-sample radii; ``bounds`` the input box (None: no box); ``method`` "ibp" or
    "crown" ("alpha-crown" gives CROWN's intermediate bounds: its slopes are optimised for the
    specification only). Flattened widths, in ``dtype`` on the network's device. ``intermediate`` and
    ``backward_rows``: see :func:`spec_lower_bounds`.
    """
    m = _check_method(method)
    inp = _prepare(net, x, eps, norm, bounds, dtype)
    n = inp.x.shape[0]
    step = _sample_chunk(net, 1, max_elements * 8, _resolve_intermediate(net, intermediate))
    parts = [compute_bounds(net, inp.subset(slice(s, s + step)), None, m, max_elements=max_elements, intermediate=intermediate,
                            backward_rows=backward_rows).preact
             for s in range(0, n, step)]
    return [(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts])) for i in range(len(net.layers) - 1)]


def spec_lower_bounds(net: ReluNetwork, x: Tensor, ref: Tensor, eps: Tensor | float, norm: Norm | str, *,
                      method: str = "crown", bounds: tuple[float, float] | None = (0.0, 1.0), alpha_steps: int = 40,
                      alpha_lr: float = 0.1, alpha_intermediate: int = 0, stop_when_certified: bool = False,
                      dtype: torch.dtype = torch.float64, max_elements: int = _MAX_ELEMENTS, intermediate: str = "auto",
                      backward_rows: int = _BACKWARD_ROWS) -> Tensor:
    """Certified lower bounds of f^ref - f^j over B_p(x, eps) ∩ box for every j != ref, shape (N, C-1).

    The rows follow :func:`marginkit.margins.gap.specification_matrix` (classes in increasing order,
    ``ref`` left out). The decision of sample n is certified at eps[n] exactly when its row is all > 0.
    ``method``: "ibp", "crown" or "alpha-crown" (``alpha_steps`` Adam steps of size ``alpha_lr``,
    ``alpha_intermediate`` steps for the intermediate bounds;
    ``stop_when_certified`` stops once every row of the chunk is positive, as the radius search needs).
    ``intermediate``: how CROWN bounds the pre-activations of the ReLU layers after the first (module
    docstring, *Intermediate layers*): "dense" (one full-width backward pass per unstable neuron),
    "sparse" (the same passes over receptive fields only: the same bounds up to float rounding),
    "auto" (sparse per layer where cheaper, on networks with a convolution or pooling; dense otherwise)
    or "forward" (forward-mode linear bounds, plus backward passes for a layer whose unstable neurons,
    after the forward bounds, number at most ``backward_rows`` per sample: cheaper, looser).
    """
    m = _check_method(method)
    inp = _prepare(net, x, eps, norm, bounds, dtype)
    n = inp.x.shape[0]
    ref = torch.as_tensor(ref, device=inp.x.device).reshape(-1).long()
    if ref.shape[0] != n:
        raise ValueError(f"ref has {ref.shape[0]} entries for {n} inputs")
    c = specification_matrix(ref, net.num_classes, dtype=dtype)
    step = _sample_chunk(net, c.shape[1], max_elements * 8, _resolve_intermediate(net, intermediate))
    out = [compute_bounds(net, inp.subset(slice(s, s + step)), c[s:s + step], m, alpha_steps=alpha_steps, alpha_lr=alpha_lr,
                          alpha_intermediate=alpha_intermediate, stop_when_certified=stop_when_certified, max_elements=max_elements,
                          intermediate=intermediate, backward_rows=backward_rows).spec
           for s in range(0, n, step)]
    return torch.cat([o for o in out if o is not None]) if out else torch.zeros((0, net.num_classes - 1), dtype=dtype)
