"""The input-margin engine: per-sample upper bounds on d_in(x) from minimal-norm attacks.

``input_margin`` returns, for every sample, the norm of the best verified adversarial point ever queried
(an upper bound on the margin d_in of the margin-consistency paper, eq. 1), the class it flips to, the
work spent and a status. The default ``method="auto"`` schedule:

0. affine models (:func:`marginkit.margins.is_affine`): the exact box-constrained margin and a verified
   point just past it (:mod:`.affine`); nothing below runs;
1. linearise the boundary to every other class at x_0 and keep the ``topk`` nearest classes (box-exact
   linearised distance; DeepFool / FAB first step);
2. targeted boundary projection (:mod:`.fab`) on each (sample, class) row (rows whose class's linearised
   boundary is more than ``_FAB_PRUNE`` times farther than their sample's best point stop);
3. boundary refinement (:mod:`.refine`): line search to the boundary along the segment to x_0, an exact
   projection of x_0 onto the linearised boundary there, and a second line search;
4. the adaptive-ball method (:mod:`.ball`), run independently from x_0 (started from the projection
   result it would stay in that basin; on the demo CNN the independent run is 1-2% tighter), then refined;
5. ALMA (Rony et al. 2021, :mod:`.alm`) from x_0, in l2 only on samples where the two methods disagree
   (their norms differ by more than ``agree_rtol``, or one failed), in l1 on every sample (``_ALMA_GATED``):
   in l2 one run of 300 steps, in l1 two of 150 steps with different step sizes walking side by side
   in one batch, each refined. Where that
   round ended more than ``agree_rtol`` away from both methods' points (the sample has several basins
   and where a walk ends is luck), further runs with other step sizes (``alma_more``: three in l2,
   fourteen in l1), side by side, and in l1 one long run (``alma_long``, 1000 steps);
   then (l1, linf; in l2 only with ``extra_rounds`` > 0) rounds of
   targeted projection from the best point towards the class it reaches, ball steps from it
   and refinement, while a round still improves by more than ``agree_rtol`` (``extra_rounds``, default 2;
   0 in l2 with ALMA, where two rounds left the demo-CNN results identical for +58 passes per sample:
   ``bench/attacks_probe.py --models cnn --set extra_rounds=2``; in l1 they bring the demo CNN's p95
   ratio to the best peer from 1.086 to 1.066 for +94 passes per sample); in l1 the same rounds then run
   once more from the runner-up end point, the smallest of the methods' own end points in another basin
   (``runner_up``, ``_RUNNER_UP``).

The result is the per-sample minimum over everything queried. A sample that no method flips gets an
upper bound of ``inf`` and status ``"failed"`` (never 0, never the clean input). Every reported point is
re-checked at the end with a plain forward pass (with the margin of safety of :mod:`._oracle`).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import MarginkitWarning, check_inputs, check_labels, check_logits, check_model_mode, looks_like_probabilities, model_device
from ..norms import Norm, as_norm
from ..results.status import FAILED, MISCLASSIFIED, UPPER_ONLY
from ._oracle import Best, Oracle, is_flipped
from .affine import LADDER, affine_cost, affine_rows
from .alm import alma_rows, initial_step
from .ball import ball_rows
from .fab import fab_rows, first_step_targets
from .refine import line_search, project_from_origin

__all__ = ["InputMarginResult", "input_margin", "METHODS"]

METHODS = ("auto", "fab", "ball")
_CODES = {0: "fab", 1: "ball", 2: "line-search", 3: "projection", 4: "fab", 6: "lagrangian", 7: "affine-exact"}
# FAB rows whose class's linearised boundary (seen from x_0) is this much farther than their sample's best
# point stop (on the demo MLPs this cuts 10-15% of the passes and changes no result).
_FAB_PRUNE = 1.1
# Default ALMA runs of step 5 per norm: initial step sizes (``alma_lrs``; None: the paper's schedule stretched
# to ``alm_steps``, :func:`.alm.initial_step`) and steps per run (``alm_steps``); several runs walk side by
# side in one batch. Where a run ends on a sample with several basins depends on its step size and its
# length, and no single run is best on every sample, so on the tail each run is one more draw. In l2 the
# further runs (``alma_more``, only where the first round left both methods' basins: 98% of the demo CNN's
# points, 11% of the MLP's) take the CNN's p95 ratio to the best peer from 1.028 to 1.004 for 3.1x the passes;
# fewer, longer runs do less for the same work (two 500-step runs: 1.017). In l1 the step size hardly matters
# but the number of draws does: on 100 other test points of the demo CNN (a selection set, not the
# benchmark's), the p95 ratio of the per-sample best of k 150-step runs to the best long peer run falls from
# 1.176 (k=1) to 1.070 (4), 1.017 (8), 1.0008 (12) (median over subsets of the runs), while k 300-step runs give
# 1.048 (4) and 1.002 (8): twice the draws of half the length win at equal work; hence 2 + 14 runs of 150 steps
# (bench/alma_runs.py --offset 100; docs/input-margins.md). Draws do not help where the runs end in the right
# class but short of its best point: on three tail samples of the demo CNN (the benchmark's points) one
# 1000-step run reached 12.82 / 6.25 / 6.61 where the sixteen 150-step runs stopped at 13.50 / 6.62 / 6.90
# (the best peer, adv-lib's ALMA of 1000-2880 steps: 12.90 / 6.44 / 6.77). Hence in l1 one more run of
# 1000 steps (``alma_long``) where the further runs go: the CNN's p95 ratio to the best peer 1.0195 -> 1.0092
# on the benchmark's points (against the peers of the full run of 629bdc0), 1.0002 on the selection set before and
# after, +35% passes on the CNN, +17% on the MLP (bench/attacks_probe.py --models cnn --norm l1 [--offset 100]
# [--set alma_long=0]).
_ALMA_STEP_SIZES = {Norm.L2: (None,), Norm.L1: (None, 0.1)}
_ALMA_STEPS = {Norm.L2: 300, Norm.L1: 150}
_ALMA_MORE = {Norm.L2: (0.1, 0.2, 1.0), Norm.L1: (0.03, 0.05, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0)}
_ALMA_LONG = {Norm.L1: 1000}
# Steps of the adaptive-ball run per norm when ALMA follows (``ball_steps``): in l1 the FMN-style walk reaches
# basins the ALMA runs miss (demo CNN, l1, 2 + 10 runs, first round gated: p95 1.034 -> 1.017 on the selection
# set with 50 -> 300 steps; docs/input-margins.md); in l2 50 and 100 steps gave the same final results.
_BALL_STEPS_WITH_ALMA = {Norm.L2: 50, Norm.L1: 300}
# Whether the first ALMA round goes only to the samples where projection and ball disagree. In l1 their
# agreement is weak evidence: on the demo CNN both ended at the same point 8-17% above a peer's on 2 of 100
# selection points (and on the PGD MLP 2.5% above on 1 of the benchmark's 100), and the first round on every
# sample takes the selection set's p95 ratio from 1.0067 to 1.0003 for 2% more passes on the CNN; on the
# benchmark's points the MLPs' l1 p95 stays at 1.0000 / 1.0018 for 34% / 28% more passes
# (bench/attacks_probe.py --models cnn --norm l1 [--offset 100] [--set channels_last=0] [--set alma_gate=1],
# measured before the 1000-step run existed: add --set alma_long=0).
_ALMA_GATED = {Norm.L2: True, Norm.L1: False}
# Whether the extra rounds also run from the runner-up end point (another basin) after the best one's. In
# l1 a better ALMA end point in another basin can end the rounds worse than the runner-up would: on the
# demo CNN 7 of the benchmark's 100 points end 1-4% smaller with it, none larger, median norm 4.728 ->
# 4.683, +1.2% passes; in linf it changed no point of the three demo networks for 4-12% more passes
# (bench/attacks_probe.py --models cnn,mlp,mlp-at --norm l1|linf --set runner_up=0|1).
_RUNNER_UP = {Norm.L1: True}
# Activations of one forward per model call on CPU: on the demo CNN (173 KB of activations per row) a
# forward + backward costs about 0.23 ms per row up to 160 rows and 0.27-0.33 ms from 192 rows on (cache;
# where the step falls varies between runs: bench/rows_per_call.py), and the engine's batches reach
# 300-400 rows (ALMA runs and projection targets side by side). 24 MiB: 142 rows on the demo CNN.
_CPU_ACTIVATION_BYTES = 24 * 2**20
# Largest difference between the channels-last copy's logits and the model's on the probe input, relative
# to the logit scale: a quarter of the flip test's margin of safety (the demo CNN: 3.4e-7 on 500 random
# inputs, bench/rows_per_call.py --layouts contiguous,channels_last).
_LAYOUT_RTOL = 5e-7
# Recovering (A, c) costs D + 1 float64 forward passes (:func:`marginkit.margins.affine_parameters`); above
# this many features the shortcut is skipped and the iterative schedule runs.
_AFFINE_MAX_FEATURES = 8192


@dataclass
class InputMarginResult:
    """Per-sample input-margin upper bounds (see :func:`input_margin`).

    ``upper``: (N,) float64 norm of the best verified adversarial, ``inf`` where the attack failed and 0
    for samples already misclassified w.r.t. given labels. ``target``: (N,) class the adversarial is
    classified as (-1 when failed). ``passes``: (N,) forward + backward passes the attacks spent per
    sample (the shape probe and the final re-check forward pass are not counted).
    ``status``: "upper-only" | "failed" | "misclassified" (:mod:`marginkit.results.status`). ``seconds``: (N,) wall time per sample (its
    batch's time divided evenly). ``stage``: the step of the schedule that produced each best point
    (``"fab"``, ``"ball"``, ``"line-search"``, ``"projection"``, ``"lagrangian"``; ``"affine-exact"`` for
    the exact shortcut on affine models; ``"clean"`` for misclassified samples). ``lower``: (N,) float64
    certified lower bound, the exact margin where the affine shortcut ran (0 for misclassified samples),
    NaN where nothing certifies one.
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

    @property
    def success_rate(self) -> float:
        return float(np.mean([s != FAILED for s in self.status])) if self.status else float("nan")

    @property
    def method(self) -> str:
        """Name of the schedule, as written in the results table's ``method`` column."""
        return f"marginkit-{self.settings.get('method', 'auto')}"

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


def input_margin(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    norm: Norm | str = "l2",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    method: str = "auto",
    budget: int | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    target: torch.Tensor | None = None,
    topk: int = 3,
    fab_steps: int = 40,
    ball_steps: int | None = None,
    alm_steps: int | None = None,
    alma_lrs: tuple[float | None, ...] | None = None,
    alma_more: tuple[float | None, ...] | None = None,
    alma_long: int | None = None,
    alma_gate: bool | None = None,
    extra_rounds: int | None = None,
    runner_up: bool | None = None,
    agree_rtol: float = 1e-3,
    refine: bool = True,
    exact_affine: bool = True,
    return_adv: bool = False,
    batch_size: int | None = None,
    max_rows: int | None = None,
    channels_last: bool | None = None,
    progress: bool = False,
) -> InputMarginResult:
    """Upper bounds on the minimal l_p perturbation d_in(x) that changes the decision, per sample.

    ``labels`` None: the margin of the model's own decision (reference = prediction); given: the margin
    w.r.t. the true label (samples already misclassified get 0 and status ``"misclassified"``).
    ``target`` (N,) asks for the smallest perturbation classified as that class instead (targeted margin).
    ``budget``: forward + backward passes allowed per sample; ``max_seconds``: wall-clock limit for the
    whole call. Either limit returns the best points found so far (``stopped`` says which limit hit).
    ``ball_steps``: steps of the independent adaptive-ball run, default 200 in linf (the FMN-style walk
    needs them there: on the demo CNN they bring the p95 ratio to the best peer from 1.011 to 1.007), with
    ``method="auto"`` (ALMA follows) 50 in l2 (on the demo CNN 50 and 100 give the same final results) and
    300 in l1 (``_BALL_STEPS_WITH_ALMA``), and 100 otherwise. ``alm_steps``: steps of each ALMA run of step
    5 (l2, l1; 0 turns them off), default 300 in l2 and 150 in l1; ``alma_lrs``: the initial step size of
    each ALMA run (None in the tuple: the paper's schedule stretched to ``alm_steps``), default ``(None,)``
    in l2 and ``(None, 0.1)`` in l1 (see ``_ALMA_STEP_SIZES``);
    ``alma_more``: step sizes of further runs on the samples where the first ones ended more than
    ``agree_rtol`` away from both the projection's and the ball's points, default ``(0.1, 0.2, 1.0)`` in
    l2 and fourteen from 0.03 to 20 in l1 (``_ALMA_MORE``); ``alma_long``: steps of one more run (the
    paper's schedule) on those samples, default 1000 in l1 and 0 (none) in l2 (``_ALMA_LONG``). ``alma_gate``: whether the first ALMA round goes
    only to the samples where projection and ball disagree (default: yes in l2, no in l1; ``_ALMA_GATED``).
    The runs of each round walk side by side in one batch. ``alma_more=()``
    is the cheaper schedule of earlier versions (demo CNN, l2: p95 ratio to the best peer 1.028 instead
    of 1.004, a third of the passes).
    ``topk``: runner-up classes attacked by boundary projection; ``method``: ``"auto"`` (see the module
    docstring), ``"fab"`` (targeted projection + refinement) or ``"ball"`` (adaptive ball + refinement).
    ``exact_affine``: with ``method="auto"`` and no ``target``, an affine model (:func:`marginkit.margins.is_affine`)
    gets its exact box-constrained margin (``lower``) and a verified point just past it (stage
    ``"affine-exact"``) instead of the iterative schedule; the n + 12 forward passes that recover (A, c) are
    charged to the samples evenly (see :mod:`marginkit.attacks.affine`).
    ``batch_size``: samples per batch (default: per-batch buffers near 256 MiB); ``max_rows``: rows per
    model call within a batch (default: on CPU as many as keep one forward's activations within 24 MiB,
    at most 1024; 1024 on other devices). Neither changes results beyond float rounding.
    ``channels_last``: the search queries a copy of the model in the channels-last memory layout (None: on
    CPU when the model has 2-d convolutions and the copy's logits on the first input agree with the model's
    within ``_LAYOUT_RTOL``; True: wherever that check passes; False: never). On CPU oneDNN's convolutions are
    faster in that layout (a forward + backward of the demo CNN: about 1.4x, 150-160 instead of 220-230 us
    per row; ``bench/rows_per_call.py --layouts contiguous,channels_last``).
    The clean decision and the final re-check of every reported point use the model itself; the copy holds
    a second set of the model's parameters while the call runs.
    Deterministic: the algorithm draws no random numbers, so ``seed`` is recorded but does not change
    results (kept so that randomised options stay reproducible and results tables record it).
    """
    t_start = time.perf_counter()
    norm = as_norm(norm)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if budget is not None and budget < 2:
        raise ValueError(f"budget must allow at least one forward and one backward pass per sample, got {budget}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
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
    if max_rows is None:
        max_rows = _auto_rows(act_floats, device)
    elif max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    check_logits(probe, 1)
    num_classes = probe.shape[1]
    use_layout = channels_last is None or bool(channels_last)
    fast = _channels_last_copy(model, x_all[:1], probe, device, force=bool(channels_last)) if use_layout else None
    if channels_last and fast is None:
        warnings.warn("channels_last=True but the model has no 2-d convolutions on 4-d inputs, or its channels-last copy "
                      "failed or disagreed with it; the search uses the model as it is", MarginkitWarning, stacklevel=2)
    if labels is not None:
        labels = check_labels(labels, n, num_classes).to(device)
    if target is not None:
        target = check_labels(target, n, num_classes, name="target").to(device)

    if alm_steps is None:
        alm_steps = _ALMA_STEPS.get(norm, 0)
    if alma_long is None:
        alma_long = _ALMA_LONG.get(norm, 0)
    if ball_steps is None:
        # in l2 / l1 ALMA does the heavy lifting; the ball run is a second opinion and a basin of its own
        ball_steps = 200 if norm is Norm.LINF else (_BALL_STEPS_WITH_ALMA[norm] if _uses_alma(method, norm, target, alm_steps) else 100)
    if extra_rounds is None:
        extra_rounds = 0 if norm is Norm.L2 and _uses_alma(method, norm, target, alm_steps) else 2
    alma_lrs = tuple(_ALMA_STEP_SIZES.get(norm, (None,)) if alma_lrs is None else alma_lrs)
    alma_more = tuple(_ALMA_MORE.get(norm, ()) if alma_more is None else alma_more)
    alma_gate = _ALMA_GATED.get(norm, True) if alma_gate is None else bool(alma_gate)
    runner_up = _RUNNER_UP.get(norm, False) if runner_up is None else bool(runner_up)
    if not alma_lrs or any(lr is not None and not lr > 0 for lr in alma_lrs):
        raise ValueError(f"alma_lrs must be a non-empty tuple of positive step sizes or None, got {alma_lrs}")
    if any(lr is not None and not lr > 0 for lr in alma_more):
        raise ValueError(f"alma_more must be a tuple of positive step sizes or None, got {alma_more}")
    if alm_steps < 0 or alma_long < 0:
        raise ValueError(f"alm_steps and alma_long must be >= 0, got {alm_steps} and {alma_long}")
    deadline = None if max_seconds is None else t_start + float(max_seconds)
    rows_per = num_classes - 1 if method in ("auto", "fab") else 1
    chunk = batch_size or _default_batch(flat.shape[1], rows_per)
    settings = {"method": method, "norm": str(norm), "bounds": [lo_b, hi_b], "budget": budget, "max_seconds": max_seconds,
                "seed": seed, "topk": topk, "fab_steps": fab_steps, "ball_steps": ball_steps, "alm_steps": alm_steps, "alma_lrs": list(alma_lrs), "alma_more": list(alma_more), "alma_long": alma_long, "alma_gate": alma_gate, "extra_rounds": extra_rounds,
                "runner_up": runner_up, "agree_rtol": agree_rtol, "max_rows": max_rows, "channels_last": fast is not None, "refine": refine, "exact_affine": exact_affine, "fab_prune": _FAB_PRUNE, "targeted": target is not None, "reference": "prediction" if labels is None else "labels"}

    affine_map = None
    affine_charge = 0
    if method == "auto" and exact_affine and target is None and flat.shape[1] <= _AFFINE_MAX_FEATURES:
        from ..margins.affine import affine_map_or_none

        affine_charge = affine_cost(flat.shape[1], n)
        if budget is None or affine_charge + 1 + len(LADDER) <= budget:
            try:
                affine_map = affine_map_or_none(model, shape)
            except Exception:  # noqa: BLE001 - an optional shortcut: a model the probe cannot copy or run in float64 gets the iterative schedule
                affine_map = None
    settings["affine_shortcut"] = affine_map is not None

    upper = torch.full((n,), float("inf"), dtype=torch.float64)
    lower = torch.full((n,), float("nan"), dtype=torch.float64)
    tgt_out = torch.full((n,), -1, dtype=torch.long)
    fwd = torch.zeros(n, dtype=torch.long)
    bwd = torch.zeros(n, dtype=torch.long)
    secs = torch.zeros(n, dtype=torch.float64)
    refs = torch.zeros(n, dtype=torch.long)
    status: list[str] = [FAILED] * n
    meth: list[str] = [""] * n
    adv = torch.full(flat.shape, float("nan"), dtype=flat.dtype) if return_adv else None  # unattacked rows stay NaN
    stopped = None
    warned_prob = False
    zero_grads = nonfinite = 0

    starts = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"input margins ({norm})", unit="batch")
    for s in starts:
        t0 = time.perf_counter()
        sl = slice(s, min(s + chunk, n))
        x0 = flat[sl]
        m = x0.shape[0]
        oracle = Oracle(model, shape, m, device, budget, deadline, max_rows, fast=fast)
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
        todo = everyone[~mis]
        proven = torch.zeros(m, dtype=torch.bool, device=device)
        if affine_map is not None and todo.numel():
            oracle.forwards[todo] += affine_charge
            exact, resolved = affine_rows(oracle, best, todo, *affine_map, box_lo, box_hi, norm)
            lower[s + todo.cpu()] = exact.cpu()
            proven[todo[resolved]] = True
            todo = todo[~resolved]  # a rung that did not verify: the iterative schedule takes over
        if todo.numel():
            _run(method, oracle, best, todo, clean, box_lo, box_hi, norm, num_classes, tg,
                 topk=topk, fab_steps=fab_steps, ball_steps=ball_steps, alm_steps=alm_steps, alma_lrs=alma_lrs, alma_more=alma_more, alma_long=alma_long, alma_gate=alma_gate, extra_rounds=extra_rounds, runner_up=runner_up,
                 agree_rtol=agree_rtol, refine=refine)
        # Re-check every reported point with one plain forward pass.
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
        oracle.zero_grad_rows = oracle.nonfinite_rows = 0
        val = best.value.cpu()
        cls = best.cls.cpu()
        val[mis.cpu()] = 0.0
        if affine_map is not None:
            lower[sl][mis.cpu()] = 0.0
        cls[mis.cpu()] = pred[mis].cpu()
        upper[sl] = val
        tgt_out[sl] = cls
        fwd[sl] = oracle.forwards.cpu()
        bwd[sl] = oracle.backwards.cpu()
        refs[sl] = ref.cpu()
        codes = best.code.cpu().tolist()
        mis_l = mis.cpu().tolist()
        fnd = found.cpu().tolist()
        prv = proven.cpu().tolist()
        for i in range(m):  # bookkeeping strings only, not a hot path
            status[s + i] = MISCLASSIFIED if mis_l[i] else (UPPER_ONLY if fnd[i] else FAILED)
            meth[s + i] = "clean" if mis_l[i] else (_CODES.get(codes[i], "") if fnd[i] else ("affine-exact" if prv[i] else ""))
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
    adversarial = None
    if adv is not None:
        adversarial = adv.reshape(n, *shape)
    return InputMarginResult(upper=upper, target=tgt_out, passes=fwd + bwd, status=status, seconds=secs, norm=norm,
                             labels=refs, stage=meth, forwards=fwd, backwards=bwd,
                             total_seconds=time.perf_counter() - t_start, stopped=stopped, adversarial=adversarial,
                             lower=lower if affine_map is not None else None, settings=settings)


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


def _channels_last_copy(model: nn.Module, x1: torch.Tensor, out: torch.Tensor, device: torch.device,
                        force: bool = False) -> nn.Module | None:
    """A copy of ``model`` in the channels-last layout for the search, or None (see ``input_margin``).

    Only for 4-d inputs and models with ``nn.Conv2d`` layers, on CPU unless ``force``. None if the copy
    cannot be made or run (e.g. a ``view`` that needs contiguous activations) or its logits on ``x1``
    differ from the model's ``out`` by more than ``_LAYOUT_RTOL`` of the logit scale: the flip test's
    margin of safety must absorb the difference, so that the re-check through the model itself accepts
    every point the search accepted."""
    if x1.dim() != 4 or (device.type != "cpu" and not force) or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    try:
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
        with torch.no_grad():
            z = fast(x1.contiguous(memory_format=torch.channels_last))
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


def _uses_alma(method: str, norm: Norm, target, alm_steps: int) -> bool:
    """Whether the auto schedule runs ALMA (step 5): l2 or l1, untargeted, ``alm_steps`` > 0."""
    return method == "auto" and norm in (Norm.L2, Norm.L1) and target is None and alm_steps > 0


def _polish(oracle: Oracle, best: Best, samples: torch.Tensor, clean: torch.Tensor, box_lo, box_hi, norm: Norm) -> None:
    line_search(oracle, best, samples, clean)
    project_from_origin(oracle, best, samples, box_lo, box_hi, norm)
    line_search(oracle, best, samples, clean)


def _alma_round(oracle: Oracle, best: Best, samples: torch.Tensor, lrs: tuple[float | None, ...], steps: int,
                clean: torch.Tensor, box_lo, box_hi, norm: Norm) -> Best:
    """ALMA runs from x_0 on ``samples``, one per step size in ``lrs``, walking side by side as rows of one
    batch (on a small model a step costs about the same for one run or several), each refined on its own
    and absorbed into ``best``; returns the round's best refined point per sample (a tracker of its own)."""
    x0 = best.x0
    runs = len(lrs)
    rows_owner = samples.repeat(runs)
    step0 = torch.tensor([initial_step(lr, steps) for lr in lrs], dtype=torch.float64, device=x0.device)
    per_row = Best(x0[rows_owner], best.ref[rows_owner], norm)
    alma_rows(oracle_view(oracle, rows_owner), per_row, torch.arange(rows_owner.numel(), device=x0.device),
              box_lo[rows_owner], box_hi[rows_owner], steps=steps, norm=norm, lr=step0.repeat_interleave(samples.numel()))
    # each run refined on its own (a further run only adds candidates: refining the better of two end
    # points can land farther than refining the other), all runs' rows in the same model calls
    _polish(oracle_view(oracle, rows_owner), per_row, torch.arange(rows_owner.numel(), device=x0.device),
            clean[rows_owner], box_lo[rows_owner], box_hi[rows_owner], norm)
    # per sample, the run that ended smallest (the first of equals), taken into ``best`` where it is better
    reached, j = per_row.value.view(runs, samples.numel()).min(0)
    rows = j * samples.numel() + torch.arange(samples.numel(), device=x0.device)
    run = best.fresh()
    run.value[samples], run.x[samples], run.cls[samples], run.code[samples] = per_row.value[rows], per_row.x[rows], per_row.cls[rows], per_row.code[rows]
    best.absorb(run)
    return run


def _run(method: str, oracle: Oracle, best: Best, todo: torch.Tensor, clean: torch.Tensor, box_lo, box_hi, norm: Norm,
         num_classes: int, target: torch.Tensor | None, *, topk: int, fab_steps: int, ball_steps: int,
         alm_steps: int, alma_lrs: tuple[float | None, ...], alma_more: tuple[float | None, ...], alma_long: int, alma_gate: bool, extra_rounds: int, runner_up: bool, agree_rtol: float, refine: bool) -> None:
    x0 = best.x0
    untargeted = torch.full_like(todo, -1) if target is None else target[todo]
    fab_best = best.fresh()
    if method in ("auto", "fab"):
        if target is None:
            sub = Best(x0[todo], best.ref[todo], norm)
            owner_l, aim, start = first_step_targets(oracle_view(oracle, todo), sub, box_lo[todo], box_hi[todo], norm, num_classes, topk)
            owner = todo[owner_l]
        else:
            owner, aim, start = todo, target[todo], x0[todo].clone()
        fab_rows(oracle, fab_best, owner, aim, start, box_lo, box_hi, norm, steps=fab_steps, prune=_FAB_PRUNE, code=0)
        if refine:
            _polish(oracle, fab_best, todo, clean, box_lo, box_hi, norm)
    ball_best = best.fresh()
    if method in ("auto", "ball"):
        # An independent run from x_0 (started from the projection result it would stay in that basin),
        # using all its steps: no patience stop.
        ball_rows(oracle, ball_best, todo, untargeted, torch.zeros_like(x0[todo]), box_lo, box_hi, norm,
                  steps=ball_steps, patience=ball_steps, code=1)
        if refine:
            _polish(oracle, ball_best, todo, clean, box_lo, box_hi, norm)
    best.absorb(fab_best)
    best.absorb(ball_best)
    if method != "auto":
        return
    a, b = fab_best.value[todo], ball_best.value[todo]
    disagree = (a - b).abs() > agree_rtol * torch.minimum(a, b)
    disagree = disagree | (torch.isfinite(a) != torch.isfinite(b))
    sel = disagree & best.found[todo]
    redo = todo[sel]
    walk = sel if alma_gate else best.found[todo]
    ends = [fab_best, ball_best]  # each method's own end point, for the runner-up chain below
    if _uses_alma(method, norm, target, alm_steps) and walk.any():
        # A third, independent opinion where the two disagree: the augmented-Lagrangian walk often ends in
        # another basin of a non-linear model (on the demo CNN ALMA's own rules tighten the median vs the
        # best peer from 1.0148 with a plain PHR walk to ~1.002; bench/attacks_probe.py).
        base = torch.minimum(a, b)[walk]
        first = todo[walk]
        ends.append(_alma_round(oracle, best, first, alma_lrs, alm_steps, clean, box_lo, box_hi, norm))
        reached = ends[-1].value[first]
        # Where ALMA ended in neither method's basin (more than agree_rtol away from both, better or
        # worse), the sample has several basins and where a run ends is luck: further runs with other step
        # sizes, each one more draw (demo CNN: 98% of the points, demo MLP: 11%; bench/attacks_probe.py prints the counts).
        more = first[(reached - base).abs() > agree_rtol * torch.minimum(reached, base)]
        if alma_more and more.numel() and not oracle.out_of_time():
            ends.append(_alma_round(oracle, best, more, alma_more, alm_steps, clean, box_lo, box_hi, norm))
        if alma_long and more.numel() and not oracle.out_of_time():
            # draws do not help where the runs end in the right class but short of its best point
            ends.append(_alma_round(oracle, best, more, (None,), alma_long, clean, box_lo, box_hi, norm))
    if extra_rounds and redo.numel():
        alt = _runner_up(best, ends, agree_rtol) if runner_up else None
        _extra_rounds(oracle, best, redo, target, clean, box_lo, box_hi, norm, fab_steps, ball_steps, extra_rounds, agree_rtol)
        if alt is not None:
            # The same rounds from the runner-up end point, after the first chain (which they cannot change):
            # a better end point in another basin can end the rounds worse than this one would.
            second = redo[alt.found[redo]]
            _extra_rounds(oracle, alt, second, target, clean, box_lo, box_hi, norm, fab_steps, ball_steps, extra_rounds, agree_rtol)
            best.absorb(alt)


def _runner_up(best: Best, ends: list[Best], rtol: float) -> Best:
    """Per sample, the smallest end point among ``ends`` (the methods' own results) more than ``rtol``
    above the sample's best (another basin), in a tracker of its own (empty where there is none)."""
    vals = torch.stack([e.value for e in ends])
    vals = torch.where(vals > best.value * (1 + rtol), vals, torch.full_like(vals, float("inf")))
    second, k = vals.min(0)
    alt = best.fresh()
    has = torch.isfinite(second).nonzero().squeeze(1)
    if has.numel():
        pick = k[has]
        alt.value[has] = second[has]
        alt.x[has] = torch.stack([e.x for e in ends])[pick, has]
        alt.cls[has] = torch.stack([e.cls for e in ends])[pick, has]
        alt.code[has] = torch.stack([e.code for e in ends])[pick, has]
    return alt


def _extra_rounds(oracle: Oracle, best: Best, redo: torch.Tensor, target: torch.Tensor | None, clean: torch.Tensor,
                  box_lo, box_hi, norm: Norm, fab_steps: int, ball_steps: int, rounds: int, agree_rtol: float) -> None:
    """Rounds of targeted projection from ``best``'s point towards the class it reaches, ball steps from it
    and refinement, on ``redo``, while a round still improves a sample by more than ``agree_rtol``."""
    x0 = best.x0
    for _ in range(rounds):
        if redo.numel() == 0 or oracle.out_of_time():
            break
        before = best.value[redo].clone()
        aim = best.cls[redo] if target is None else target[redo]
        fab_rows(oracle, best, redo, aim, best.x[redo].clone(), box_lo, box_hi, norm, steps=fab_steps, code=4)
        ball_rows(oracle, best, redo, torch.full_like(redo, -1) if target is None else target[redo],
                  best.x[redo] - x0[redo], box_lo, box_hi, norm, steps=ball_steps, code=1)
        _polish(oracle, best, redo, clean, box_lo, box_hi, norm)
        redo = redo[best.value[redo] < before * (1 - agree_rtol)]


class oracle_view:  # noqa: N801 - a thin adapter, used like a function
    """The oracle seen through a subset of its samples (row owners are local indices into ``samples``)."""

    def __init__(self, oracle: Oracle, samples: torch.Tensor) -> None:
        self.o, self.samples = oracle, samples

    def can_afford(self, owner, cost):
        return self.o.can_afford(self.samples[owner], cost)

    def value_and_grad(self, x, owner, ref, aim, objective=None):
        return self.o.value_and_grad(x, self.samples[owner], ref, aim, objective=objective)

    def logits(self, x, owner):
        return self.o.logits(x, self.samples[owner])

    def out_of_time(self):
        return self.o.out_of_time()
