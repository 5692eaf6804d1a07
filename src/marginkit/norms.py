"""The one place for norms: names, dual norms and batched per-sample norms.

Every module of marginkit that measures a perturbation or a weight difference goes through here, so
that "l2" means the same thing in the margins, the attacks, the consistency metrics and the bounds.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Sequence

import torch

__all__ = ["Norm", "as_norm", "dual", "batch_norm", "vector_norm", "steepest_direction", "project_ball", "parse_eps", "parse_radius"]


class Norm(str, Enum):
    """An l_p norm of a perturbation: ``l1``, ``l2`` or ``linf``."""

    L1 = "l1"
    L2 = "l2"
    LINF = "linf"

    @property
    def p(self) -> float:
        """The exponent p of the norm (``inf`` for linf)."""
        return {Norm.L1: 1.0, Norm.L2: 2.0, Norm.LINF: float("inf")}[self]

    @property
    def dual(self) -> "Norm":
        """The dual norm q with 1/p + 1/q = 1 (l1 <-> linf, l2 <-> l2)."""
        return {Norm.L1: Norm.LINF, Norm.L2: Norm.L2, Norm.LINF: Norm.L1}[self]

    def __str__(self) -> str:  # "l2", not "Norm.L2", in tables and messages
        return self.value


_ALIASES = {
    "l1": Norm.L1, "1": Norm.L1, "1.0": Norm.L1,
    "l2": Norm.L2, "2": Norm.L2, "2.0": Norm.L2,
    "linf": Norm.LINF, "inf": Norm.LINF, "l_inf": Norm.LINF, "infinity": Norm.LINF,
}


def as_norm(norm: "Norm | str | float | int") -> Norm:
    """Normalise a user spelling (``"l2"``, ``2``, ``"inf"``, ``float('inf')``, a :class:`Norm`) to a Norm."""
    if isinstance(norm, Norm):
        return norm
    key = str(norm).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"unknown norm {norm!r}: use one of 'l1', 'l2', 'linf'")


def dual(norm: "Norm | str | float | int") -> Norm:
    """Dual norm of ``norm`` (paper eq. 2 divides logit gaps by the dual norm of the weight difference)."""
    return as_norm(norm).dual


def vector_norm(v: torch.Tensor, norm: "Norm | str | float | int", dim: int | tuple[int, ...] = -1) -> torch.Tensor:
    """Norm of ``v`` along ``dim``."""
    return torch.linalg.vector_norm(v, ord=as_norm(norm).p, dim=dim)


def batch_norm(delta: torch.Tensor, norm: "Norm | str | float | int") -> torch.Tensor:
    """Per-sample norm of a batch of perturbations of any shape (N, ...) -> (N,)."""
    return torch.linalg.vector_norm(delta.reshape(delta.shape[0], -1), ord=as_norm(norm).p, dim=1)


def _per_sample(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def steepest_direction(grad: torch.Tensor, norm: "Norm | str") -> torch.Tensor:
    """Unit-norm direction d maximising <grad, d> per sample (the dual-norm maximiser).

    l2: grad / ||grad||_2; linf: sign(grad); l1: a signed one-hot on the largest |grad| coordinate.
    Samples with a zero gradient get a zero direction.
    """
    norm = as_norm(norm)
    flat = grad.reshape(grad.shape[0], -1)
    if norm is Norm.L2:
        d = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    elif norm is Norm.LINF:
        d = flat.sign()
    else:
        k = flat.abs().argmax(1, keepdim=True)
        d = torch.zeros_like(flat).scatter(1, k, flat.gather(1, k).sign())
    return d.reshape(grad.shape)


def project_ball(delta: torch.Tensor, eps: torch.Tensor | float, norm: "Norm | str") -> torch.Tensor:
    """Euclidean projection of each sample's ``delta`` onto the l_p ball of radius ``eps`` (scalar or (N,)).

    l1 uses the exact sort-based projection of Duchi et al. (2008).
    """
    norm = as_norm(norm)
    flat = delta.reshape(delta.shape[0], -1)
    e = _per_sample(eps, flat).reshape(-1, 1).clamp_min(0)
    if norm is Norm.LINF:
        out = torch.maximum(torch.minimum(flat, e), -e)
    elif norm is Norm.L2:
        n = flat.norm(dim=1, keepdim=True)
        out = flat * torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))
    else:
        a = flat.abs()
        inside = a.sum(1, keepdim=True) <= e
        mu, _ = a.sort(dim=1, descending=True)
        css = mu.cumsum(1)
        ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
        cond = mu - (css - e) / ks > 0
        rho = cond.to(flat.dtype).mul(ks).argmax(1, keepdim=True)  # last index where cond holds
        theta = ((css.gather(1, rho) - e) / (rho + 1).to(flat.dtype)).clamp_min(0)
        out = torch.where(inside, flat, flat.sign() * (a - theta).clamp_min(0))
    return out.reshape(delta.shape)


def parse_eps(value: "str | float | int | Sequence[str | float | int]") -> list[float]:
    """Radii from user input: a number, a fraction such as ``"8/255"``, or a comma-separated list of
    those (``"2/255,4/255,0.1"``); a sequence of such items is accepted too. Every radius must be a
    finite number >= 0; ValueError names the offending item otherwise. The one eps grammar of the
    package: every command and library entry that takes eps text goes through here."""
    if isinstance(value, (list, tuple)):
        items: list[str | float | int] = list(value)
    elif isinstance(value, str):
        items = [p for p in (t.strip() for t in value.split(",")) if p]
    else:
        items = [value]  # type: ignore[list-item]  # a number here: str and sequences were handled above
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"eps must be a number, got {item!r}")
        try:
            if isinstance(item, str):
                num, sep, den = item.partition("/")
                eps = float(num) / float(den) if sep else float(num)
            else:
                eps = float(item)
        except (TypeError, ValueError, ZeroDivisionError):
            raise ValueError(f"eps: expected a number or a fraction such as 8/255, got {item!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be finite and >= 0, got {item!r}")
        out.append(eps)
    if not out:
        raise ValueError(f"eps: give at least one radius, got {value!r}")
    return out


def parse_radius(value: "str | float | int") -> float:
    """Exactly one radius in the grammar of :func:`parse_eps` (``"8/255"``, ``0.5``)."""
    vals = parse_eps(value)
    if len(vals) != 1:
        raise ValueError(f"eps: expected one radius, got {len(vals)} ({value!r})")
    return vals[0]
