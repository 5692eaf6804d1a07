"""Shared by the CLI modules: option parsing and the one error handler.

Every library error on bad input (ValueError, TypeError, OSError such as FileNotFoundError,
PermissionError or IsADirectoryError, KeyError, IndexError, RuntimeError such as a shape mismatch in
torch) is printed as ONE line ``error: ...`` on stderr and the command exits with code 2, without a
traceback. ``marginkit --debug COMMAND ...`` re-raises instead, with the full traceback. The line is
printed as plain text (no rich markup: messages hold brackets such as ``file.npz[x]``), after any open
progress bar has been closed, so it starts a line of its own.
"""

from __future__ import annotations

import ast
import functools
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from marginkit.norms import parse_eps, parse_radius

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

# Errors that mean "the input was bad": shown as one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, KeyError, IndexError, RuntimeError)
EXIT_USER_ERROR = 2


class _State:
    debug = False


state = _State()


def error_line(exc: BaseException) -> str:
    """The one-line message of ``exc`` (KeyError without its quotes; newlines folded)."""
    msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
    text = " ".join(str(msg).split()) or type(exc).__name__
    return f"error: {text}"


def _close_progress_bars() -> None:
    """Close the tqdm bars an error left open, so that the error starts a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar that cannot close must not hide the error
            pass


def friendly_errors(fn: F) -> F:
    """Run a command so that library errors on bad input end it with one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if state.debug:
                raise
            _close_progress_bars()
            typer.echo(error_line(exc), err=True)
            raise typer.Exit(code=EXIT_USER_ERROR) from exc

    return wrapper  # type: ignore[return-value]


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``"3,7"`` -> ``("3", "7")``; empty -> None."""
    if not text:
        return None
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if len(parts) < 2:
        raise typer.BadParameter(f"give at least two classes separated by commas, got {text!r}")
    return parts


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["eps=0.5", "norm=l2"]`` -> ``{"eps": 0.5, "norm": "l2"}`` (Python literals where they parse)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = _fraction(value)
    return out


def _fraction(value: str) -> Any:
    """``"8/255"`` -> 8/255 (the eps grammar); any other text stays text."""
    if "/" in value:
        try:
            return parse_radius(value)
        except ValueError:
            pass
    return value


def eps_list(text: str, option: str) -> list[float]:
    """Radii of an option in the one eps grammar (:func:`marginkit.norms.parse_eps`)."""
    try:
        return parse_eps(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{option}: {exc}") from exc


def eps_value(text: str, option: str) -> float:
    """One radius of an option (``8/255``, ``0.5``)."""
    try:
        return parse_radius(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{option}: {exc}") from exc


def ints(text: str, option: str) -> list[int]:
    """``"100,500"`` -> ``[100, 500]``."""
    try:
        return [int(t) for t in (p.strip() for p in text.split(",")) if t]
    except ValueError as exc:
        raise typer.BadParameter(f"{option}: expected comma-separated integers, got {text!r}") from exc


RANDOM_INIT_HELP = "use a module:factory model's initial (random) weights on purpose (without --weights)"
LOGITS_KEY_HELP = "for a model returning a tuple/list/dict: the index or key of the logits, e.g. 0 or logits"
STOCHASTIC_HELP = "accept a model whose outputs differ between two passes of the same input (dropout in eval mode)"
TEST_FRACTION_HELP = "split an npz holding only x/y: this fraction (stratified, --seed) becomes the test split"


def logits_key(text: str | None) -> int | str | None:
    """``--logits-key``: an integer index (``0``, ``-1``) or a dict key."""
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        return text.strip()


def model_ref(model: str, weights: str | None, random_init: bool, key: str | None, allow_stochastic: bool) -> Any:
    """The :class:`marginkit.pipeline.ModelRef` of the model options."""
    from marginkit.pipeline import ModelRef

    return ModelRef(model, weights, random_init=random_init, logits_key=logits_key(key),
                    allow_stochastic=allow_stochastic)
