"""Shared machinery of the minimal-norm attacks: counted model queries, flip tests, per-sample budgets.

Every attack in :mod:`marginkit.attacks` talks to the model only through an :class:`Oracle`, which
counts forward and backward passes per sample (the work budget of the issue), stops rows whose sample
has spent its budget or whose wall-clock deadline passed, and applies one flip criterion everywhere:
a point is adversarial when the best wrong logit beats the reference logit by a small margin of
safety relative to the logit scale. The safety margin matters because a point lying exactly on the
float32 decision boundary flips or not depending on how the batch is laid out
(the float32 boundary problem of minimal-norm attacks); reporting only points that clear it keeps every
reported adversarial a point that really flips under a plain forward pass.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Protocol

import torch
from torch import nn

from ..checks import MarginkitWarning
from ..margins.gap import SAFETY, SEARCH_FACTOR, flip_gap, is_flipped  # noqa: F401 - re-exported to the attacks


class Queries(Protocol):
    """What the attacks need of an oracle (an :class:`Oracle`, or a view of it through a subset of samples)."""

    def can_afford(self, owner: torch.Tensor, cost_per_row: int) -> torch.Tensor: ...

    def value_and_grad(self, x: torch.Tensor, owner: torch.Tensor, ref: torch.Tensor, aim: torch.Tensor | None,
                       objective: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def logits(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor: ...

    def out_of_time(self) -> bool: ...


class Oracle:
    """Counted access to the model for a batch of samples (real state: pass counters and a deadline).

    Rows are (sample, auxiliary) pairs; ``owner[row]`` says which sample a row works for, so per-sample
    work is counted however many rows (targets, restarts) a sample uses.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], n_samples: int, device: torch.device,
                 budget: int | None, deadline: float | None, max_rows: int, fast: nn.Module | None = None,
                 min_rows: int = 8) -> None:
        self.model = model
        # ``fast``: a copy of the model in the channels-last layout (see engine._channels_last_copy) that
        # the search queries; the clean logits and the final re-check use ``model`` itself
        self.fast = fast
        self.input_shape = tuple(input_shape)
        self.forwards = torch.zeros(n_samples, dtype=torch.long, device=device)
        self.backwards = torch.zeros(n_samples, dtype=torch.long, device=device)
        self.budget = budget
        self.deadline = deadline
        self.max_rows = max(1, int(max_rows))
        # every model call gets at least this many rows: BLAS picks other kernels (other rounding) for tiny
        # batches, which would make a row's result depend on how many rows share its call
        self.min_rows = max(1, int(min_rows))
        self.zero_grad_rows = 0
        self.nonfinite_rows = 0

    @property
    def passes(self) -> torch.Tensor:
        return self.forwards + self.backwards

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def can_afford(self, owner: torch.Tensor, cost_per_row: int, rows_per_sample: torch.Tensor | None = None) -> torch.Tensor:
        """Mask of rows whose sample can still pay ``cost_per_row`` for each of its active rows."""
        if self.budget is None:
            return torch.ones_like(owner, dtype=torch.bool)
        need = torch.zeros_like(self.forwards).index_add_(0, owner, torch.full_like(owner, cost_per_row))
        return (self.passes + need)[owner] <= self.budget

    def _forward(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        x = x.reshape(-1, *self.input_shape)
        n = x.shape[0]
        if 0 < n < self.min_rows:
            x = torch.cat([x, x[-1:].expand(self.min_rows - n, *x.shape[1:])])
        if self.fast is None or exact:
            return self.model(x)[:n]
        return self.fast(x.contiguous(memory_format=torch.channels_last))[:n]

    def _plain(self, x: torch.Tensor, exact: bool) -> torch.Tensor:
        return torch.cat([self._forward(x[sl], exact) for sl in _slices(x.shape[0], self.max_rows)])

    @torch.no_grad()
    def logits(self, x: torch.Tensor, owner: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Plain forward passes of flat points ``x`` (R, D), in chunks of ``max_rows``, counted for ``owner``
        (``exact``: through the model itself, not its fast copy)."""
        out = self._plain(x, exact) if x.shape[0] else x.new_zeros(0, 0)
        self.forwards.index_add_(0, owner, torch.ones_like(owner))
        return out

    @torch.no_grad()
    def recheck(self, x: torch.Tensor) -> torch.Tensor:
        """Plain forward passes of flat points ``x`` through the model itself, not counted (the engine's
        final re-check)."""
        return self._plain(x, True)

    def value_and_grad(self, x: torch.Tensor, owner: torch.Tensor, ref: torch.Tensor, aim: torch.Tensor | None,
                       objective=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, linearised gap g and its gradient at ``x`` (one forward + one backward per row).

        ``aim`` >= 0 in a row: g = z_aim - z_ref (the gap towards one class, FAB-T style); -1 or None:
        g = max_{j != ref} z_j - z_ref. g > 0 means the point is on the other side of that boundary.
        ``objective(z, ref)``, if given, replaces g by another differentiable per-row score of the logits
        (same sign convention), e.g. the normalised gap of :mod:`.alm`.
        """
        zs, gs, ws = [], [], []
        for sl in _slices(x.shape[0], self.max_rows):
            with torch.enable_grad():
                xi = x[sl].detach().requires_grad_(True)  # a leaf sharing x's memory: autograd only reads it
                z = self._forward(xi)
                r = ref[sl]
                z_ref = z.gather(1, r[:, None]).squeeze(1)
                g = z.scatter(1, r[:, None], float("-inf")).amax(1) - z_ref
                if aim is not None:
                    a = aim[sl]
                    g = torch.where(a >= 0, z.gather(1, a.clamp_min(0)[:, None]).squeeze(1) - z_ref, g)
                if objective is not None:
                    g = objective(z, r)
                (w,) = torch.autograd.grad(g.sum(), xi)
            zs.append(z.detach())
            gs.append(g.detach())
            ws.append(w.detach())
        z, g, w = (zs[0], gs[0], ws[0]) if len(zs) == 1 else (torch.cat(zs), torch.cat(gs), torch.cat(ws))
        # one pass over the (R, D) gradient: amax propagates NaN and inf, and is 0 exactly for a zero gradient
        w_max = w.abs().amax(1) if w.shape[1] else w.new_zeros(w.shape[0])
        bad = ~torch.isfinite(z.sum(1)) | ~torch.isfinite(w_max)
        if bad.any():
            self.nonfinite_rows += int(bad.sum())
            w = torch.where(bad[:, None], torch.zeros_like(w), w)
            g = torch.where(bad, torch.full_like(g, float("-inf")), g)
            w_max = torch.where(bad, torch.zeros_like(w_max), w_max)
        self.zero_grad_rows += int((w_max == 0).sum())
        ones = torch.ones_like(owner)
        self.forwards.index_add_(0, owner, ones)
        self.backwards.index_add_(0, owner, ones)
        return z, g, w

    def warn_if_degenerate(self) -> None:
        if self.zero_grad_rows:
            warnings.warn(f"the model returned an all-zero input gradient {self.zero_grad_rows} time(s); the attack "
                          "cannot move those samples (saturated outputs, gradient masking or a non-differentiable "
                          "model). Their margins may be overestimated or reported as failed.", MarginkitWarning, stacklevel=3)
        if self.nonfinite_rows:
            warnings.warn(f"the model returned non-finite logits or gradients at {self.nonfinite_rows} attack iterate(s); "
                          "those points were treated as not adversarial", MarginkitWarning, stacklevel=3)


def _slices(n: int, size: int) -> list[slice]:
    """``n`` rows in chunks of at most ``size``, as equal as possible (294 rows at 192: 147 + 147)."""
    k = max(1, -(-n // size))
    bounds = [(i * n) // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def cosine(step: int, steps: int, start: float, end: float) -> float:
    """Cosine annealing from ``start`` to ``end`` over ``steps`` (FMN's step and gamma schedule)."""
    if steps <= 1:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / (steps - 1)))


class Best:
    """Best verified adversarial per sample ever queried (not the last iterate), with its class and origin."""

    def __init__(self, x0: torch.Tensor, ref: torch.Tensor, norm, target: torch.Tensor | None = None) -> None:
        from ..norms import as_norm

        self.x0, self.ref, self.norm, self.target = x0, ref, as_norm(norm), target
        n = x0.shape[0]
        self.value = torch.full((n,), float("inf"), dtype=torch.float64, device=x0.device)
        self.x = x0.clone()
        self.cls = torch.full((n,), -1, dtype=torch.long, device=x0.device)
        self.code = torch.full((n,), -1, dtype=torch.long, device=x0.device)

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.value)

    def offer(self, owner: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, code: int, *, unique: bool = False) -> torch.Tensor:
        """Record rows ``x`` (with their ``logits``) that flip and beat their sample's best; returns the flip mask.

        ``unique``: the caller guarantees at most one row per sample (no reduction over rows needed). The
        norm is always that of the stored point minus x_0, not of the caller's delta (they differ by rounding).
        """
        from ..norms import batch_norm

        tgt = None if self.target is None else self.target[owner]
        flipped = is_flipped(logits, self.ref[owner], tgt, SEARCH_FACTOR)
        value = torch.where(flipped, batch_norm(x - self.x0[owner], self.norm).double(), torch.full_like(flipped, float("inf"), dtype=torch.float64))
        if unique:
            r = (value < self.value[owner]).nonzero().squeeze(1)  # winning rows, at most one per sample
            idx = owner[r]
        else:
            per = torch.full_like(self.value, float("inf")).scatter_reduce(0, owner, value, "amin")
            better = per < self.value
            rows = torch.arange(owner.shape[0], device=owner.device)
            winner = (value == per[owner]) & better[owner] & torch.isfinite(value)
            big = torch.full_like(self.cls, owner.shape[0])
            first = big.scatter_reduce(0, owner, torch.where(winner, rows, torch.full_like(rows, owner.shape[0])), "amin")
            idx = (first < owner.shape[0]).nonzero().squeeze(1)  # samples with a winner: its first row
            r = first[idx]
        if idx.numel():
            self.value[idx] = value[r]
            self.x[idx] = x[r].to(self.x.dtype)
            self.cls[idx] = logits[r].argmax(1)
            self.code[idx] = code
        return flipped

    def absorb(self, other: "Best") -> None:
        """Take over ``other``'s points where they are smaller (both track the same samples)."""
        take = other.value < self.value
        self.value = torch.where(take, other.value, self.value)
        self.x = torch.where(take[:, None], other.x, self.x)
        self.cls = torch.where(take, other.cls, self.cls)
        self.code = torch.where(take, other.code, self.code)

    def fresh(self) -> "Best":
        """An empty tracker for the same samples (an independent run of another method)."""
        return Best(self.x0, self.ref, self.norm, self.target)


def live_rows(oracle: Queries, owner: torch.Tensor, active: torch.Tensor, cost: int = 2) -> torch.Tensor:
    """Rows of an iterative attack still worth a step: ``active`` and affordable within their sample's pass
    budget; none once the time limit is reached. ``oracle`` is anything with ``out_of_time`` and
    ``can_afford`` (the engine's per-batch view included)."""
    if oracle.out_of_time():
        return owner.new_empty(0)
    rows = torch.nonzero(active).squeeze(1)
    return rows[oracle.can_afford(owner[rows], cost)]
