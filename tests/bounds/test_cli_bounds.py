"""``marginkit bounds`` end to end on a tiny checkpoint."""

import json
import os

import pandas as pd
import pytest
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


def _clean_error(res):
    lines = [line for line in res.output.splitlines() if line.strip()]
    return res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output


def _tiny(tmp_path, classes=2, name="tiny.pt"):
    spec = ModelSpec("mlp", (2,), classes, hidden=3, depth=1)
    return save_checkpoint(tmp_path / name, build_model(spec, seed=0), spec, {})


_BASE = ["--dataset", "synthetic", "--classes", "0,1", "--per-class", "4", "--eps", "0.1,0.3"]


def test_bounds_command_validates_models_like_margins(tmp_path):
    """The same checks as ``marginkit margins`` before any work: a 3-output model on 2-class data, a
    missing file, a layer that does not exist; each a one-line error naming the model, nothing written."""
    three = _tiny(tmp_path, classes=3, name="three.pt")
    out = tmp_path / "o"
    res = runner.invoke(app, ["bounds", "--out", str(out), "--model", f"wide={three}", *_BASE])
    assert _clean_error(res), res.output
    assert "'wide'" in res.output and "3 outputs" in res.output and "2 classes" in res.output
    assert not out.exists()
    res = runner.invoke(app, ["bounds", "--out", str(out), "--model", f"gone={tmp_path / 'missing.pt'}", *_BASE])
    assert _clean_error(res) and "missing.pt" in res.output, res.output
    ok = _tiny(tmp_path)
    res = runner.invoke(app, ["bounds", "--out", str(out), "--model", f"tiny={ok}", "--layers", "input,fc9", *_BASE])
    assert _clean_error(res) and "'fc9'" in res.output and "fc1" in res.output, res.output
    assert not out.exists()


def test_run_bounds_accepts_model_refs_and_checks_input_shape(tmp_path):
    from marginkit.checks import InputError
    from marginkit.pipeline import BoundsJob, ModelRef, run_bounds

    spec = ModelSpec("mlp", (5,), 2, hidden=3, depth=1)  # built for 5 features, the data have 2
    ck = save_checkpoint(tmp_path / "five.pt", build_model(spec, seed=0), spec, {})
    job = BoundsJob((("five", ModelRef(str(ck))),), dataset="synthetic", classes=("0", "1"), per_class=4, eps=(0.1,))
    with pytest.raises(InputError, match="'five'.*shape"):
        run_bounds(job, progress=False)
    ok = _tiny(tmp_path)
    run = run_bounds(BoundsJob((("tiny", ModelRef(str(ok))),), dataset="synthetic", classes=("0", "1"), per_class=4,
                               eps=(0.1, 0.3), neighbours=None), progress=False)
    assert set(run.table["layer"]) == {"input", "fc1", "relu1"} and run.settings["models"]["tiny"] == str(ok)
