"""Attacks: minimal-norm input-margin engine (upper bounds on d_in) and fixed-budget attacks."""

from .engine import METHODS, InputMarginResult, input_margin

__all__ = ["METHODS", "InputMarginResult", "input_margin"]
