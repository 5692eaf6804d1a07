"""Exact input margins of small ReLU networks: one call, a re-verified bracket per sample.

:func:`exact_margin` solves, per sample, the mixed-integer programs of :mod:`marginkit.verify.milp`
(Tjeng, Xiao & Tedrake, ICLR 2019) inside the ball ||delta|| <= upper given by the caller (an attack's
verified upper bound, ``inf`` for the whole box) and turns what the solver proved into a bracket:

* ``lower``: the smallest of the targets' proven lower bounds (solver dual bounds, relaxation bounds of
  pruned targets); never above ``upper``.
* ``upper``: the smaller of the caller's upper bound and the norm of the solver's optimal point after it
  was re-verified: the point, nudged off the decision boundary by the smallest step that makes it flip
  (the optimum is a tie f^i = f^j, which the package's flip test with its margin of safety rejects), must
  be classified differently from the reference in a float64 forward pass of the model
  (:func:`marginkit.margins.gap.is_flipped`).
* ``status``: ``exact`` when both ends agree to ``rtol`` (relative, plus the nudge); ``bracketed`` when
  the time limit stopped the search (method ``milp-<solver>[timeout]``); ``upper-only`` / ``failed``
  when a solver failed (method ``...[failed]``); ``misclassified`` for a wrong label (margin 0).

Pre-activation bounds on box ∩ ball: the first layer's interval (exact for linf, ball and box combined
for l1 / l2), the bound propagation of :mod:`marginkit.verify.propagation` for the deeper layers when it
is available, then LP tightening of the unstable neurons (Tjeng et al. section 4.1).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import check_box, check_inputs, model_device
from ..margins.gap import is_flipped, reference_class
from ..norms import Norm, as_norm
from ..results.status import BRACKETED, EXACT, MISCLASSIFIED, status_of
from .enumerate import dense_layers
from .milp import SCIP_SETTINGS, build_program, resolve_solver, solve_margin, tighten_bounds

__all__ = ["ExactResult", "exact_margin", "EXACT_RTOL"]

# Relative agreement of the proven lower bound and the re-verified point for a margin to count as exact.
EXACT_RTOL = 1e-4
# Absolute part of the agreement: the nudge that moves the optimum (a tie) to a point that clears the
# flip test's margin of safety is about SAFETY * logit scale / ||gradient||, a few 1e-6 on these models.
EXACT_ATOL = 2e-5
# The caller's upper bound is enlarged by this much (relative) to form the search ball, so an optimum that
# equals it is inside the ball and its point can be recovered.
_RADIUS_SLACK = 1e-6


@dataclass
class ExactResult:
    """Per-sample exact input margins or brackets (see :func:`exact_margin`).

    ``lower``/``upper``: (N,) float64; ``status``: (N,) vocabulary of :mod:`marginkit.results.status`;
    ``seconds``: (N,) wall time; ``method``: (N,) e.g. ``milp-scip``, ``milp-scip[timeout]``;
    ``point``: (N, *input_shape) float64 re-verified flipping input (NaN rows where none);
    ``target``: (N,) class reached at the point (-1 when none); ``binaries``: (N,) unstable ReLUs encoded.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    status: list[str]
    seconds: torch.Tensor
    method: list[str]
    point: torch.Tensor
    target: torch.Tensor
    binaries: torch.Tensor
    norm: Norm
    messages: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> torch.Tensor:
        """(N,) the exact margin where status is ``exact`` (the verified upper end), NaN elsewhere."""
        ok = torch.tensor([s == EXACT for s in self.status], dtype=torch.bool)
        return torch.where(ok, self.upper, torch.full_like(self.upper, float("nan")))

    def columns(self) -> dict[str, np.ndarray]:
        """Columns of the per-sample results table (:data:`marginkit.results.COLUMNS`)."""
        return {
            "input_margin_lower": self.lower.numpy().astype(np.float64),
            "input_margin_upper": self.upper.numpy().astype(np.float64),
            "status": np.array(self.status, dtype=object),
            "method": np.array(self.method, dtype=object),
            "seconds": self.seconds.numpy().astype(np.float64),
        }


