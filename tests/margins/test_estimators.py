"""The estimator vocabulary: one set of names, "auto" resolved the same way everywhere."""

import pytest

from marginkit.margins.estimators import ESTIMATORS, check_estimator, resolve_estimator
from marginkit.models import ModelSpec, build_model


def test_vocabulary_and_alias():
    assert ESTIMATORS == ("auto", "exact", "attack", "certify", "none")
    assert check_estimator("affine") == "exact"
    with pytest.raises(ValueError, match="auto | exact | attack | certify | none"):
        check_estimator("lipschitz")
    with pytest.raises(ValueError, match="exact | attack"):
        check_estimator("certify", ("exact", "attack"))


def test_auto_is_exact_for_affine_models_and_attack_otherwise():
    linear = build_model(ModelSpec("linear", (1, 4, 4), 3), seed=0)
    mlp = build_model(ModelSpec("mlp", (5,), 3, hidden=4), seed=0)
    assert resolve_estimator("auto", linear, (1, 4, 4)) == "exact"
    assert resolve_estimator("auto", mlp, (5,)) == "attack"
    assert resolve_estimator("certify", mlp, (5,)) == "certify"
