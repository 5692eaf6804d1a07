"""Branch and bound over ReLU phases (BaB): certified bounds that tighten with time, and the radius they give.

A linear relaxation (CROWN / alpha-CROWN, :mod:`.propagation`) loses precision at every unstable ReLU
(l < 0 < u). Branch and bound splits such a neuron into its two phases, each a linear map on its half:

- a **domain** is one specification row c (a row e_i - e_j of :func:`marginkit.margins.gap.specification_matrix`)
  of one sample, plus a set of fixed phases: split +1 (z >= 0: relu(z) = z) or -1 (z <= 0: relu(z) = 0).
  A split is enforced in the relaxation by clamping the neuron's bounds (lower = 0 for +1, upper = 0
  for -1), which makes that ReLU linear, and in the objective by a Lagrange multiplier beta >= 0
  (beta-CROWN, Wang et al. 2021, "Beta-CROWN: efficient bound propagation with per-neuron split
  constraints", eq. 5-7): min over {x in S : s z(x) <= 0} of c f(x) >= min over S of c f(x) + beta s z(x),
  where s = -1 for an active and +1 for an inactive split; the term enters the backward pass as
  -beta * split on the coefficients of z.
- **bounding** a batch of domains: (1) intermediate bounds, inherited from the parent, are refined
  layer by layer by a CROWN backward pass that uses the clamped bounds below (``refine``): a split in
  layer 1 tightens layer 2 and so on; a domain whose bounds cross (l > u) is empty and closed; (2) the
  specification row is bounded by CROWN with per-domain lower slopes alpha and multipliers beta,
  optimised by projected Adam (alpha-CROWN, Xu et al. 2021, section 3.1; beta-CROWN section 3.2),
  warm-started from the parent's, keeping the best iterate. A child's bound is at least its parent's
  (its set is a subset), so the bound of a row never falls below alpha-CROWN's at the root.
- **branching** (BaBSR-like, Bunel et al. 2020, "Branch and bound for piecewise linear neural network
  verification", section 5.1): from the final backward pass, the coefficient a of relu(z) for every
  unstable, unsplit neuron; a neuron whose coefficient is negative takes the upper line, whose
  intercept costs |a| u (-l) / (u - l) in the bound, and splitting removes it; neurons on the lower line
  get a tenth of |a| min(u, -l) (the largest error of that line) so that every unstable neuron has a score.
  The domain splits on its highest-scoring neuron.
- **search**: the open domains with the lowest bounds are split first, ``batch`` at a time (all
  children of a round bounded in one batched call). A sample is **verified** when every leaf of every
  row has a positive bound (empty leaves count as +inf). It is **falsified** (and its domains dropped)
  when the minimiser of a domain's final linear bound over S (a corner for linf, a clipped steepest step
  for l2 / l1) flips the decision in a forward pass of the network; **stuck** when a domain with a
  non-positive bound has no unstable neuron left. The search stops at ``time_limit`` (checked between
  rounds) or ``max_domains`` open domains; then the sample is not verified, and every row keeps the
  minimum of its leaves' bounds: sound, and never below alpha-CROWN's bound.

The certified radius (:func:`bab_radius`) searches eps between the alpha-CROWN radius
(:func:`marginkit.verify.radius.certified_radius`, certified, a lower end) and the verified upper bound,
each step one BaB call at that eps within a share of the sample's remaining time (the remaining time
over the bisection steps the bracket still needs): a step that verifies raises the lower end, one that
does not (falsified, stuck, or out of time) lowers the upper end of the search, so the result is always a
radius that BaB verified. Steps go up from the lower end by 5%, 10%, 20%, ... of it (never past the
geometric midpoint) until one fails, then bisect geometrically: BaB's cost grows steeply with eps, and
plain bisection would spend its first, hardest steps far above the alpha-CROWN radius. When the bracket
has closed before the budget is spent and its upper end only ran out of time, that step is run again
with all the time left (and the search goes on above it if it verifies).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..margins.gap import specification_matrix
from ..norms import Norm, as_norm
from .network import ReluNetwork
from .propagation import _MAX_ELEMENTS, _biases, _concretize, _Input, _prepare, _Relax, _unstable_rows, compute_bounds
from .radius import RadiusResult, box_cap, certified_radius

__all__ = ["BabOptions", "BabResult", "bab_bounds", "bab_radius"]

_FIRST_STEP = 0.05  # the radius search's first step above the alpha-CROWN radius, relative
VERIFIED, OPEN, FALSIFIED, STUCK, TIMED_OUT = "verified", "open", "falsified", "stuck", "timed-out"


@dataclass(frozen=True)
class BabOptions:
    """Settings of one branch and bound search (see the module docstring).

    ``time_limit`` seconds per :func:`bab_bounds` call (in :func:`bab_radius`: per sample, over all its
    bisection steps); ``max_domains`` open domains at most; ``batch`` domains split per round;
    ``alpha_steps`` Adam steps of the root's alpha-CROWN; ``iterations`` Adam steps on (alpha, beta) per
    bounded domain, steps of size ``lr_alpha`` / ``lr_beta``; ``refine`` recomputes the intermediate
    bounds of every domain (CROWN with the split-clamped bounds below; off by default: on the measured MLPs it
    cost more time than the domains it saved); ``candidates`` > 1 chooses the split among that many
    top-scoring neurons by bounding their children (filtered smart branching; 1: the score alone);
    ``leaf_iterations`` Adam steps for a domain with no unstable neuron left and a non-positive bound,
    before it counts as stuck; ``clock`` "wall" or "cpu" (process time) for ``time_limit``.
    """

    time_limit: float = 20.0
    max_domains: int = 20000
    batch: int = 256
    alpha_steps: int = 20
    iterations: int = 4
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    refine: bool = False
    candidates: int = 1
    leaf_iterations: int = 200
    clock: str = "wall"

    def now(self) -> float:
        """The clock of ``time_limit``: wall time, or the process's CPU time ("cpu": budgets that do not shrink
        when other jobs share the machine)."""
        return time.perf_counter() if self.clock == "wall" else time.process_time()

    def __post_init__(self) -> None:
        if (not self.time_limit >= 0 or self.max_domains < 1 or self.batch < 1 or self.iterations < 0 or self.alpha_steps < 0
                or self.clock not in ("wall", "cpu")):
            raise ValueError(f"invalid branch and bound options: {self}")


@dataclass(frozen=True)
class BabResult:
    """``lower`` (N, C-1) certified lower bounds of f^ref - f^j over the set, rows as in
    :func:`marginkit.verify.spec_lower_bounds`; ``root`` (N, C-1) alpha-CROWN's bounds (the start);
    ``status`` per sample: "verified" (every row > 0), "falsified" (a point of the set flips),
    "stuck" (a leaf without unstable neurons and a non-positive bound), "timed-out" (time or domain
    budget spent); ``domains`` (N,) domains bounded per sample; ``seconds`` the wall time of the call."""

    lower: Tensor
    root: Tensor
    status: list[str]
    domains: Tensor
    seconds: float

    @property
    def verified(self) -> Tensor:
        return torch.tensor([s == VERIFIED for s in self.status], dtype=torch.bool)


# --------------------------------------------------------------------------------------------------
# domains
# --------------------------------------------------------------------------------------------------


@dataclass
class _Domains:
    """A batch of M domains: sample index, specification row, per ReLU layer bounds / splits / alpha / beta."""

    sample: Tensor  # (M,) long
    row: Tensor  # (M,) long, which specification row
    c: Tensor  # (M, classes)
    lower: list[Tensor]  # per ReLU layer (M, w), split-clamped
    upper: list[Tensor]
    split: list[Tensor]  # (M, w) int8: +1 active, -1 inactive, 0 free
    alpha: list[Tensor]  # (M, w) lower slopes of the specification row
    beta: list[Tensor]  # (M, w) multipliers of the split constraints
    bound: Tensor  # (M,)
    choice: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (M,) flat neuron to split, -1: none

    def __len__(self) -> int:
        return int(self.sample.shape[0])

    def take(self, idx: Tensor) -> "_Domains":
        return _Domains(self.sample[idx], self.row[idx], self.c[idx], [t[idx] for t in self.lower], [t[idx] for t in self.upper],
                        [t[idx] for t in self.split], [t[idx] for t in self.alpha], [t[idx] for t in self.beta], self.bound[idx],
                        self.choice[idx])

    @staticmethod
    def cat(parts: Sequence["_Domains"]) -> "_Domains":
        def lists(name: str) -> list[Tensor]:
            return [torch.cat([getattr(p, name)[i] for p in parts]) for i in range(len(getattr(parts[0], name)))]

        return _Domains(torch.cat([p.sample for p in parts]), torch.cat([p.row for p in parts]), torch.cat([p.c for p in parts]),
                        lists("lower"), lists("upper"), lists("split"), lists("alpha"), lists("beta"),
                        torch.cat([p.bound for p in parts]), torch.cat([p.choice for p in parts]))


def _children(dom: _Domains) -> _Domains:
    """Two children per domain, split on ``choice`` (active child first, then the inactive ones)."""
    widths = [t.shape[1] for t in dom.split]
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    m = len(dom)
    both = dom.take(torch.cat((torch.arange(m), torch.arange(m))))
    sign = torch.cat((torch.ones(m, dtype=torch.int8), -torch.ones(m, dtype=torch.int8)))
    choice = both.choice
    rows = torch.arange(2 * m)
    for i in range(len(widths)):
        hit = (choice >= offsets[i]) & (choice < offsets[i + 1])
        if not bool(hit.any()):
            continue
        r, k = rows[hit], choice[hit] - offsets[i]
        both.split[i] = both.split[i].clone()
        both.split[i][r, k] = sign[hit]
        both.lower[i], both.upper[i] = both.lower[i].clone(), both.upper[i].clone()
        act = sign[hit] > 0
        both.lower[i][r[act], k[act]] = both.lower[i][r[act], k[act]].clamp_min(0.0)
        both.upper[i][r[~act], k[~act]] = both.upper[i][r[~act], k[~act]].clamp_max(0.0)
    return both


# --------------------------------------------------------------------------------------------------
# bounding
# --------------------------------------------------------------------------------------------------


def _backward(net: ReluNetwork, j: int, a: Tensor, relax: Sequence[_Relax], biases: Sequence[Tensor], inp: _Input, tight: bool,
              alphas: Sequence[Tensor] | None = None, betas: Sequence[Tensor] | None = None,
              coefs: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Lower bound of a^T z_j over S per domain, a (B, K, width_j) -> ((B, K), input coefficients (B, K, D)).

    CROWN's backward pass (as in :mod:`.propagation`) with per-domain relaxations, optional lower slopes
    ``alphas`` (B, K, w) and split terms ``betas`` (B, w), already multiplied by -split (beta-CROWN eq. 7);
    ``coefs`` collects the coefficients of relu(z_i) per layer (for branching).
    """
    b, k = a.shape[:2]
    const = a @ biases[j]
    for i in range(j - 1, -1, -1):
        a = net.layers[i + 1].transpose_flat(a.reshape(b * k, -1)).reshape(b, k, -1)
        if coefs is not None:
            coefs.insert(0, a)
        r = relax[i]
        neg = a < 0
        const = const + (torch.where(neg, a, 0.0) * r.up_int[:, None]).sum(-1)
        a = a * torch.where(neg, r.up_slope[:, None], r.lower_slope(None if alphas is None else alphas[i]))
        if betas is not None:
            a = a + betas[i][:, None]
        const = const + a @ biases[i]
    a = net.layers[0].transpose_flat(a.reshape(b * k, -1)).reshape(b, k, -1)
    return _concretize(a, inp, tight) + const, a