def _first_layer_bounds(w: np.ndarray, b: np.ndarray, x0: np.ndarray, box: tuple[np.ndarray, np.ndarray],
                        radius: float, norm: Norm) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of W x + b over box ∩ {||x - x0|| <= radius}: the interval over the box clipped to the ball
    (exact for linf), intersected for l1 / l2 with W x0 + b -/+ radius ||W_i||_q."""
    lo = np.maximum(box[0], x0 - radius) if math.isfinite(radius) else box[0]
    hi = np.minimum(box[1], x0 + radius) if math.isfinite(radius) else box[1]
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    zl, zu = wp @ lo + wn @ hi + b, wp @ hi + wn @ lo + b
    if norm is not Norm.LINF and math.isfinite(radius):
        q = {Norm.L1: np.inf, Norm.L2: 2}[norm]
        spread = radius * np.linalg.norm(w, q, axis=1)
        z0 = w @ x0 + b
        zl, zu = np.maximum(zl, z0 - spread), np.minimum(zu, z0 + spread)
    return zl, zu


def _propagated_bounds(model: nn.Module, shape: tuple[int, ...], x0: np.ndarray, radius: float, norm: Norm,
                       bounds: tuple[float, float], widths: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bounds of every hidden layer from the package's bound propagation; +-inf where it is unavailable."""
    none = [(np.full(m, -np.inf), np.full(m, np.inf)) for m in widths]
    if not math.isfinite(radius):
        return none
    try:
        from .network import as_relu_network
        from .propagation import preactivation_bounds
    except ImportError:
        return none
    net = as_relu_network(model, shape)
    x = torch.as_tensor(x0, dtype=torch.float64, device=model_device(model)).reshape(1, *shape)
    out = preactivation_bounds(net, x, radius, str(norm), bounds=bounds, method="crown")
    return [(lo.detach().double().cpu().numpy().reshape(-1), hi.detach().double().cpu().numpy().reshape(-1))
            for lo, hi in out]


def _steepest(g: np.ndarray, room: np.ndarray, norm: Norm) -> np.ndarray:
    """Unit direction (in ``norm``) of steepest ascent of g^T d among coordinates with room in the box."""
    g = g * (room > 0)
    if norm is Norm.LINF:
        return np.sign(g)
    if norm is Norm.L2:
        return g / max(float(np.linalg.norm(g)), 1e-300)
    d = np.zeros_like(g)
    k = int(np.argmax(np.abs(g)))
    d[k] = np.sign(g[k])
    return d


def _nudge(model64: nn.Module, shape: tuple[int, ...], x0: np.ndarray, xs: np.ndarray, ref: int, target: int,
           norm: Norm, box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, float] | None:
    """The nearest point to x0 among small steps from the optimum ``xs`` that flips in a float64 forward
    pass: (point, ||point - x0||) or None.

    The optimum is a tie f^ref = f^target, often on a ReLU kink where one gradient does not describe the
    gap, so steps go along several directions: steepest ascent of f^target - f^ref at ``xs`` and at
    points a hair away from it (outwards from x0, and towards the box centre), and outwards along xs - x0.
    """
    device = model_device(model64)
    lo, hi = box
    radial = xs - x0
    centre = 0.5 * (lo + hi) - xs
    probes = np.stack([xs, xs + 1e-7 * radial / max(np.abs(radial).max(), 1e-300),
                       xs + 1e-7 * centre / max(np.abs(centre).max(), 1e-300)])
    x = torch.tensor(probes, dtype=torch.float64, device=device, requires_grad=True)
    z = model64(x.reshape(len(probes), *shape))
    (grad,) = torch.autograd.grad((z[:, target] - z[:, ref]).sum(), x)
    grads = grad.detach().cpu().numpy()
    dirs = []
    for g in grads:
        room = np.where(g > 0, hi - xs, np.where(g < 0, xs - lo, 0.0))
        dirs.append(_steepest(g, room, norm))
    dirs.append(radial / max(float(np.abs(radial).max()), 1e-300))
    steps = np.concatenate([[0.0], np.geomspace(1e-9, 1e-3, 31)])
    cand = np.clip(xs[None, None, :] + steps[None, :, None] * np.stack(dirs)[:, None, :], lo, hi).reshape(-1, xs.size)
    with torch.no_grad():
        logits = model64(torch.as_tensor(cand, device=device).reshape(len(cand), *shape))
    refs = torch.full((len(cand),), ref, dtype=torch.long, device=device)
    ok = is_flipped(logits, refs).cpu().numpy()
    if not ok.any():
        return None
    p = {Norm.L1: 1, Norm.L2: 2, Norm.LINF: np.inf}[norm]
    dist = np.where(ok, np.linalg.norm(cand - x0[None, :], p, axis=1), np.inf)
    i = int(np.argmin(dist))
    return cand[i], float(dist[i])


