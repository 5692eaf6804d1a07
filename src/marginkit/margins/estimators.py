"""The one vocabulary for choosing how input margins are estimated.

=========  ===========================================================================================
name       what the input-margin columns hold
=========  ===========================================================================================
auto       ``exact`` when the model is affine (checked numerically), otherwise ``attack``. The same
           meaning everywhere: the per-sample table, robust accuracy, the analyses and the CLI.
exact      the exact margin d_in: closed form for affine models (:func:`affine_input_margin`); for
           small ReLU networks a mixed-integer program (the ``marginkit.verify`` package)
attack     an upper bound on d_in: the norm of a verified flipping perturbation found by the
           minimal-norm attack engine (``marginkit.attacks.input_margin``)
certify    the attack's upper bound and a certified lower bound from bound propagation
           (``marginkit.verify.certify``): a bracket lower <= d_in <= upper
none       no input margin (logit and feature margins only)
=========  ===========================================================================================

Estimators that do not fit this table (the Lipschitz lower bound of margin dynamics) keep their own
names next to these; they never redefine one of them.
"""

from __future__ import annotations

from torch import nn

from .affine import is_affine

__all__ = ["ESTIMATORS", "check_estimator", "resolve_estimator"]

ESTIMATORS = ("auto", "exact", "attack", "certify", "none")
# Older spelling accepted on input; results always record the name from ESTIMATORS.
_ALIASES = {"affine": "exact"}


def check_estimator(name: str, allowed: tuple[str, ...] = ESTIMATORS) -> str:
    """``name`` in its canonical spelling; ValueError naming the choices when it is not one of ``allowed``."""
    canon = _ALIASES.get(name, name) if isinstance(name, str) else name
    if canon not in allowed:
        raise ValueError(f"unknown input-margin estimator {name!r}; choose one of {' | '.join(allowed)}")
    return canon


def resolve_estimator(name: str, model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The concrete estimator ``name`` stands for on ``model``: ``auto`` becomes ``exact`` for an affine
    model and ``attack`` otherwise; every other name is returned as it is (canonical spelling)."""
    name = check_estimator(name)
    if name == "auto":
        return "exact" if is_affine(model, input_shape) else "attack"
    return name