def _refine(net: ReluNetwork, dom: _Domains, biases: Sequence[Tensor], inp: _Input, max_elements: int) -> None:
    """CROWN bounds of the free unstable neurons of layers 1.. given the clamped bounds below, in place."""
    n_relu = len(dom.lower)
    relax = [_Relax.of(dom.lower[0], dom.upper[0])]
    widest = max([net.layers[0].in_features] + [t.shape[1] for t in dom.lower])
    for j in range(1, n_relu):
        lower, upper = dom.lower[j].clone(), dom.upper[j].clone()
        idx, ok = _unstable_rows((lower < 0) & (upper > 0) & (dom.split[j] == 0))
        m, width = lower.shape
        per = max(1, max_elements // max(1, m * widest * 2))
        for s in range(0, idx.shape[1], per):
            sel, valid = idx[:, s:s + per], ok[:, s:s + per]
            k = sel.shape[1]
            rows = torch.zeros((m, k, width), dtype=lower.dtype, device=lower.device)
            rows.scatter_(2, sel[..., None], valid[..., None].to(lower.dtype))
            both, _ = _backward(net, j, torch.cat((rows, -rows), dim=1), relax, biases, inp, tight=False)
            lo_k, hi_k = both[:, :k], -both[:, k:]
            cur_lo, cur_hi = lower.gather(1, sel), upper.gather(1, sel)
            lower.scatter_(1, sel, torch.where(valid, torch.maximum(cur_lo, lo_k), cur_lo))
            upper.scatter_(1, sel, torch.where(valid, torch.minimum(cur_hi, hi_k), cur_hi))
        dom.lower[j], dom.upper[j] = lower, upper
        relax.append(_Relax.of(lower, upper))


def _candidate(inp: _Input, a: Tensor) -> Tensor:
    """A point of S near the minimiser of a^T x' (a (B, D)): a box corner (linf), a clipped steepest step
    along -a (l2), or the single coordinate with the largest |a_k| and room to move (l1)."""
    x, xl, xu, eps = inp.x, inp.xl, inp.xu, inp.eps[:, None]
    if inp.norm is Norm.LINF:
        return torch.where(a > 0, xl, xu)
    if inp.norm is Norm.L2:
        step = -eps * a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(1e-30)
    else:
        room = torch.where(a > 0, x - xl, xu - x)
        k = (a.abs() * (room > 0)).argmax(-1, keepdim=True)
        step = torch.zeros_like(x).scatter(1, k, -torch.sign(a.gather(1, k)) * eps)
    return (x + step).clamp(xl, xu)  # clipping towards x keeps the point in the ball


def _filtered_choice(net: ReluNetwork, dom: _Domains, biases: Sequence[Tensor], inp: _Input, relax: Sequence[_Relax],
                     flat: Tensor, k: int, signs: Sequence[Tensor]) -> Tensor:
    """Filtered smart branching (De Palma et al. 2021, "Improved branch and bound for neural network verification
    via Lagrangian decomposition", section 5): of the ``k`` best-scoring neurons, the one whose two children have
    the highest sum of bounds, each child bounded by one backward pass with the domain's slopes and multipliers."""
    m = len(dom)
    score, cand = flat.topk(k, dim=1)  # (m, k), flat neuron indices
    reps = 2 * k
    idx = torch.arange(m, device=flat.device).repeat_interleave(reps)
    flat_c = cand.repeat_interleave(2, dim=1).reshape(-1)  # (m * 2k,): (cand 0 active, cand 0 inactive, ...)
    active = torch.arange(reps, device=flat.device).remainder(2).eq(0).repeat(m)
    lowers, uppers = [], []
    offset = 0
    rows = torch.arange(m * reps, device=flat.device)
    for i, (lo, up) in enumerate(zip(dom.lower, dom.upper)):
        w = lo.shape[1]
        lo_r, up_r = lo[idx].clone(), up[idx].clone()
        hit = (flat_c >= offset) & (flat_c < offset + w)
        r, col = rows[hit], flat_c[hit] - offset
        act = active[hit]
        lo_r[r[act], col[act]] = lo_r[r[act], col[act]].clamp_min(0.0)
        up_r[r[~act], col[~act]] = up_r[r[~act], col[~act]].clamp_max(0.0)
        lowers.append(lo_r)
        uppers.append(up_r)
        offset += w
    rx = [_Relax.of(lo, up) for lo, up in zip(lowers, uppers)]
    sub = _Input(inp.x[idx], inp.eps[idx], inp.norm, inp.lo, inp.hi)
    lb, _ = _backward(net, len(net.layers) - 1, dom.c[idx][:, None], rx, biases, sub, True,
                      [al[idx][:, None] for al in dom.alpha], [(b * s)[idx] for b, s in zip(dom.beta, signs)])
    both = lb[:, 0].reshape(m, k, 2).sum(-1)
    both = torch.where(score > 0, both, torch.full_like(both, -math.inf))
    return cand.gather(1, both.argmax(1, keepdim=True)).squeeze(1)


def _bound(net: ReluNetwork, dom: _Domains, biases: Sequence[Tensor], inp_all: _Input, opts: BabOptions, steps: int,
           max_elements: int, deadline: float = math.inf) -> tuple[Tensor, Tensor]:
    """Bound the domains in place (bound, alpha, beta, refined bounds, choice); returns (empty (M,), flips (M,)).
    The optimisation stops early at ``deadline`` (every iterate is a sound bound)."""
    inp = _Input(inp_all.x[dom.sample], inp_all.eps[dom.sample], inp_all.norm, inp_all.lo, inp_all.hi)
    n_relu = len(dom.lower)
    last = len(net.layers) - 1
    with torch.no_grad():
        if opts.refine:
            _refine(net, dom, biases, inp, max_elements)
        # the splits hold on the domain: clamp again after refinement; crossing bounds mean an empty domain
        for i in range(n_relu):
            dom.lower[i] = torch.where(dom.split[i] > 0, dom.lower[i].clamp_min(0.0), dom.lower[i])
            dom.upper[i] = torch.where(dom.split[i] < 0, dom.upper[i].clamp_max(0.0), dom.upper[i])
        empty = torch.zeros(len(dom), dtype=torch.bool)
        for i in range(n_relu):
            empty |= (dom.lower[i] > dom.upper[i]).any(1).cpu()
        relax = [_Relax.of(lo, up) for lo, up in zip(dom.lower, dom.upper)]
        signs = [-s.to(dom.c.dtype) for s in dom.split]
    c = dom.c[:, None]
    alphas = [al[:, None].clone().requires_grad_(True) for al in dom.alpha]
    betas = [be.clone().requires_grad_(True) for be in dom.beta]
    best = torch.full((len(dom),), -math.inf, dtype=dom.c.dtype, device=dom.c.device)
    best_alpha = [al.detach().clone() for al in dom.alpha]
    best_beta = [be.detach().clone() for be in dom.beta]
    opt = torch.optim.Adam([{"params": alphas, "lr": opts.lr_alpha}, {"params": betas, "lr": opts.lr_beta}])
    for step in range(steps + 1):
        with torch.enable_grad():
            lb, _ = _backward(net, last, c, relax, biases, inp, True, alphas, [b * s for b, s in zip(betas, signs)])
            lb = lb[:, 0]
        with torch.no_grad():
            better = lb.detach() > best
            best = torch.where(better, lb.detach(), best)
            for i in range(n_relu):
                best_alpha[i] = torch.where(better[:, None], alphas[i].detach()[:, 0], best_alpha[i])
                best_beta[i] = torch.where(better[:, None], betas[i].detach(), best_beta[i])
        if step == steps or opts.now() > deadline:
            break
        opt.zero_grad(set_to_none=True)
        (-lb.sum()).backward()
        opt.step()
        with torch.no_grad():
            for al in alphas:
                al.clamp_(0.0, 1.0)
            for be, sp in zip(betas, dom.split):
                be.clamp_(min=0.0).mul_(sp != 0)
    with torch.no_grad():
        coefs: list[Tensor] = []
        lb, a_in = _backward(net, last, c, relax, biases, inp, True, [al[:, None] for al in best_alpha],
                             [b * s for b, s in zip(best_beta, signs)], coefs)
        best = torch.maximum(best, lb[:, 0])
        dom.alpha, dom.beta = best_alpha, best_beta
        dom.bound = torch.maximum(best, dom.bound)
        # branching scores (module docstring): the upper line's intercept, or a tenth of the lower line's error
        scores = []
        for i in range(n_relu):
            lo, up, a = dom.lower[i], dom.upper[i], coefs[i][:, 0]
            free = (lo < 0) & (up > 0) & (dom.split[i] == 0)
            gap = torch.where(free, up * (-lo) / torch.where(free, up - lo, torch.ones_like(up)), torch.zeros_like(up))
            s = (-a).clamp_min(0) * gap + 0.1 * a.clamp_min(0) * torch.minimum(up, -lo).clamp_min(0)
            scores.append(torch.where(free, s + 1e-30, torch.full_like(s, -1.0)))
        flat = torch.cat(scores, dim=1)
        top, arg = flat.max(1) if flat.shape[1] else (torch.full((len(dom),), -1.0), torch.zeros(len(dom), dtype=torch.long))
        if opts.candidates > 1 and flat.shape[1] > 1:
            arg = _filtered_choice(net, dom, biases, inp, relax, flat, min(opts.candidates, flat.shape[1]), signs)
        dom.choice = torch.where(top > 0, arg, torch.full_like(arg, -1)).cpu()
        # a point of the domain's set that flips falsifies the sample (it lies in S, whatever the domain)
        pts = _candidate(inp, a_in[:, 0])
        val = (net.forward(pts.reshape(len(dom), *net.input_shape)) * dom.c).sum(1)
        flips = (val < 0).cpu()
    return empty, flips


# --------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------


def bab_bounds(net: ReluNetwork, x: Tensor, ref: Tensor, eps: Tensor | float, norm: Norm | str, *,
               bounds: tuple[float, float] | None = (0.0, 1.0), options: BabOptions = BabOptions(),
               dtype: torch.dtype = torch.float64, max_elements: int = _MAX_ELEMENTS) -> BabResult:
    """Branch and bound lower bounds of f^ref - f^j over B_p(x, eps) ∩ box (module docstring), shape (N, C-1).

    The root is alpha-CROWN (CROWN's intermediate bounds from :func:`marginkit.verify.propagation.compute_bounds`,
    the slopes of every row optimised for ``options.alpha_steps``); rows with a non-positive root bound are branched, all samples' domains in one pool, within
    ``options.time_limit`` seconds for the whole call. ``lower`` >= ``root`` elementwise, and sound.
    """
    start = time.perf_counter()
    inp = _prepare(net, x, eps, norm, bounds, dtype)
    n = inp.x.shape[0]
    device = inp.x.device
    ref = torch.as_tensor(ref, device=device).reshape(-1).long()
    if ref.shape[0] != n:
        raise ValueError(f"ref has {ref.shape[0]} entries for {n} inputs")
    c_all = specification_matrix(ref, net.num_classes, dtype=dtype).to(device)
    deadline = options.now() + options.time_limit
    # the root: CROWN's intermediate bounds, then every row as a domain without splits, its slopes optimised
    # for ``alpha_steps`` (alpha-CROWN on the specification rows, as in :mod:`.propagation`)
    root = compute_bounds(net, inp, c_all, "crown", max_elements=max_elements)
    assert root.spec is not None
    s_idx, r_idx = torch.ones_like(root.spec, dtype=torch.bool).nonzero(as_tuple=True)
    m = s_idx.numel()
    relax = [_Relax.of(lo, up) for lo, up in root.preact]
    pool: _Domains | None = _Domains(
        s_idx.cpu(), r_idx.cpu(), c_all[s_idx, r_idx], [lo[s_idx].clone() for lo, _ in root.preact],
        [up[s_idx].clone() for _, up in root.preact], [torch.zeros((m, lo.shape[1]), dtype=torch.int8, device=device) for lo, _ in root.preact],
        [r.alpha0[s_idx].clone() for r in relax], [torch.zeros_like(lo[s_idx]) for lo, _ in root.preact], root.spec[s_idx, r_idx].clone())
    assert pool is not None
    biases = _biases(net, dtype, device)
    _, flips = _bound(net, pool, biases, inp, BabOptions(**{**options.__dict__, "refine": False}), options.alpha_steps, max_elements)
    root_lb = torch.full_like(root.spec, math.nan)
    root_lb[s_idx, r_idx] = pool.bound
    leaf_min = torch.full(root_lb.shape, math.inf, dtype=torch.float64)
    status = [OPEN] * n
    domains = torch.ones(n, dtype=torch.long)
    pool = _drop_decided(_settle(pool, torch.zeros(m, dtype=torch.bool), flips, status, leaf_min), status, leaf_min)
    while pool is not None and len(pool):
        if options.now() > deadline or len(pool) > options.max_domains:
            break
        order = torch.argsort(pool.bound.cpu())
        pick, rest = order[:options.batch], order[options.batch:]
        kids = _children(pool.take(pick))
        pool = pool.take(rest) if rest.numel() else None
        empty, flips = _bound(net, kids, biases, inp, options, options.iterations, max_elements, deadline)
        # a leaf with every neuron fixed is linear on its domain: its bound is the Lagrangian dual of a
        # linear (linf, l1) or convex (l2) program, which more steps on beta bring to the optimum
        last = (kids.choice < 0) & (kids.bound.cpu() <= 0) & ~empty & ~flips
        if bool(last.any()) and options.leaf_iterations > 0:
            sel = last.nonzero().squeeze(1)
            leaf = kids.take(sel)
            _bound(net, leaf, biases, inp, options, options.leaf_iterations, max_elements, deadline)
            kids.bound = kids.bound.clone()
            kids.bound[sel.to(kids.bound.device)] = leaf.bound
        domains += torch.bincount(kids.sample, minlength=n)
        kids_left = _settle(kids, empty, flips, status, leaf_min)
        parts = [p for p in (pool, kids_left) if p is not None and len(p)]
        pool = _drop_decided(_Domains.cat(parts) if parts else None, status, leaf_min)
    if pool is not None and len(pool):
        _absorb(pool, leaf_min)
        for s in pool.sample.unique().tolist():
            if status[s] == OPEN:
                status[s] = TIMED_OUT
    for i in range(n):
        if status[i] == OPEN:  # every domain of the sample closed with a positive bound
            status[i] = VERIFIED
    lower = torch.maximum(leaf_min.to(root_lb.device), root_lb)
    return BabResult(lower, root_lb, status, domains, time.perf_counter() - start)


def _absorb(dom: _Domains, leaf_min: Tensor) -> None:
    """Leaves leaving the search keep their bounds in the minimum of their row."""
    if len(dom):
        flat = leaf_min.view(-1)
        key = dom.sample * leaf_min.shape[1] + dom.row
        flat.scatter_reduce_(0, key, dom.bound.detach().cpu().to(flat.dtype), reduce="amin")


def _drop_decided(pool: _Domains | None, status: list[str], leaf_min: Tensor) -> _Domains | None:
    """Domains of samples already falsified or stuck leave the pool (their bounds kept)."""
    if pool is None or not len(pool):
        return None
    keep = torch.tensor([status[s] == OPEN for s in pool.sample.tolist()], dtype=torch.bool)
    if bool(keep.all()):
        return pool
    _absorb(pool.take((~keep).nonzero().squeeze(1)), leaf_min)
    return pool.take(keep.nonzero().squeeze(1)) if bool(keep.any()) else None


def _settle(dom: _Domains, empty: Tensor, flips: Tensor, status: list[str], leaf_min: Tensor) -> _Domains | None:
    """Close empty and positive domains, mark falsified / stuck samples; the open domains remain."""
    bound = dom.bound.detach().cpu()
    closed = empty | (bound > 0)
    _absorb(dom.take((closed & ~empty).nonzero().squeeze(1)), leaf_min)
    for s in dom.sample[flips].unique().tolist():
        status[s] = FALSIFIED
    for s in dom.sample[~closed & (dom.choice < 0)].unique().tolist():
        if status[s] == OPEN:
            status[s] = STUCK
    left = (~closed).nonzero().squeeze(1)
    return dom.take(left) if left.numel() else None


def bab_radius(net: ReluNetwork, x: Tensor, ref: Tensor, norm: Norm | str, *, upper: Tensor | None = None,
               bounds: tuple[float, float] | None = (0.0, 1.0), options: BabOptions = BabOptions(), rtol: float = 0.01,
               start: Tensor | None = None, dtype: torch.dtype = torch.float64,
               max_elements: int = _MAX_ELEMENTS) -> RadiusResult:
    """Largest eps (within ``rtol``) that branch and bound verifies, per sample, within ``options.time_limit``
    seconds per sample (module docstring).

    ``start`` (N,) certified radii to start from (default: :func:`certified_radius` with alpha-CROWN,
    whose time counts against nobody's budget); ``upper`` (N,) verified upper bounds of the margin.
    The result is never below ``start``; ``evaluations`` counts bound computations (BaB calls count one
    per domain bounded).
    """
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    p = as_norm(norm)
    t0 = time.perf_counter()
    n = x.shape[0]
    up = torch.full((n,), math.inf, dtype=torch.float64) if upper is None else torch.as_tensor(upper, dtype=torch.float64).reshape(-1).cpu()
    ref = torch.as_tensor(ref).reshape(-1).long()
    evals = torch.zeros(n, dtype=torch.long)
    if start is None:
        base = certified_radius(net, x, ref, p, upper=up, bounds=bounds, method="alpha-crown", rtol=rtol,
                                alpha_steps=options.alpha_steps, dtype=dtype, max_elements=max_elements)
        lower, evals = base.lower.clone(), base.evaluations.clone()
    else:
        lower = torch.as_tensor(start, dtype=torch.float64).reshape(-1).cpu().clone()
    cap = box_cap(p, math.prod(x.shape[1:]), bounds)
    top = torch.minimum(up, torch.full_like(up, cap))
    shrink = -math.log1p(-rtol)
    for i in range(n):
        lo, hi = float(lower[i]), float(top[i])
        top_i = hi
        if not (math.isfinite(hi) and lo < hi and hi > 0) or math.isinf(lo):
            continue
        deadline = options.now() + options.time_limit
        growth = max(2 * rtol, _FIRST_STEP)
        failed: dict[float, bool] = {}  # radii whose step did not verify -> whether it only ran out of time
        while True:
            left = deadline - options.now()
            if left <= 0:
                break
            if hi - lo > rtol * hi:
                # steps still needed at this bracket: log2 of (log width / log of the tolerance)
                need = max(1.0, math.ceil(math.log2(max(2.0, math.log(hi / lo) / shrink)))) if lo > 0 else 8.0
                # BaB's cost grows steeply with eps: step up from the certified end in growing steps until one
                # fails, then bisect (a plain bisection would spend its first, hardest steps far above lo)
                mid = min(math.sqrt(lo * hi), lo * (1 + growth)) if lo > 0 else hi / 2
                share = left / need
            elif failed.get(hi, False):
                mid, share, growth = hi, left, max(2 * rtol, _FIRST_STEP)  # converged early: all that is left
            else:
                break
            res = bab_bounds(net, x[i:i + 1], ref[i:i + 1], mid, p, bounds=bounds, dtype=dtype, max_elements=max_elements,
                             options=BabOptions(**{**options.__dict__, "time_limit": share}))
            evals[i] += int(res.domains.sum()) + 1
            if bool(res.verified[0]):
                lo = mid
                growth *= 2
                hi = min([f for f in failed if f > lo] + [top_i])
            else:
                # a retried step that fails again is not retried a second time
                failed[mid] = res.status[0] == TIMED_OUT and share < left
                hi = mid
                growth = math.inf
        lower[i] = max(float(lower[i]), lo)
    return RadiusResult(lower, evals, time.perf_counter() - t0)
