"""The stages of the input-margin engine: one frozen config dataclass and one function each.

Every stage function has the same shape, ``run(config, ctx, samples, origin) -> Best``: it takes the shared
:class:`Context` (the counted oracle, the best-so-far record, the clean logits, the box), the indices of the
samples it works on and, for stages that start from a point, ``origin`` (a tracker holding each sample's
start point: its best point so far or its runner-up end point; None means from the clean input). It returns
a tracker of its own end points; the schedule (:mod:`.schedule`) absorbs it into the best-so-far record,
so a stage can only lower a sample's upper bound.

Stages:

* :class:`Projection`: targeted boundary projection (FAB, Croce & Hein 2020, Algorithm 1; :mod:`.fab`) to the
  ``topk`` nearest linearised boundaries, or towards the class the start point reaches;
* :class:`Ball`: the adaptive-ball walk (FMN, Pintor et al. 2021, Algorithm 1; :mod:`.ball`);
* :class:`Alma`: the augmented-Lagrangian walk (ALMA, Rony et al. 2021, Algorithm 1; :mod:`.alm`), several
  step sizes side by side;
* :class:`Refine`: line search to the boundary and an exact linearised projection of x_0 (:mod:`.refine`);
* :class:`Rounds`: rounds of projection + ball + refinement from a start point while they improve;
* :class:`AffineExact`: the exact box-constrained margin of an affine model (:mod:`.affine`).

The tuning numbers live in :mod:`.presets`; fields without a default here must be given there.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, Union

import torch

from ..norms import Norm
from ._oracle import Best, Oracle
from .affine import affine_rows
from .alm import alma_rows, initial_step
from .ball import ball_rows
from .fab import fab_rows, first_step_targets
from .refine import line_search, project_from_origin


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt(e) for e in v) + ")"
    if v is None:
        return "paper"
    return f"{v:g}" if isinstance(v, float) else str(v)


class _Label:
    """Readable label of a stage config: ``name[field=value,...]`` over the required fields and those that
    differ from their default."""

    name = ""

    def label(self) -> str:
        parts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self)  # type: ignore[arg-type]
                 if f.default is MISSING or getattr(self, f.name) != f.default]
        return f"{self.name}[{','.join(parts)}]" if parts else self.name


@dataclass(frozen=True)
class Projection(_Label):
    """Targeted boundary projection (FAB). From the clean input: the ``topk`` classes whose linearised
    boundary at x_0 is nearest, one row each; from a point: towards the class that point reaches. Rows whose
    class's linearised boundary is more than ``prune`` times farther than the stage's best point stop."""

    steps: int
    topk: int = 1
    prune: float | None = None
    refine: bool = True
    name = "projection"

    def __post_init__(self) -> None:
        _positive(self, "steps", "topk")


@dataclass(frozen=True)
class Ball(_Label):
    """Adaptive-ball walk (FMN) for ``steps`` steps (``patience`` None: no early stop)."""

    steps: int
    patience: int | None = None
    refine: bool = True
    name = "ball"

    def __post_init__(self) -> None:
        _positive(self, "steps")


@dataclass(frozen=True)
class Alma(_Label):
    """ALMA runs of ``steps`` steps, one per initial step size in ``lrs`` (None: the paper's schedule stretched
    to ``steps``), walking side by side; each run is refined on its own. l2 and l1 only, from the clean input."""

    steps: int
    lrs: tuple[float | None, ...] = (None,)
    refine: bool = True
    name = "alma"

    def __post_init__(self) -> None:
        _positive(self, "steps")
        if not self.lrs or any(lr is not None and not lr > 0 for lr in self.lrs):
            raise ValueError(f"Alma.lrs must be a non-empty tuple of positive step sizes or None, got {self.lrs}")


@dataclass(frozen=True)
class Refine(_Label):
    """Line search along the segment to x_0, an exact projection of x_0 onto the linearised boundary at the
    point, and a second line search (``line_steps`` regula-falsi steps each)."""

    line_steps: int = 20
    name = "refine"


@dataclass(frozen=True)
class Rounds(_Label):
    """Up to ``rounds`` rounds of targeted projection (``projection_steps``) from the point towards the class it
    reaches, ball steps (``ball_steps``) from it and refinement, while a round still improves a sample by more
    than ``rtol``."""

    rounds: int
    projection_steps: int
    ball_steps: int
    rtol: float = 1e-3
    name = "rounds"

    def __post_init__(self) -> None:
        _positive(self, "rounds", "projection_steps", "ball_steps")


@dataclass(frozen=True)
class AffineExact(_Label):
    """Affine models only: the exact box-constrained margin (recorded as the lower bound) and a verified point
    just past it; samples it settles skip the rest of the schedule. Models with more than ``max_features``
    inputs are not probed (recovering (A, c) costs D + 12 forward rows)."""

    max_features: int = 8192
    name = "affine-exact"


Stage = Union[Projection, Ball, Alma, Refine, Rounds, AffineExact]
STAGES: tuple[type, ...] = (Projection, Ball, Alma, Refine, Rounds, AffineExact)


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n) >= 1:
            raise ValueError(f"{type(cfg).__name__}.{n} must be >= 1, got {getattr(cfg, n)}")


class Context:
    """What every stage shares for one batch: the counted oracle, the best-so-far record ``best`` (x_0,
    reference class, optional target), the clean logits, the per-sample box, the norm, the number of classes,
    the samples already settled (affine shortcut), the exact margins found (``lower``) and the affine map."""

    def __init__(self, oracle: Oracle, best: Best, clean: torch.Tensor, box_lo: torch.Tensor, box_hi: torch.Tensor,
                 norm: Norm, num_classes: int, affine_map: Callable[[], tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        self.oracle, self.best, self.clean = oracle, best, clean
        self.box_lo, self.box_hi, self.norm, self.num_classes = box_lo, box_hi, norm, num_classes
        n = best.x0.shape[0]
        self.settled = torch.zeros(n, dtype=torch.bool, device=best.x0.device)
        self.lower = torch.full((n,), float("nan"), dtype=torch.float64, device=best.x0.device)
        self._affine_map = affine_map

    @property
    def target(self) -> torch.Tensor | None:
        return self.best.target

    def affine_map(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._affine_map()


def polish(oracle: Any, best: Best, samples: torch.Tensor, clean: torch.Tensor, box_lo: torch.Tensor,
           box_hi: torch.Tensor, norm: Norm, code: int, line_steps: int = 20) -> None:
    """Line search, projection from x_0, line search (:mod:`.refine`) on ``best``'s points of ``samples``."""
    line_search(oracle, best, samples, clean, steps=line_steps, code=code)
    project_from_origin(oracle, best, samples, box_lo, box_hi, norm, code=code)
    line_search(oracle, best, samples, clean, steps=line_steps, code=code)


