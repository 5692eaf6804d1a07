"""Presets are valid, and `marginkit dynamics` / `marginkit train --preset` run end to end on tiny settings."""

import json

import pytest
from typer.testing import CliRunner

from marginkit.cli import app
from marginkit.models import ModelSpec
from marginkit.training import TrainConfig, get_method
from marginkit.training.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    p = get_preset(name)
    method = get_method(p.method, **p.method_params)
    assert method.name == p.method
    TrainConfig(**p.train)
    ModelSpec(p.arch, (1, 28, 28), 10, **p.spec)


def test_paper_hyperparameters():
    amr = get_preset("paper-mnist-mlp-amr")
    assert amr.method_params == {"lam": 0.1, "tau": 5.0, "beta": 1e-3}
    assert amr.train["optimizer"] == "sgd" and amr.train["lr"] == 0.01 and amr.train["nesterov"]
    assert amr.train["epochs"] == 200 and amr.spec == {"hidden": 1024, "depth": 1}
    assert get_preset("paper-mnist-cnn-amr").method_params["tau"] == 10.0
    assert get_preset("paper-mnist-mlp-pgd").method_params["eps"] == 2.0
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_cli_dynamics_logreg(tmp_path):
    out = tmp_path / "lr"
    res = CliRunner().invoke(app, ["dynamics", "--arch", "logreg", "--epochs", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for f in ("linear_margins.png", "linear_histograms.png", "linear_adversarial.png", "dynamics.json"):
        assert (out / f).exists()
    data = json.loads((out / "dynamics.json").read_text())
    assert data["svm"]["train_min_margin"] >= max(c["train_min_margin"] for c in data["curves"]) - 1e-6


def test_cli_dynamics_mlp_and_train_preset(tmp_path):
    out = tmp_path / "mlp"
    res = CliRunner().invoke(app, ["dynamics", "--arch", "mlp", "--preset", "cpu-mnist-mlp-std", "--epochs", "1",
                                   "--subset", "20", "--samples", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "dynamics.json").read_text())
    assert sorted({r["epoch"] for r in data["history"]}) == [0, 1]
    assert (out / "margins.png").exists() and (out / "histograms_test.png").exists()
    bad = CliRunner().invoke(app, ["dynamics", "--arch", "cnn", "--preset", "cpu-mnist-mlp-std"])
    assert bad.exit_code == 2 and "trains a mlp" in bad.output
    ck = tmp_path / "m.pt"
    res = CliRunner().invoke(app, ["train", "--preset", "cpu-mnist-mlp-lcr", "--epochs", "1", "--hidden", "32",
                                   "--method-param", "beta=0.01", "--out", str(ck)])
    assert res.exit_code == 0, res.output
    from marginkit.models.checkpoint import load_checkpoint

    _, meta = load_checkpoint(str(ck))
    assert meta.metadata["method"] == "lcr" and meta.metadata["method_params"] == {"beta": 0.01}
    assert meta.metadata["train"]["optimizer"] == "sgd"
