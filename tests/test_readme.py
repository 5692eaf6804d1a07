"""The README's first lines are the set-up; CI must run exactly its install and test commands."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_install_main_job_and_tests():
    install, main_job, tests = _setup_commands()
    assert "constraints.txt" in install and main_job.startswith("marginkit ") and "pytest" in tests


def test_ci_runs_the_readme_commands_verbatim():
    install, _, tests = _setup_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and tests in ci


def test_torch_is_pinned_for_this_machine_but_a_range_in_metadata():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    deps = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=' in deps and '"torch==' not in deps
