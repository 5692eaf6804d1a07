"""A schedule of the input-margin engine is data: a tuple of :class:`Step` run in order.

Each step names a stage config (:mod:`.stages`), which samples it runs on and where it starts:

``samples``
    ``"all"``: every sample not already settled (affine shortcut); ``"found"``: those with a verified point;
    ``"disagree"``: those where the own end points of the earlier stages that ran on the sample differ by
    more than ``rtol`` (relative) or one of them flipped the sample and another did not (where fewer than two
    ran: every sample); ``"basins"``: those where the latest stage ran and ended more than ``rtol`` away
    from every earlier stage's end point there (the sample has several basins and where a walk ends is a draw).
``start``
    ``"clean"``: from x_0; ``"best"``: from the sample's best point so far; ``"runner-up"``: from the smallest
    end point of the earlier stages that lies more than ``rtol`` above the best one (another basin). Samples
    without such a point skip the step.

Every step's candidates go into the shared best-so-far record, which keeps the per-sample minimum, so
adding a step never raises a sample's upper bound. The earlier stages' "own end points" are those of the
search stages (:class:`~.stages.Projection`, :class:`~.stages.Ball`, :class:`~.stages.Alma`,
:class:`~.stages.Rounds`), each kept in a tracker of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ._oracle import Best
from .stages import RUNNERS, STAGES, Alma, Ball, Context, Projection, Refine, Rounds, Stage

__all__ = ["SAMPLES", "STARTS", "Schedule", "Step", "describe", "run_schedule"]

SAMPLES = ("all", "found", "disagree", "basins")
STARTS = ("clean", "best", "runner-up")
_SEARCH = (Projection, Ball, Alma, Rounds)


@dataclass(frozen=True)
class Step:
    """One step of a schedule: a stage config, which samples (:data:`SAMPLES`), which start (:data:`STARTS`)
    and the relative tolerance ``rtol`` under which two end points count as the same basin."""

    stage: Stage
    samples: str = "all"
    start: str = "clean"
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        if not isinstance(self.stage, STAGES):
            raise TypeError(f"Step.stage must be one of {', '.join(t.__name__ for t in STAGES)}, got {type(self.stage).__name__}")
        if self.samples not in SAMPLES:
            raise ValueError(f"Step.samples must be one of {', '.join(SAMPLES)}, got {self.samples!r}")
        if self.start not in STARTS:
            raise ValueError(f"Step.start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if isinstance(self.stage, Alma) and self.start != "clean":
            raise ValueError("an Alma step starts from the clean input (start='clean')")
        if isinstance(self.stage, (Refine, Rounds)) and self.start == "clean":
            raise ValueError(f"a {type(self.stage).__name__} step starts from a point: start='best' or 'runner-up'")
        if not self.rtol >= 0:
            raise ValueError(f"Step.rtol must be >= 0, got {self.rtol}")

    def label(self) -> str:
        return self.stage.label()


Schedule = tuple[Step, ...]


def describe(schedule: Schedule) -> list[dict[str, Any]]:
    """The schedule as plain data (for the results' settings): one dict per step from the dataclasses."""
    return [{"stage": s.stage.name, "label": s.label(), **asdict(s.stage), "samples": s.samples, "start": s.start,
             "rtol": s.rtol} for s in schedule]


def _disagree(ends: list[tuple[Best, torch.Tensor]], idx: torch.Tensor, rtol: float) -> torch.Tensor:
    """Samples ``idx`` on which the earlier search stages that ran there do not agree (every sample on which
    fewer than two ran)."""
    if not ends:
        return torch.ones_like(idx, dtype=torch.bool)
    v = torch.stack([e.value[idx] for e, _ in ends])
    ran = torch.stack([r[idx] for _, r in ends])
    fin = torch.isfinite(v) & ran
    failed = ~torch.isfinite(v) & ran
    lo = torch.where(fin, v, torch.full_like(v, float("inf"))).amin(0)
    hi = torch.where(fin, v, torch.full_like(v, float("-inf"))).amax(0)
    mixed = fin.any(0) & failed.any(0)
    return (ran.sum(0) < 2) | mixed | (fin.any(0) & (hi - lo > rtol * lo))


def _basins(ends: list[tuple[Best, torch.Tensor]], idx: torch.Tensor, rtol: float) -> torch.Tensor:
    """Samples ``idx`` on which the latest search stage ran and ended more than ``rtol`` away from every
    earlier stage that ran there."""
    if not ends:
        return torch.zeros_like(idx, dtype=torch.bool)
    last_b, last_ran = ends[-1]
    last = last_b.value[idx]
    away = torch.isfinite(last) & last_ran[idx]
    for e, ran in ends[:-1]:
        v = e.value[idx]
        same = (v - last).abs() <= rtol * torch.minimum(v, last)
        away = away & ~(same & ran[idx])
    return away


def runner_up(best: Best, ends: list[Best], rtol: float) -> Best:
    """Per sample, the smallest end point among ``ends`` more than ``rtol`` above the sample's best (another
    basin), in a tracker of its own (empty where there is none)."""
    alt = best.fresh()
    if not ends:
        return alt
    vals = torch.stack([e.value for e in ends])
    vals = torch.where(vals > best.value * (1 + rtol), vals, torch.full_like(vals, float("inf")))
    second, k = vals.min(0)
    has = torch.isfinite(second).nonzero().squeeze(1)
    if has.numel():
        pick = k[has]
        alt.value[has] = second[has]
        alt.x[has] = torch.stack([e.x for e in ends])[pick, has]
        alt.cls[has] = torch.stack([e.cls for e in ends])[pick, has]
        alt.code[has] = torch.stack([e.code for e in ends])[pick, has]
    return alt


def run_schedule(schedule: Schedule, ctx: Context, todo: torch.Tensor) -> None:
    """Run the steps of ``schedule`` on the samples ``todo`` of the batch in ``ctx``; step ``i`` records its
    points with code ``i`` (the results name the step's stage label)."""
    ends: list[tuple[Best, torch.Tensor]] = []  # each search stage's own end points and where it ran
    best = ctx.best
    for i, step in enumerate(schedule):
        if ctx.oracle.out_of_time():
            break
        active = todo[~ctx.settled[todo]]
        if step.samples == "found":
            active = active[best.found[active]]
        elif step.samples == "disagree":
            active = active[_disagree(ends, active, step.rtol)]
        elif step.samples == "basins":
            active = active[_basins(ends, active, step.rtol)]
        origin = None
        if step.start == "best":
            origin = best
        elif step.start == "runner-up":
            origin = runner_up(best, [e for e, _ in ends], step.rtol)
        if origin is not None:
            active = active[origin.found[active]]
        ran = torch.zeros_like(best.found)
        ran[active] = True
        if active.numel() == 0:
            if isinstance(step.stage, _SEARCH):
                ends.append((best.fresh(), ran))
            continue
        own = RUNNERS[type(step.stage)](step.stage, ctx, active, origin, i)
        best.absorb(own)
        if isinstance(step.stage, _SEARCH):
            ends.append((own, ran))
