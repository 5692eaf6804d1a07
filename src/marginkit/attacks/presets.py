"""The engine's presets: "fast", "default" and "thorough" per norm. The only place with tuning numbers.

Each preset is a schedule (:mod:`.schedule`): plain data that a user can copy and change. What each one
costs and how tight it is, measured against stored public attacks and against exact margins, is in
bench/attacks.md (the row named in the comment above each preset).

* ``fast``: the affine shortcut, then targeted boundary projection to the nearest linearised boundaries and
  refinement (the DeepFool / FAB-10 class of cost).
* ``default``: ``fast`` plus an independent adaptive-ball walk; in l2 an ALMA run where the two disagree,
  in l1 two ALMA runs on every sample, in linf and l1 rounds from the best point where the stages disagree.
* ``thorough``: ``default`` plus further ALMA runs with other step sizes where the walks ended in different
  basins (l2, l1), one long ALMA run there (l1) and the rounds also from the runner-up end point (linf, l1).
"""

from __future__ import annotations

from ..norms import Norm, as_norm
from .schedule import Schedule, Step
from .stages import AffineExact, Alma, Ball, Projection, Rounds

__all__ = ["PRESETS", "preset"]

_AFFINE = Step(AffineExact())
_PROJECTION = Step(Projection(steps=40, topk=3, prune=1.1))

# bench/attacks.md, row "marginkit fast"
_FAST = (_AFFINE, Step(Projection(steps=10, topk=3, prune=1.1)))

# bench/attacks.md, row "marginkit default"
_DEFAULT: dict[Norm, Schedule] = {
    Norm.L2: (_AFFINE, _PROJECTION, Step(Ball(steps=50)), Step(Alma(steps=300), samples="disagree")),
    Norm.LINF: (_AFFINE, _PROJECTION, Step(Ball(steps=200)),
                Step(Rounds(rounds=2, projection_steps=40, ball_steps=200), samples="disagree", start="best")),
    Norm.L1: (_AFFINE, _PROJECTION, Step(Ball(steps=300)), Step(Alma(steps=150, lrs=(None, 0.1)), samples="found"),
              Step(Rounds(rounds=2, projection_steps=40, ball_steps=300), samples="disagree", start="best")),
}

# bench/attacks.md, row "marginkit thorough"
_THOROUGH: dict[Norm, Schedule] = {
    Norm.L2: _DEFAULT[Norm.L2] + (Step(Alma(steps=300, lrs=(0.1, 0.2, 1.0)), samples="basins"),),
    Norm.LINF: _DEFAULT[Norm.LINF] + (
        Step(Rounds(rounds=2, projection_steps=40, ball_steps=200), samples="disagree", start="runner-up"),),
    Norm.L1: _DEFAULT[Norm.L1][:4] + (
        Step(Alma(steps=150, lrs=(0.03, 0.05, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0)), samples="basins"),
        Step(Alma(steps=1000), samples="basins"),
        Step(Rounds(rounds=2, projection_steps=40, ball_steps=300), samples="disagree", start="best"),
        Step(Rounds(rounds=2, projection_steps=40, ball_steps=300), samples="disagree", start="runner-up")),
}

PRESETS: dict[str, dict[Norm, Schedule]] = {
    "fast": {n: _FAST for n in Norm},
    "default": _DEFAULT,
    "thorough": _THOROUGH,
}

# The schedules behind the old ``method="fab"`` / ``method="ball"`` arguments (single methods + refinement).
SINGLE: dict[str, dict[Norm, Schedule]] = {
    "fab": {n: (_PROJECTION,) for n in Norm},
    "ball": {Norm.L2: (Step(Ball(steps=100)),), Norm.L1: (Step(Ball(steps=100)),), Norm.LINF: (Step(Ball(steps=200)),)},
}


def preset(name: str, norm: Norm | str) -> Schedule:
    """The schedule of preset ``name`` ("fast", "default", "thorough") for ``norm``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name][as_norm(norm)]
