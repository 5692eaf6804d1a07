"""The command-line examples of docs/own-model-and-data.md run, after the page's Python blocks have made
their files, and succeed (exit code 0)."""

import re
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marginkit.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model-and-data.md"
SLOW_MARK = "torch.export.export("


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_pages_cli_commands_run(tmp_path, monkeypatch):
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    commands = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in block.splitlines() if line.startswith("marginkit ")]
    assert len(commands) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    runner = CliRunner()
    try:
        for i, code in enumerate(blocks):
            if SLOW_MARK not in code:
                exec(compile(code, f"{DOC.name}[block {i}]", "exec"), namespace)
        for cmd in commands:
            res = runner.invoke(app, shlex.split(cmd)[1:])
            assert res.exit_code == 0, f"{cmd}\n{res.output}"
    finally:
        for name in ("mynets", "twoheads"):
            sys.modules.pop(name, None)
    assert "Skipped steps" in (tmp_path / "runs/mine-consistency/report.md").read_text()
    assert "| feature margin (" in (tmp_path / "runs/mine/summary.md").read_text()  # the hook gives feature margins
