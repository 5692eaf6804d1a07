"""``marginkit bounds`` end to end on a tiny checkpoint."""

import json
import os

import pandas as pd
from typer.testing import CliRunner

from marginkit.cli import app
from marginkit.models import ModelSpec, build_model
from marginkit.models.checkpoint import save_checkpoint

runner = CliRunner()


def test_bounds_command_writes_table_stats_and_plots(tmp_path):
    spec = ModelSpec("mlp", (2,), 2, hidden=3, depth=1)
    ck = save_checkpoint(tmp_path / "tiny.pt", build_model(spec, seed=0), spec, {})
    out = tmp_path / "out"
    res = runner.invoke(app, ["bounds", "--out", str(out), "--model", f"tiny={ck}", "--dataset", "synthetic",
                              "--classes", "0,1", "--per-class", "6", "--eps", "0.02,0.1,0.3", "--neighbours", "0"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "bounds.csv")
    assert set(table["layer"]) == {"input", "fc1", "relu1"}
    assert len(table) == 9 and table["model"].eq("tiny").all()
    assert ((table["zero_one"] >= 0) & (table["zero_one"] <= 0.5 + 1e-9)).all()
    stats = pd.read_csv(out / "layers.csv")
    assert list(stats["layer"]) == ["input", "fc1", "relu1"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["per_class"] == {"0": 6, "1": 6} and settings["bounds"] is None and "versions" in settings
    for png in ("bounds_cross_entropy.png", "bounds_zero_one.png"):
        assert os.path.getsize(out / png) > 1000


def test_bounds_command_rejects_bad_options(tmp_path):
    res = runner.invoke(app, ["bounds", "--out", str(tmp_path / "o"), "--eps", "a,b", "--demo", "standard"])
    assert res.exit_code != 0 and "eps" in res.output
    res = runner.invoke(app, ["bounds", "--out", str(tmp_path / "o"), "--dataset", "synthetic", "--classes", "0,1"])
    assert res.exit_code == 2 and "--model" in res.output
