"""``marginkit reproduce``: parses, runs the library at the tiny scale, prints verdicts, resumes, and fails
with one line on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from marginkit.cli import app
from marginkit.pipeline import reproduce as rp

runner = CliRunner()


@pytest.fixture
def no_zoo(monkeypatch):
    def missing():
        raise rp.StudyUnavailable("the model zoo is not available in this installation (test)")

    monkeypatch.setattr(rp, "_zoo_api", missing)


def test_reproduce_tiny_writes_the_report_and_resumes(tmp_path, no_zoo):
    out = tmp_path / "r"
    res = runner.invoke(app, ["reproduce", "all", "--tiny", "--only", "fisher,ablation,zoo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "[1/3] ablation" in res.output and "[2/3] fisher" in res.output
    assert "fisher          confirmed" in res.output
    assert "zoo             not run: the model zoo is not available" in res.output
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert sorted(p.stem for p in (out / "studies").glob("*.json")) == ["ablation", "fisher"]
    first = json.loads((out / "run.json").read_text())
    res2 = runner.invoke(app, ["reproduce", "all", "--tiny", "--only", "fisher,ablation", "--out", str(out)])
    assert res2.exit_code == 0, res2.output
    assert "ablation: stored result reused" in res2.output and "fisher: stored result reused" in res2.output
    assert "..." not in res2.output  # nothing started
    second = json.loads((out / "run.json").read_text())
    assert len(second["sittings"]) == len(first["sittings"]) + 1 and second["sittings"][-1]["ran"] == []
    res3 = runner.invoke(app, ["reproduce", "dynamics", "--tiny", "--only", "fisher", "--out", str(out),
                               "--report-only"])
    assert res3.exit_code == 0 and "fisher" in res3.output


@pytest.mark.parametrize("args, message", [
    (["reproduce", "theory", "--tiny"], "section must be one of"),
    (["reproduce", "all", "--quick", "--full"], "choose one of --quick, --full, --tiny"),
    (["reproduce", "dynamics", "--tiny", "--only", "nope"], "unknown study 'nope'"),
    (["reproduce", "bounds", "--tiny", "--only", "fisher"], "none of fisher belongs"),
])
def test_reproduce_bad_input_is_one_line(tmp_path, args, message):
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
