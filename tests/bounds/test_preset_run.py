"""Presets end to end: ``run_bounds_preset`` trains the tiny preset's extractor, caches it, resumes finished
layers, and ``marginkit bounds --preset / --list-presets`` expose it."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from marginkit.cli import app
from marginkit.pipeline import run_bounds_preset

runner = CliRunner()


def test_tiny_preset_trains_caches_and_resumes(tmp_path):
    cache, out = tmp_path / "models", tmp_path / "run"
    run = run_bounds_preset("tiny-synthetic", out, quick=True, cache_dir=cache)
    assert set(run.table["layer"]) == {"input", "fc1", "relu1", "fc2", "relu2"}
    assert len(run.table) == 5 * 3 and run.settings["points"] == 10 and run.settings["quick"] is True
    model = run.settings["models"]["standard"]
    assert model["cached"] is False and 0.0 <= model["test_accuracy"] <= 1.0
    assert len(list(cache.glob("fcnn-standard-*.pt"))) == 1
    relu = run.layers.set_index("layer").loc["relu1"]
    assert relu["method"] == "descent" and relu["neighbours"] != relu["neighbours"]  # NaN: every candidate pair
    ce = run.table.pivot_table(index="eps", columns="layer", values="cross_entropy")
    assert (ce["relu2"] >= ce["input"] - 1e-6).all()
    again = run_bounds_preset("tiny-synthetic", out, quick=True, cache_dir=cache)
    assert again.settings["models"]["standard"]["cached"] is True
    assert all(str(s.get("resumed_from", "")).endswith(".npz") for s in again.settings["layer_stats"]
               if s["layer"] not in ("input",))
    pd.testing.assert_frame_equal(run.table, again.table)


def test_cli_preset_and_list(tmp_path):
    res = runner.invoke(app, ["bounds", "--list-presets"])
    assert res.exit_code == 0 and "fig3-layers-standard" in res.output and "Fashion-MNIST" in res.output
    out = tmp_path / "o"
    res = runner.invoke(app, ["bounds", "--preset", "tiny-synthetic", "--quick", "--no-settle", "--out", str(out)])
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preset"] == "tiny-synthetic" and settings["settle"] is False and "versions" in settings
    assert (out / "bounds_cross_entropy.png").exists()
    res = runner.invoke(app, ["bounds", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown bounds preset" in res.output


@pytest.mark.parametrize("args", [["--preset", "tiny-synthetic", "--demo", "standard"], ["--quick", "--demo", "standard"]])
def test_cli_preset_option_conflicts(tmp_path, args):
    res = runner.invoke(app, ["bounds", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