def exact_margin(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, norm: Norm | str = "linf",
                 *, upper: torch.Tensor | np.ndarray | float = math.inf, bounds: tuple[float, float] = (0.0, 1.0),
                 time_limit: float = 60.0, solver: str = "auto", rtol: float = EXACT_RTOL,
                 tighten: bool = True) -> ExactResult:
    """Exact input margins by mixed-integer programming (Tjeng et al. 2019), re-verified, per sample.

    ``model``: a feed-forward ReLU network (:func:`marginkit.verify.network.as_relu_network`). ``upper``:
    per-sample verified upper bounds (an attack's, e.g. ``marginkit.attacks.input_margin(...).upper``), or
    one number; ``inf`` searches the whole box (slower: the big-M constants come from the box). The
    reference class is the prediction, or ``labels`` when given. ``time_limit``: seconds per sample
    (bounds, tightening and every target's MILP together); a sample that runs out keeps its bracket
    (status ``bracketed``). ``solver``: ``auto`` (SCIP when pyscipopt is installed, else HiGHS),
    ``scip`` or ``highs``; l2 needs SCIP. ``tighten``: LP tightening of unstable neurons' bounds.
    """
    norm = as_norm(norm)
    inputs = check_inputs(inputs)
    check_box(inputs, bounds)
    if time_limit <= 0:
        raise ValueError(f"time_limit must be positive, got {time_limit}")
    name = resolve_solver(solver, norm)
    n_samples = inputs.shape[0]
    shape = tuple(inputs.shape[1:])
    ups = np.broadcast_to(np.asarray(upper.detach().cpu() if isinstance(upper, torch.Tensor) else upper,
                                     dtype=np.float64), (n_samples,)).copy()
    if np.isnan(ups).any() or (ups < 0).any():
        raise ValueError("upper bounds must be >= 0 (inf where no flipping point is known), got NaN or a negative value")
    layers = dense_layers(model, shape)
    model64 = copy.deepcopy(model).double().eval()
    device = model_device(model64)
    x = inputs.detach().to(device=device, dtype=torch.float64)
    with torch.no_grad():
        logits = model64(x)
    refs = reference_class(logits, labels).cpu().numpy()
    wrong = (logits.gather(1, torch.as_tensor(refs, device=device)[:, None]) < logits.max(1, keepdim=True).values)
    wrong_np = wrong.squeeze(1).cpu().numpy()
    xf = x.reshape(n_samples, -1).cpu().numpy()
    n_in = xf.shape[1]
    box = (np.full(n_in, float(bounds[0])), np.full(n_in, float(bounds[1])))
    widths = [w.shape[0] for w, _ in layers[:-1]]

    lower = np.full(n_samples, np.nan)
    upper_out = ups.copy()
    seconds = np.zeros(n_samples)
    status: list[str] = []
    method: list[str] = []
    points = np.full((n_samples, n_in), np.nan)
    targets = np.full(n_samples, -1, dtype=np.int64)
    binaries = np.zeros(n_samples, dtype=np.int64)
    messages: list[str] = []
    for s in range(n_samples):
        t0 = time.monotonic()
        deadline = t0 + time_limit
        tag = f"milp-{name}"
        if labels is not None and wrong_np[s]:
            lower[s] = upper_out[s] = 0.0
            status.append(MISCLASSIFIED)
            method.append("clean")
            continue
        x0, ref = xf[s], int(refs[s])
        radius = ups[s] * (1 + _RADIUS_SLACK) + 1e-12 if math.isfinite(ups[s]) else math.inf
        try:
            pre = _propagated_bounds(model, shape, x0, radius, norm, bounds, widths) if len(layers) > 1 else []
            if pre:
                zl, zu = _first_layer_bounds(*layers[0], x0, box, radius, norm)
                pre[0] = (np.maximum(pre[0][0], zl), np.minimum(pre[0][1], zu))
            if tighten or any(not np.isfinite(lo).all() for lo, _ in pre):
                pre = tighten_bounds(layers, x0, norm, pre, box=box, radius=radius,
                                     deadline=deadline if tighten else math.inf)
            prog = build_program(layers, x0, norm, pre, box=box, radius=radius)
            out = solve_margin(prog, ref, cutoff=radius, deadline=deadline, solver=name)
        except Exception as exc:  # a solver failure is a status, never a margin
            messages.append(f"sample {s}: {type(exc).__name__}: {exc}")
            status.append(status_of(math.nan, upper_out[s]))
            method.append(f"{tag}[failed]")
            seconds[s] = time.monotonic() - t0
            continue
        binaries[s] = out.binaries
        verified = None
        if out.x is not None:
            xs = np.clip(x0 + out.x[:n_in], box[0], box[1])
            verified = _nudge(model64, shape, x0, xs, ref, out.target, norm, box)
        if verified is not None:
            points[s], targets[s] = verified[0], out.target
            upper_out[s] = min(upper_out[s], verified[1])
        lo_s = out.lower
        if lo_s > upper_out[s] * (1 + 10 * rtol) + EXACT_ATOL:
            # a proof above a verified flip: numerics or a wrong upper bound; certify nothing
            messages.append(f"sample {s}: proven lower bound {lo_s:.6g} above the verified upper bound {upper_out[s]:.6g}")
            status.append(status_of(math.nan, upper_out[s]))
            method.append(f"{tag}[inconsistent]")
            seconds[s] = time.monotonic() - t0
            continue
        lower[s] = min(lo_s, upper_out[s])
        agree = math.isfinite(upper_out[s]) and upper_out[s] - lower[s] <= rtol * upper_out[s] + EXACT_ATOL
        if math.isinf(lower[s]) and math.isinf(upper_out[s]):
            status.append(EXACT)  # nothing in the box flips: the search covered the whole box
        elif agree and verified is not None:
            # lower is the minimum over every target's proof, so agreement is exactness even when the
            # clock stopped a target whose bound was already above the optimum
            status.append(EXACT)
        else:
            st = status_of(lower[s], upper_out[s])
            status.append(BRACKETED if st == EXACT else st)
        suffix = "[timeout]" if out.timed_out and status[-1] != EXACT else ""
        method.append(tag + suffix)
        seconds[s] = time.monotonic() - t0
    return ExactResult(
        lower=torch.from_numpy(lower), upper=torch.from_numpy(upper_out), status=status,
        seconds=torch.from_numpy(seconds), method=method,
        point=torch.from_numpy(points).reshape(n_samples, *shape), target=torch.from_numpy(targets),
        binaries=torch.from_numpy(binaries), norm=norm, messages=messages,
        settings={"solver": name, "time_limit": time_limit, "rtol": rtol, "atol": EXACT_ATOL, "bounds": tuple(bounds),
                  "tighten": tighten, "versions": _solver_versions(name),
                  **({"scip_settings": dict(SCIP_SETTINGS)} if name == "scip" else {})})


def _solver_versions(name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        import scipy

        out["scipy"] = scipy.__version__
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    if name == "scip":
        import pyscipopt

        out["pyscipopt"] = getattr(pyscipopt, "__version__", "?")
        out["scip"] = str(pyscipopt.Model().version())
    return out
