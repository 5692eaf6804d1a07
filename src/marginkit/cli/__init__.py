"""The ``marginkit`` command line: a thin layer over the library.

Each topic lives in its own module under ``marginkit.cli`` that defines ``register(app)``; the
modules named in ``COMMAND_MODULES`` are registered in that order. The library never imports this.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ["data", "train", "margins", "run", "consistency", "bounds", "dynamics"]

app = typer.Typer(
    name="marginkit",
    help="How close is each decision of a PyTorch classifier to flipping? Margins, consistency, robustness bounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    app()
