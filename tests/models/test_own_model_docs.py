"""Every Python block of docs/own-model-and-data.md runs, in order, in one fresh folder.

Blocks that compile a ``torch.export`` program take several seconds, so the default run skips them and
the slow run (``-m slow``) runs the whole page.
"""

import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model-and-data.md"
SLOW_MARK = "torch.export.export("


def _run_page(tmp_path, monkeypatch, include_slow: bool) -> int:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `import mynets` in the example stands for the user's script
    namespace: dict = {}
    ran = 0
    try:
        for i, code in enumerate(blocks):
            if SLOW_MARK in code and not include_slow:
                continue
            exec(compile(code, f"{DOC.name}[block {i}]", "exec"), namespace)
            ran += 1
    finally:
        for name in ("mynets", "twoheads"):
            sys.modules.pop(name, None)
    return ran


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript is deprecated in recent torch
def test_every_fast_example_of_the_page_runs(tmp_path, monkeypatch):
    assert _run_page(tmp_path, monkeypatch, include_slow=False) >= 10


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_example_of_the_page_runs(tmp_path, monkeypatch):
    _run_page(tmp_path, monkeypatch, include_slow=True)
