"""The estimator dispatch: verify hooks are called with the attack's upper bound and fill the columns."""

import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from marginkit.models import ModelSpec, build_model
from marginkit.pipeline import margin_table
from marginkit.results.status import BRACKETED, EXACT


@dataclass
class _Verified:
    lower: torch.Tensor
    upper: torch.Tensor
    status: list
    seconds: torch.Tensor
    method: str


def _fake_verify(calls):
    def certify(model, inputs, labels, norm, *, upper, bounds, **options):
        calls.append(("certify", upper.clone(), bounds, options))
        n = inputs.shape[0]
        return _Verified(upper / 2, upper, [BRACKETED] * n, torch.full((n,), 0.5), "fake-certify")

    def exact_margin(model, inputs, labels, norm, *, upper, bounds, time_limit, **options):
        calls.append(("exact", upper.clone(), time_limit, options))
        n = inputs.shape[0]
        return _Verified(upper * 0.9, upper * 0.9, [EXACT] * n, torch.ones(n), "fake-milp")

    return types.SimpleNamespace(certify=certify, exact_margin=exact_margin)


def _install(monkeypatch, fake) -> None:
    """Stand in for marginkit.verify (the module and the package attribute, which an import finds first)."""
    import marginkit

    monkeypatch.setitem(sys.modules, "marginkit.verify", fake)
    monkeypatch.setattr(marginkit, "verify", fake, raising=False)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (4,), 3, hidden=5), seed=0).eval()
    return model, torch.rand(6, 4), torch.zeros(6, dtype=torch.long)


def test_certify_brackets_the_attack_upper_bound(monkeypatch, tiny):
    model, x, y = tiny
    calls = []
    _install(monkeypatch, _fake_verify(calls))
    opts = {"budget": 60}
    att = margin_table(model, x, y, "l2", input_margin="attack", attack_options=opts)
    df = margin_table(model, x, y, "l2", input_margin="certify", attack_options=opts, verify_options={"k": 1})
    assert [c[0] for c in calls] == ["certify"] and calls[0][3] == {"k": 1} and calls[0][2] == (0.0, 1.0)
    np.testing.assert_allclose(calls[0][1].numpy(), att["input_margin_upper"].to_numpy())
    np.testing.assert_allclose(df["input_margin_lower"], df["input_margin_upper"] / 2)
    assert set(df["status"]) == {BRACKETED} and set(df["method"]) == {"fake-certify"}
    assert (df["seconds"] >= 0.5).all()  # the attack's time plus the verifier's


def test_exact_on_a_network_calls_the_milp_with_a_time_limit(monkeypatch, tiny):
    model, x, y = tiny
    calls = []
    _install(monkeypatch, _fake_verify(calls))
    df = margin_table(model, x, y, "linf", input_margin="exact", attack_options={"budget": 60},
                      verify_options={"time_limit": 3.0})
    assert calls[0][0] == "exact" and calls[0][2] == 3.0 and calls[0][3] == {}
    np.testing.assert_allclose(df["input_margin_lower"], df["input_margin_upper"])
    assert set(df["status"]) == {EXACT} and set(df["method"]) == {"fake-milp"}


def test_exact_on_an_affine_model_is_the_closed_form_without_verify(monkeypatch):
    _install(monkeypatch, None)
    model = build_model(ModelSpec("linear", (4,), 3), seed=0).eval()
    df = margin_table(model, torch.rand(5, 4), torch.zeros(5, dtype=torch.long), "l2", input_margin="exact")
    assert set(df["method"]) == {"affine-exact"} and set(df["status"]) == {EXACT}


def test_a_verifier_with_an_unknown_status_is_refused(monkeypatch, tiny):
    model, x, y = tiny

    def certify(model, inputs, labels, norm, *, upper, bounds, **options):
        n = inputs.shape[0]
        return _Verified(upper / 2, upper, ["proved"] * n, torch.zeros(n), "bad")

    _install(monkeypatch, types.SimpleNamespace(certify=certify))
    with pytest.raises(ValueError, match="unknown status"):
        margin_table(model, x, y, "l2", input_margin="certify", attack_options={"budget": 60})
