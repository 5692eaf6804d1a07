"""Small helpers shared by the CLI modules: option parsing and friendly errors."""

from __future__ import annotations

import ast
import functools
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


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
            out[key.strip()] = value
    return out


def friendly_errors(fn: F) -> F:
    """Turn library errors on bad input into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, FileNotFoundError, KeyError, IndexError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=2) from exc

    return wrapper  # type: ignore[return-value]
