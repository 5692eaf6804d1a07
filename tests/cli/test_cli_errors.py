"""The one CLI error handler: a clean error is one line ``error: ...`` with exit code 2 and no traceback;
an unexpected exception is a crash (not swallowed); ``--debug`` re-raises with the traceback."""

import pytest
import typer
from typer.testing import CliRunner

from marginkit.cli import app
from marginkit.cli._common import friendly_errors, state

runner = CliRunner()


def _lines(output):
    return [line for line in output.splitlines() if line.strip()]


def _clean_error(res):
    """Exit code 2, exactly one non-empty line starting with 'error:', no traceback."""
    lines = _lines(res.output)
    return (res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and "Traceback" not in res.output and isinstance(res.exception, SystemExit))


def _toy_app(exc):
    toy = typer.Typer()

    @toy.command()
    @friendly_errors
    def boom() -> None:
        raise exc

    @toy.command()
    def other() -> None:
        pass

    return toy


@pytest.mark.parametrize("exc", [ValueError("bad [x] value\nsecond line"), TypeError("t"), FileNotFoundError("f"),
                                 PermissionError("p"), IsADirectoryError("d"), KeyError("k"), IndexError("i"),
                                 RuntimeError("shape mismatch")])
def test_library_errors_on_bad_input_are_one_clean_line(exc):
    res = runner.invoke(_toy_app(exc), ["boom"])
    assert _clean_error(res), res.output
    if isinstance(exc, ValueError):
        assert _lines(res.output) == ["error: bad [x] value second line"]  # markup escaped, newline folded
    if isinstance(exc, KeyError):
        assert _lines(res.output) == ["error: k"]


def test_a_bug_is_a_crash_not_a_clean_error():
    res = runner.invoke(_toy_app(ZeroDivisionError("bug")), ["boom"])
    assert not _clean_error(res) and isinstance(res.exception, ZeroDivisionError) and res.exit_code == 1


def test_real_commands_fail_cleanly(tmp_path):
    (tmp_path / "adir").mkdir()
    cases = [
        ["margins", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o1")],
        ["margins", "--model", str(tmp_path / "adir"), "--out", str(tmp_path / "o2")],
        ["margins", "--model", "os.path:nothing_here", "--out", str(tmp_path / "o3")],
        ["margins", "--model", str(tmp_path / "missing.pt"), "--input-margin", "pgd", "--out", str(tmp_path / "o4")],
        ["consistency", "--eps", "0.1", "--table", str(tmp_path / "adir"), "--out", str(tmp_path / "o5")],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert _clean_error(res), (args, res.output)


def test_debug_flag_reraises_with_the_traceback(tmp_path):
    args = ["margins", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, ["--debug", *args])
    assert res.exit_code == 1 and res.exception is not None and not isinstance(res.exception, SystemExit)
    res = runner.invoke(app, args)  # the flag holds for one invocation only
    assert not state.debug
    assert _clean_error(res), res.output


def test_options_take_eps_as_fractions():
    from marginkit.cli._common import eps_list, eps_value, parse_params

    assert eps_value("8/255", "--eps") == pytest.approx(8 / 255)
    assert eps_list("2/255, 0.5,1", "--eps") == pytest.approx([2 / 255, 0.5, 1.0])
    assert parse_params(["eps=8/255", "norm=linf", "steps=10", "path=a/b"]) == {
        "eps": pytest.approx(8 / 255), "norm": "linf", "steps": 10, "path": "a/b"}
    for bad in ("1/0", "x", "-1", "inf", ""):
        with pytest.raises(typer.BadParameter, match="--eps"):
            eps_list(bad, "--eps")
