"""Attacks: the minimal-norm input-margin engine (upper bounds on d_in) and fixed-budget attacks.

``input_margin`` is the engine (see :mod:`marginkit.attacks.engine` for the schedule); ``pgd`` is the
fixed-budget attack used by adversarial training.
"""

from .engine import METHODS, InputMarginResult, input_margin
from .pgd import pgd

__all__ = ["METHODS", "InputMarginResult", "input_margin", "pgd"]
