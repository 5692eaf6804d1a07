import json
import os

import pandas as pd
from typer.testing import CliRunner

from marginkit.cli import app

runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_help_everywhere():
    assert "margins" in _ok(["--help"])
    for cmd in (["data", "--help"], ["train", "--help"], ["margins", "--help"], ["run", "--help"]):
        _ok(cmd)


def test_data_list_and_inspect():
    assert "mnist5k" in _ok(["data", "list"])
    info = json.loads(_ok(["data", "inspect", "digits", "--classes", "3,7"]))
    assert info["class_names"] == ["3", "7"] and info["num_classes"] == 2


def test_train_then_margins_table_resumes(tmp_path):
    ckpt = str(tmp_path / "lin.pt")
    out = _ok(["train", "--dataset", "digits", "--arch", "linear", "--epochs", "3", "--lr", "0.01", "--out", ckpt])
    assert "test accuracy" in out and os.path.exists(ckpt)
    run_dir = str(tmp_path / "margins")
    args = ["margins", "--model", ckpt, "--dataset", "digits", "--norm", "linf", "--limit", "40", "--out", run_dir]
    _ok(args)
    df = pd.read_parquet(os.path.join(run_dir, "results.parquet"))
    assert len(df) == 40 and (df["status"] == "exact").all() and (df["input_margin_upper"] > 0).all()
    assert os.path.exists(os.path.join(run_dir, "summary.md"))
    again = _ok(args)  # re-running resumes: nothing recomputed, no duplicated rows
    assert "resuming: 40 of 40 samples already" in again and "40 samples ->" in again
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(run_dir, "results.parquet")), df)
    res = runner.invoke(app, ["margins", "--model", ckpt, "--dataset", "digits", "--norm", "l2", "--limit", "40",
                              "--out", run_dir])
    assert res.exit_code == 2 and "other settings" in res.output


def test_bad_inputs_give_one_line_errors(tmp_path):
    res = runner.invoke(app, ["margins", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "error" in res.output and "nope.pt" in res.output
    res = runner.invoke(app, ["train", "--dataset", "digits", "--arch", "resnet"])
    assert res.exit_code == 2 and "unknown architecture" in res.output
    res = runner.invoke(app, ["data", "inspect", "digits", "--classes", "3"])
    assert res.exit_code == 2 and "at least two classes" in res.output and "Traceback" not in res.output


def test_main_job_writes_table_summary_and_histogram(tmp_path):
    out_dir = str(tmp_path / "quick")
    _ok(["run", "--dataset", "digits", "--arch", "linear", "--limit", "60", "--out", out_dir])
    df = pd.read_parquet(os.path.join(out_dir, "table", "results.parquet"))
    assert len(df) == 60 and df["input_margin_upper"].notna().all()
    summary = json.load(open(os.path.join(out_dir, "summary.json")))["summary"]
    assert summary["samples"] == 60 and 0.5 < summary["accuracy"] <= 1.0
    assert os.path.getsize(os.path.join(out_dir, "margins_hist.png")) > 1000
    text = open(os.path.join(out_dir, "summary.md")).read()
    assert "## Robustness read from the margins" in text and "Kendall tau" in text
    metrics = json.load(open(os.path.join(out_dir, "consistency", "metrics.json")))
    assert metrics["n"] == 60 and -1 <= metrics["scores"]["logit_margin"]["consistency"]["kendall"]["value"] <= 1


def test_train_checkpoint_dir_resumes(tmp_path):
    ck = str(tmp_path / "state")
    args = ["train", "--dataset", "digits", "--arch", "linear", "--epochs", "2", "--checkpoint-dir", ck,
            "--out", str(tmp_path / "a.pt")]
    first = _ok(args)
    assert os.path.exists(os.path.join(ck, "last.pt"))
    second = _ok(args[:-1] + [str(tmp_path / "b.pt")])  # everything already trained: same weights
    assert first.split("test accuracy")[1].split()[0] == second.split("test accuracy")[1].split()[0]