def run_projection(cfg: Projection, ctx: Context, samples: torch.Tensor, origin: Best | None, code: int) -> Best:
    own = ctx.best.fresh()
    x0, tg = ctx.best.x0, ctx.target
    if origin is not None:
        owner = samples
        aim = origin.cls[samples] if tg is None else tg[samples]
        start = origin.x[samples].clone()
    elif tg is None:
        sub = Best(x0[samples], ctx.best.ref[samples], ctx.norm)
        owner_l, aim, start = first_step_targets(OracleView(ctx.oracle, samples), sub, ctx.box_lo[samples],
                                                 ctx.box_hi[samples], ctx.norm, ctx.num_classes, cfg.topk)
        owner = samples[owner_l]
    else:
        owner, aim, start = samples, tg[samples], x0[samples].clone()
    fab_rows(ctx.oracle, own, owner, aim, start, ctx.box_lo, ctx.box_hi, ctx.norm, steps=cfg.steps,
             prune=cfg.prune, code=code)
    if cfg.refine:
        polish(ctx.oracle, own, samples, ctx.clean, ctx.box_lo, ctx.box_hi, ctx.norm, code)
    return own


def run_ball(cfg: Ball, ctx: Context, samples: torch.Tensor, origin: Best | None, code: int) -> Best:
    own = ctx.best.fresh()
    x0, tg = ctx.best.x0, ctx.target
    aim = torch.full_like(samples, -1) if tg is None else tg[samples]
    delta = torch.zeros_like(x0[samples]) if origin is None else origin.x[samples] - x0[samples]
    ball_rows(ctx.oracle, own, samples, aim, delta, ctx.box_lo, ctx.box_hi, ctx.norm, steps=cfg.steps,
              patience=cfg.steps if cfg.patience is None else cfg.patience, code=code)
    if cfg.refine:
        polish(ctx.oracle, own, samples, ctx.clean, ctx.box_lo, ctx.box_hi, ctx.norm, code)
    return own


