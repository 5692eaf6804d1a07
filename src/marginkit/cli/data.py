"""``marginkit data``: list and inspect datasets."""

from __future__ import annotations

import typer

from ._common import friendly_errors, parse_classes


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="List and inspect datasets (built-in and user files).", no_args_is_help=True)

    @data_app.command("list")
    def list_cmd() -> None:
        """List built-in datasets and the file formats marginkit reads."""
        from marginkit.data import list_datasets

        for name, desc in list_datasets().items():
            typer.echo(f"{name:14s} {desc}")

    @data_app.command("inspect")
    @friendly_errors
    def inspect_cmd(
        spec: str = typer.Argument(..., help="dataset name or file spec, e.g. mnist5k, digits, npz:data.npz"),
        classes: str = typer.Option(None, help="keep only these classes, e.g. 3,7"),
        seed: int = typer.Option(0, help="seed of the train/test split"),
    ) -> None:
        """Print sizes, shapes, class counts and the fingerprint of a dataset as JSON."""
        from marginkit.data import load_dataset
        from marginkit.results.jsonio import dumps

        ds = load_dataset(spec, classes=parse_classes(classes), seed=seed)
        typer.echo(dumps(ds.describe()))

    app.add_typer(data_app, name="data")
