"""The input-margin engine: per-sample upper bounds on d_in(x) from minimal-norm attacks.

``input_margin`` returns, for every sample, the norm of the best verified adversarial point ever queried
(an upper bound on the margin d_in of the margin-consistency paper, eq. 1), the class it flips to, the
work spent and a status. What it runs is a schedule (:mod:`.schedule`): a tuple of steps, each a stage
(:mod:`.stages`) with the samples it runs on and where it starts. The presets "fast", "default" and
"thorough" (:mod:`.presets`) are such schedules; a user may pass their own.

A sample that no stage flips gets an upper bound of ``inf`` and status ``"failed"`` (never 0, never the
clean input). Every reported point is re-checked at the end with a plain forward pass of the model itself
(flip test of :mod:`marginkit.margins.gap`, with its margin of safety).

A sample's result does not depend on the other samples of the call: every stage keeps per-sample (or
per-row) state, budgets are per sample, and every model call has at least ``RuntimeOptions.min_rows`` rows
(BLAS libraries pick other kernels, with other rounding, for very small batches; an iterative attack
amplifies a rounding difference into a different end point).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import MarginkitWarning, check_inputs, check_labels, check_logits, check_model_mode, looks_like_probabilities, model_device
from ..norms import Norm, as_norm
from ..results.status import FAILED, MISCLASSIFIED, status_of
from ._oracle import Best, Oracle, is_flipped
from .presets import PRESETS, SINGLE, preset as preset_schedule
from .schedule import Schedule, Step, describe, run_schedule
from .stages import AffineExact, Alma, Context

__all__ = ["InputMarginResult", "RuntimeOptions", "input_margin"]

# Largest difference between the channels-last copy's logits and the model's on the probe inputs, relative
# to the logit scale: a quarter of the flip test's margin of safety, so that the re-check through the model
# itself accepts every point the search accepted.
_LAYOUT_RTOL = 5e-7
# Activations of one forward per model call on CPU (bench/rows_per_call.py measures where the per-row cost
# of a forward + backward rises with the rows of a call).
_CPU_ACTIVATION_BYTES = 24 * 2**20

# The keyword arguments of the first engine version and what replaced them.
_REPLACED = {
    "topk": "Projection(topk=...) in a schedule",
    "fab_steps": "Projection(steps=...) in a schedule",
    "ball_steps": "Ball(steps=...) in a schedule",
    "alm_steps": "Alma(steps=...) in a schedule",
    "alma_lrs": "Alma(lrs=...) in a schedule",
    "alma_more": "a Step(Alma(lrs=...), samples='basins') in a schedule (preset='thorough' has one)",
    "alma_long": "a Step(Alma(steps=...), samples='basins') in a schedule (preset='thorough' has one in l1)",
    "alma_gate": "Step(Alma(...), samples='disagree' or 'found') in a schedule",
    "extra_rounds": "a Step(Rounds(rounds=...), samples='disagree', start='best') in a schedule",
    "runner_up": "a Step(Rounds(...), start='runner-up') in a schedule (preset='thorough' has one in linf and l1)",
    "agree_rtol": "Step(rtol=...) in a schedule",
    "refine": "the refine=... field of Projection / Ball / Alma in a schedule",
    "seed": "nothing: the engine draws no random numbers (remove the argument)",
}
_RUNTIME = {"batch_size": "batch_size", "max_rows": "rows_per_call", "channels_last": "channels_last", "progress": "progress"}


@dataclass(frozen=True)
class RuntimeOptions:
    """How the engine runs, not what it computes (results agree to float rounding whatever these are).

    ``batch_size``: samples per batch (None: per-batch buffers near 256 MiB). ``rows_per_call``: rows per
    model call within a batch (None: on CPU as many as keep one forward's activations within 24 MiB, between
    32 and 1024; 1024 on other devices). ``min_rows``: every model call is padded to at least this many rows
    (copies of its last row, outputs dropped) so a row's logits do not depend on how many rows share its call.
    ``channels_last``: the search queries a channels-last copy of a model with 2-d convolutions (None: on CPU
    when the copy's logits agree with the model's within ``_LAYOUT_RTOL`` on fixed probe inputs; True:
    wherever that check passes; False: never); the clean decision and the final re-check use the model
    itself. ``progress``: a progress bar over batches.
    """

    batch_size: int | None = None
    rows_per_call: int | None = None
    min_rows: int = 8
    channels_last: bool | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "rows_per_call"):
            v = getattr(self, name)
            if v is not None and not v >= 1:
                raise ValueError(f"RuntimeOptions.{name} must be >= 1, got {v}")
        if not self.min_rows >= 1:
            raise ValueError(f"RuntimeOptions.min_rows must be >= 1, got {self.min_rows}")


@dataclass
class InputMarginResult:
    """Per-sample input-margin upper bounds (see :func:`input_margin`).

    ``upper``: (N,) float64 norm of the best verified adversarial, ``inf`` where the attack failed and 0
    for samples already misclassified w.r.t. given labels. ``target``: (N,) class the adversarial is
    classified as (-1 when failed). ``passes``: (N,) forward + backward passes the attacks spent per
    sample (the shape probe and the final re-check forward pass are not counted).
    ``status``: :func:`marginkit.results.status.status_of` of (lower, upper): "upper-only" (a verified flip),
    "failed" (none), "bracketed" (affine shortcut: exact lower bound and a verified point just past it),
    "exact" (affine shortcut: no point of the box flips the sample), or "misclassified". ``seconds``: (N,) wall time per sample (its
    batch's time divided evenly). ``stage``: the label of the schedule step that produced each best point
    (e.g. ``"alma[steps=300]"``, ``"affine-exact"``; ``"clean"`` for misclassified samples). ``lower``: (N,)
    float64 certified lower bound, the exact margin where the affine shortcut ran (0 for misclassified
    samples), NaN where nothing certifies one; None when no step can certify. ``overhead_passes``: forward
    rows of the call not charged to any sample (recovering an affine model's map). ``settings``: the preset
    name, the schedule (from the stage dataclasses), budgets, runtime options and versions.
    """

    upper: torch.Tensor
    target: torch.Tensor
    passes: torch.Tensor
    status: list[str]
    seconds: torch.Tensor
    norm: Norm
    labels: torch.Tensor
    stage: list[str]
    forwards: torch.Tensor
    backwards: torch.Tensor
    total_seconds: float
    stopped: str | None = None
    adversarial: torch.Tensor | None = None
    lower: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    overhead_passes: int = 0

    @property
    def success_rate(self) -> float:
        """Fraction of samples with a verified flip (or already misclassified)."""
        return float(torch.isfinite(self.upper).double().mean()) if self.status else float("nan")

    @property
    def method(self) -> str:
        """Name of the schedule, as written in the results table's ``method`` column."""
        return f"marginkit-{self.settings.get('preset', 'default')}"

    def extra_columns(self) -> dict[str, np.ndarray]:
        """Engine-specific columns of the results table: per-sample method (with stage), class reached, passes."""
        return {
            "method": np.array([f"{self.method}:{st}" if st else self.method for st in self.stage], dtype=object),
            "adversarial_class": self.target.detach().cpu().numpy().astype(np.int64),
            "passes": self.passes.detach().cpu().numpy().astype(np.int64),
        }

    def columns(self) -> dict[str, np.ndarray]:
        """All input-margin columns of the per-sample results table (:data:`marginkit.results.COLUMNS`)."""
        return {
            "input_margin_upper": self.upper.detach().cpu().numpy().astype(np.float64),
            **({} if self.lower is None else {"input_margin_lower": self.lower.detach().cpu().numpy().astype(np.float64)}),
            "norm": np.array([str(self.norm)] * len(self.status), dtype=object),
            "status": np.array(self.status, dtype=object),
            "seconds": self.seconds.detach().cpu().numpy().astype(np.float64),
            **self.extra_columns(),
        }


def _default_batch(n_features: int, rows_per_sample: int) -> int:
    # ~16 live (rows, D) float32 buffers per row in the projection steps; stay near 256 MiB of them.
    per_sample = max(1, rows_per_sample) * max(1, n_features) * 4 * 16
    return int(max(1, min(512, (256 * 2**20) // per_sample)))


def _resolve(norm: Norm, preset: str | None, schedule: Schedule | None, runtime: RuntimeOptions,
             legacy: dict[str, Any]) -> tuple[str, Schedule, RuntimeOptions]:
    """The schedule and runtime options of a call, with the first version's keyword arguments mapped onto
    them or rejected with the name of their replacement."""
    method = legacy.pop("method", "auto")
    exact_affine = legacy.pop("exact_affine", True)
    moved = {k: legacy.pop(k) for k in list(legacy) if k in _RUNTIME}
    if moved:
        warnings.warn(f"{', '.join(moved)} moved to runtime=RuntimeOptions({', '.join(_RUNTIME[k] + '=...' for k in moved)})",
                      DeprecationWarning, stacklevel=3)
        runtime = dataclasses.replace(runtime, **{_RUNTIME[k]: v for k, v in moved.items()})
    for k in legacy:
        if k in _REPLACED:
            raise TypeError(f"input_margin() no longer takes {k}=; use {_REPLACED[k]} (see marginkit.attacks.presets)")
        raise TypeError(f"input_margin() got an unexpected keyword argument {k!r}")
    if method not in ("auto", *SINGLE):
        raise ValueError(f"unknown method {method!r}; use preset= ({', '.join(PRESETS)}) or schedule=")
    if schedule is not None:
        if method != "auto" or preset is not None:
            raise ValueError("pass either schedule= or preset= / method=, not both")
        name = "custom"
        sched = tuple(schedule)
        if not sched or not all(isinstance(s, Step) for s in sched):
            raise TypeError("schedule must be a non-empty tuple of marginkit.attacks.schedule.Step")
    elif method != "auto":
        name, sched = method, SINGLE[method][norm]
    else:
        name = "default" if preset is None else preset
        sched = preset_schedule(name, norm)
    if not exact_affine:
        sched = tuple(s for s in sched if not isinstance(s.stage, AffineExact))
    if norm is Norm.LINF and any(isinstance(s.stage, Alma) for s in sched):
        raise ValueError("the Alma stage supports l2 and l1, not linf")
    return name, sched, runtime


def input_margin(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    norm: Norm | str = "l2",
    *,
    preset: str | None = None,
    schedule: Schedule | None = None,
    budget: int | None = None,
    max_seconds: float | None = None,
    target: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    return_adv: bool = False,
    runtime: RuntimeOptions = RuntimeOptions(),
    **legacy: Any,
) -> InputMarginResult:
    """Upper bounds on the minimal l_p perturbation d_in(x) that changes the decision, per sample.

    ``labels`` None: the margin of the model's own decision (reference = prediction); given: the margin
    w.r.t. the true label (samples already misclassified get 0 and status ``"misclassified"``).
    ``target`` (N,) asks for the smallest perturbation classified as that class instead (targeted margin;
    Alma and AffineExact steps are skipped). ``preset``: ``"fast"``, ``"default"`` (None) or ``"thorough"``
    (:mod:`marginkit.attacks.presets`); ``schedule``: a tuple of :class:`~marginkit.attacks.schedule.Step`
    instead. ``budget``: forward + backward passes allowed per sample (recovering an affine model's map is
    a per-call cost, reported as ``overhead_passes``); ``max_seconds``: wall-clock limit for the whole
    call. Either limit returns the best points found so far (``stopped`` says which limit hit). ``bounds``:
    the input box (widened, with a warning, to contain inputs outside it). ``return_adv``: keep the
    adversarial points (NaN rows where the attack failed). ``runtime``: :class:`RuntimeOptions`.
    Deterministic: no random numbers are drawn.
    Keyword arguments of the first engine version are mapped onto these (``method="fab"``/``"ball"``,
    ``exact_affine=False``, ``batch_size``, ``max_rows``, ``channels_last``, ``progress``) or rejected with
    the name of their replacement.
    """
    t_start = time.perf_counter()
    norm = as_norm(norm)
    preset_name, sched, runtime = _resolve(norm, preset, schedule, runtime, dict(legacy))
    if budget is not None and budget < 2:
        raise ValueError(f"budget must allow at least one forward and one backward pass per sample, got {budget}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_inputs(inputs)
    lo_b, hi_b = float(bounds[0]), float(bounds[1])
    if not lo_b < hi_b:
        raise ValueError(f"bounds must satisfy lower < upper, got {bounds}")
    check_model_mode(model)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), inputs.dtype)
    x_all = inputs.detach().to(device, dtype)
    n = x_all.shape[0]
    shape = tuple(x_all.shape[1:])
    flat = x_all.reshape(n, -1)
    outside = (flat < lo_b) | (flat > hi_b)
    if outside.any():
        warnings.warn(f"{int(outside.any(1).sum())} input(s) lie outside the bounds [{lo_b}, {hi_b}] "
                      f"(values in [{float(flat.min()):.4g}, {float(flat.max()):.4g}]); the box was widened to contain them. "
                      "Rescale the inputs or pass bounds=... if this is not intended.", MarginkitWarning, stacklevel=2)
    with torch.no_grad():
        try:
            probe, act_floats = _probe(model, x_all[:1])
        except Exception as exc:  # the model decides what shapes it accepts; say which shape it got
            raise ValueError(f"the model could not process inputs of shape {tuple(x_all.shape)}: {exc}") from exc
    max_rows = runtime.rows_per_call or _auto_rows(act_floats, device)
    check_logits(probe, 1)
    num_classes = probe.shape[1]
    fast = None
    if runtime.channels_last is None or runtime.channels_last:
        fast = _channels_last_copy(model, shape, lo_b, hi_b, device, dtype, force=bool(runtime.channels_last))
    if runtime.channels_last and fast is None:
        warnings.warn("channels_last=True but the model has no 2-d convolutions on 4-d inputs, or its channels-last copy "
                      "failed or disagreed with it; the search uses the model as it is", MarginkitWarning, stacklevel=2)
    if labels is not None:
        labels = check_labels(labels, n, num_classes).to(device)
    if target is not None:
        target = check_labels(target, n, num_classes, name="target").to(device)

    deadline = None if max_seconds is None else t_start + float(max_seconds)
    chunk = runtime.batch_size or _default_batch(flat.shape[1], num_classes - 1)
    from ..results.provenance import library_versions

    settings: dict[str, Any] = {
        "preset": preset_name, "schedule": describe(sched), "norm": str(norm), "bounds": [lo_b, hi_b], "budget": budget,
        "max_seconds": max_seconds, "targeted": target is not None,
        "reference": "prediction" if labels is None else "labels",
        "runtime": {**dataclasses.asdict(runtime), "rows_per_call": max_rows, "channels_last": fast is not None},
        "versions": library_versions(),
    }
    affine_cache: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    overhead = [0]

    def affine_map() -> tuple[torch.Tensor, torch.Tensor] | None:
        if not affine_cache:  # recovered once per call, when an AffineExact step first asks
            from ..margins.affine import recovery_rows
            from ..margins.affine import affine_map_or_none
            try:
                amap = affine_map_or_none(model, shape)
            except Exception:  # noqa: BLE001 - an optional shortcut: a model the probe cannot copy or run in float64 gets the search
                amap = None
            affine_cache.append(amap)
            overhead[0] = recovery_rows(flat.shape[1])
        return affine_cache[0]

    upper = torch.full((n,), float("inf"), dtype=torch.float64)
    lower = torch.full((n,), float("nan"), dtype=torch.float64)
    tgt_out = torch.full((n,), -1, dtype=torch.long)
    fwd = torch.zeros(n, dtype=torch.long)
    bwd = torch.zeros(n, dtype=torch.long)
    secs = torch.zeros(n, dtype=torch.float64)
    refs = torch.zeros(n, dtype=torch.long)
    status: list[str] = [FAILED] * n
    meth: list[str] = [""] * n
    labels_of = [s.label() for s in sched]
    adv = torch.full(flat.shape, float("nan"), dtype=flat.dtype) if return_adv else None  # unattacked rows stay NaN
    stopped = None
    warned_prob = False
    zero_grads = nonfinite = 0

    starts: Any = range(0, n, chunk)
    if runtime.progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"input margins ({norm})", unit="batch")
    for s in starts:
        t0 = time.perf_counter()
        sl = slice(s, min(s + chunk, n))
        x0 = flat[sl]
        m = x0.shape[0]
        oracle = Oracle(model, shape, m, device, budget, deadline, max_rows, fast=fast, min_rows=runtime.min_rows)
        box_lo = torch.minimum(torch.full_like(x0, lo_b), x0)
        box_hi = torch.maximum(torch.full_like(x0, hi_b), x0)
        everyone = torch.arange(m, device=device)
        clean = oracle.logits(x0, everyone, exact=True)  # the decision of the model itself
        check_logits(clean, m)
        if not warned_prob and looks_like_probabilities(clean):
            warned_prob = True
            warnings.warn("the model outputs look like probabilities (non-negative rows summing to 1); input margins "
                          "need logits: remove the final softmax (its saturation hides gradients)", MarginkitWarning, stacklevel=2)
        pred = clean.argmax(1)
        ref = pred if labels is None else labels[sl]
        tg = None if target is None else target[sl]
        best = Best(x0, ref, norm, tg)
        mis = pred != ref
        if tg is not None:
            mis = mis | (tg == ref)
        ctx = Context(oracle, best, clean, box_lo, box_hi, norm, num_classes, affine_map)
        todo = everyone[~mis]
        if todo.numel():
            run_schedule(sched, ctx, todo)
        # Re-check every reported point with one plain forward pass of the model itself.
        found = best.found.clone()
        if found.any():
            idx = found.nonzero().squeeze(1)
            z = oracle.recheck(best.x[idx])
            ok = is_flipped(z, ref[idx], None if tg is None else tg[idx])
            bad = idx[~ok]
            best.value[bad] = float("inf")
            best.cls[bad] = -1
            found[bad] = False
            best.cls[idx[ok]] = z[ok].argmax(1)
        zero_grads += oracle.zero_grad_rows
        nonfinite += oracle.nonfinite_rows
        val = best.value.cpu()
        cls = best.cls.cpu()
        mis_c = mis.cpu()
        val[mis_c] = 0.0
        cls[mis_c] = pred[mis].cpu()
        low = ctx.lower.cpu()
        low[mis_c] = 0.0
        lower[sl] = low
        upper[sl] = val
        tgt_out[sl] = cls
        fwd[sl] = oracle.forwards.cpu()
        bwd[sl] = oracle.backwards.cpu()
        refs[sl] = ref.cpu()
        codes = best.code.cpu().tolist()
        mis_l = mis_c.tolist()
        fnd = found.cpu().tolist()
        settled = ctx.settled.cpu().tolist()
        low_l, up_l = low.tolist(), val.tolist()
        for i in range(m):  # bookkeeping strings only, not a hot path
            status[s + i] = MISCLASSIFIED if mis_l[i] else status_of(low_l[i], up_l[i])
            meth[s + i] = "clean" if mis_l[i] else (labels_of[codes[i]] if fnd[i] else ("affine-exact" if settled[i] else ""))
        if adv is not None:
            # failed samples get NaN rows, never the clean input; misclassified ones are their own adversarial
            keep = torch.where(mis[:, None], x0, torch.full_like(x0, float("nan")))
            adv[sl] = torch.where(found[:, None], best.x, keep).cpu()
        secs[sl] = (time.perf_counter() - t0) / m
        if oracle.out_of_time():
            stopped = "max_seconds"
            if sl.stop < n:
                # the remaining samples were never attacked: they stay failed with zero work
                break
    if budget is not None and stopped is None and bool(((fwd + bwd) >= budget - 1).any()):
        stopped = "budget"
    if zero_grads or nonfinite:
        _o = Oracle(model, shape, 1, device, None, None, 1)
        _o.zero_grad_rows, _o.nonfinite_rows = zero_grads, nonfinite
        _o.warn_if_degenerate()
    settings["affine_shortcut"] = bool(affine_cache and affine_cache[0] is not None)
    has_lower = bool(torch.isfinite(lower).any()) or settings["affine_shortcut"]
    return InputMarginResult(upper=upper, target=tgt_out, passes=fwd + bwd, status=status, seconds=secs, norm=norm,
                             labels=refs, stage=meth, forwards=fwd, backwards=bwd,
                             total_seconds=time.perf_counter() - t_start, stopped=stopped,
                             adversarial=None if adv is None else adv.reshape(n, *shape),
                             lower=lower if has_lower else None, settings=settings, overhead_passes=overhead[0])


def _probe(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The model's output on one input and the number of floats its leaf modules output for it (0: unknown)."""
    sizes: list[int] = []
    hooks = []
    known = True
    try:
        for m in model.modules():
            if not any(True for _ in m.children()):
                hooks.append(m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if isinstance(out, torch.Tensor) else 0)))
    except Exception:  # noqa: BLE001 - e.g. TorchScript modules take no hooks
        known = False
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, int(sum(sizes)) if known else 0


def _channels_last_copy(model: nn.Module, shape: tuple[int, ...], lo: float, hi: float, device: torch.device,
                        dtype: torch.dtype, force: bool = False) -> nn.Module | None:
    """A copy of ``model`` in the channels-last layout for the search, or None (see :class:`RuntimeOptions`).

    Only for 4-d inputs and models with ``nn.Conv2d`` layers, on CPU unless ``force``. None if the copy
    cannot be made or run (e.g. a ``view`` that needs contiguous activations) or its logits on fixed probe
    inputs (the box's corners and centre, the same for every call) differ from the model's by more than
    ``_LAYOUT_RTOL`` of the logit scale."""
    if len(shape) != 3 or (device.type != "cpu" and not force) or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    probe = torch.tensor([lo, hi, 0.5 * (lo + hi)], dtype=dtype, device=device)[:, None].expand(3, int(np.prod(shape))).reshape(3, *shape)
    try:
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        with torch.no_grad():
            out = model(probe)
            z = fast(probe.contiguous(memory_format=torch.channels_last))
    except Exception:  # noqa: BLE001 - an optional speed-up: any model the copy does not suit runs as it is
        return None
    if z.shape != out.shape or not bool(((z - out).abs().amax() <= _LAYOUT_RTOL * out.abs().amax().clamp_min(1.0))):
        return None
    return fast


def _auto_rows(act_floats: int, device: torch.device) -> int:
    """Rows per model call: on CPU, enough to keep one forward's activations within ``_CPU_ACTIVATION_BYTES``
    (between 32 and 1024 rows); elsewhere 1024."""
    if device.type != "cpu" or act_floats <= 0:
        return 1024
    return int(min(1024, max(32, _CPU_ACTIVATION_BYTES // (4 * act_floats))))


