"""The ``marginkit`` command line: a thin layer over the library (it parses, calls :mod:`marginkit.pipeline`
and the other packages, and prints).

Each topic lives in its own module under ``marginkit.cli`` that defines ``register(app)``; the
modules named in ``COMMAND_MODULES`` are registered in that order. The library never imports this.
"""

from __future__ import annotations

import importlib

import typer

from ._common import state

COMMAND_MODULES = ["data", "train", "margins", "run", "consistency", "bounds", "dynamics", "reproduce"]

app = typer.Typer(
    name="marginkit",
    help="How close is each decision of a PyTorch classifier to flipping? Margins, consistency, robustness bounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    threads: int = typer.Option(None, "--threads", help="torch intra-op threads (default: torch's choice); "
                                "1 is often fastest on a busy machine"),
    debug: bool = typer.Option(False, "--debug", help="on an error, show the full traceback instead of one line"),
) -> None:
    state.debug = debug
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter("--threads must be at least 1")
        import torch

        torch.set_num_threads(threads)


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    app()