def run_alma(cfg: Alma, ctx: Context, samples: torch.Tensor, origin: Best | None, code: int) -> Best:
    """ALMA runs from x_0, one per step size, as rows of one batch (on a small model a step costs about the
    same for one run or several); each run is refined on its own (refining the better of two end points can
    land farther than refining the other) and the per-sample best run is returned."""
    if origin is not None:
        raise ValueError("the Alma stage starts from the clean input (start='clean')")
    best, oracle = ctx.best, ctx.oracle
    x0, dev = best.x0, best.x0.device
    runs, m = len(cfg.lrs), samples.numel()
    rows_owner = samples.repeat(runs)
    view = OracleView(oracle, rows_owner)
    local = torch.arange(rows_owner.numel(), device=dev)
    step0 = torch.tensor([initial_step(lr, cfg.steps) for lr in cfg.lrs], dtype=torch.float64, device=dev)
    per_row = Best(x0[rows_owner], best.ref[rows_owner], ctx.norm)
    alma_rows(view, per_row, local, ctx.box_lo[rows_owner], ctx.box_hi[rows_owner], steps=cfg.steps, norm=ctx.norm,
              lr=step0.repeat_interleave(m), code=code)
    if cfg.refine:
        polish(view, per_row, local, ctx.clean[rows_owner], ctx.box_lo[rows_owner], ctx.box_hi[rows_owner], ctx.norm, code)
    # per sample, the run that ended smallest (the first of equals)
    _, j = per_row.value.view(runs, m).min(0)
    rows = j * m + torch.arange(m, device=dev)
    own = best.fresh()
    own.value[samples], own.x[samples], own.cls[samples], own.code[samples] = (
        per_row.value[rows], per_row.x[rows], per_row.cls[rows], per_row.code[rows])
    return own


def run_refine(cfg: Refine, ctx: Context, samples: torch.Tensor, origin: Best | None, code: int) -> Best:
    own = _copy(ctx.best if origin is None else origin)
    polish(ctx.oracle, own, samples, ctx.clean, ctx.box_lo, ctx.box_hi, ctx.norm, code, cfg.line_steps)
    return own


def run_rounds(cfg: Rounds, ctx: Context, samples: torch.Tensor, origin: Best | None, code: int) -> Best:
    own = _copy(ctx.best if origin is None else origin)
    x0, tg, oracle = own.x0, ctx.target, ctx.oracle
    redo = samples[own.found[samples]]
    for _ in range(cfg.rounds):
        if redo.numel() == 0 or oracle.out_of_time():
            break
        before = own.value[redo].clone()
        aim = own.cls[redo] if tg is None else tg[redo]
        fab_rows(oracle, own, redo, aim, own.x[redo].clone(), ctx.box_lo, ctx.box_hi, ctx.norm,
                 steps=cfg.projection_steps, code=code)
        ball_rows(oracle, own, redo, torch.full_like(redo, -1) if tg is None else tg[redo], own.x[redo] - x0[redo],
                  ctx.box_lo, ctx.box_hi, ctx.norm, steps=cfg.ball_steps, code=code)
        polish(oracle, own, redo, ctx.clean, ctx.box_lo, ctx.box_hi, ctx.norm, code)
        redo = redo[own.value[redo] < before * (1 - cfg.rtol)]
    return own


def run_affine(cfg: AffineExact, ctx: Context, samples: torch.Tensor, origin: Best | None, code: int) -> Best:
    own = ctx.best.fresh()
    if ctx.target is not None or ctx.best.x0.shape[1] > cfg.max_features:
        return own
    amap = ctx.affine_map()
    if amap is None:
        return own
    exact, resolved = affine_rows(ctx.oracle, own, samples, *amap, ctx.box_lo, ctx.box_hi, ctx.norm, code=code)
    ctx.lower[samples] = exact
    ctx.settled[samples[resolved]] = True
    return own


RUNNERS: dict[type, Callable[..., Best]] = {Projection: run_projection, Ball: run_ball, Alma: run_alma,
                                           Refine: run_refine, Rounds: run_rounds, AffineExact: run_affine}


def _copy(b: Best) -> Best:
    c = b.fresh()
    c.value, c.x, c.cls, c.code = b.value.clone(), b.x.clone(), b.cls.clone(), b.code.clone()
    return c


class OracleView:
    """The oracle seen through a subset of its samples (row owners are local indices into ``samples``)."""

    def __init__(self, oracle: Any, samples: torch.Tensor) -> None:
        self.o, self.samples = oracle, samples

    def can_afford(self, owner: torch.Tensor, cost: int) -> torch.Tensor:
        return self.o.can_afford(self.samples[owner], cost)

    def value_and_grad(self, x, owner, ref, aim, objective=None):
        return self.o.value_and_grad(x, self.samples[owner], ref, aim, objective=objective)

    def logits(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        return self.o.logits(x, self.samples[owner])

    def out_of_time(self) -> bool:
        return bool(self.o.out_of_time())
