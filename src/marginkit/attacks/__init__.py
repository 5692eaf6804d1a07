"""Attacks: the minimal-norm input-margin engine (upper bounds on d_in) and fixed-budget attacks.

``input_margin`` is the engine (:mod:`marginkit.attacks.engine`); what it runs is a schedule of stages
(:mod:`.schedule`, :mod:`.stages`), by default one of the presets of :mod:`.presets`. ``pgd`` is the
fixed-budget attack used by adversarial training.
"""

from .engine import InputMarginResult, RuntimeOptions, input_margin
from .pgd import pgd
from .presets import PRESETS, preset
from .schedule import Schedule, Step
from .stages import AffineExact, Alma, Ball, Projection, Refine, Rounds

__all__ = ["PRESETS", "AffineExact", "Alma", "Ball", "InputMarginResult", "Projection", "Refine", "Rounds",
           "RuntimeOptions", "Schedule", "Step", "input_margin", "pgd", "preset"]
