"""``marginkit run``: the main job. Train (or reuse) a demo model, write its per-sample margin table and
a human-readable report: margin statistics, histograms, robust accuracy read from the input margins and
margin consistency."""

from __future__ import annotations

import os

import typer

from ._common import console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command("run")
    @friendly_errors
    def run_cmd(
        dataset: str = typer.Option("mnist5k", help="built-in dataset"),
        arch: str = typer.Option("mlp", help="linear | mlp | cnn"),
        norm: str = typer.Option("l2", help="l1 | l2 | linf"),
        input_margin: str = typer.Option("auto", help="auto | exact | attack | none"),
        limit: int = typer.Option(None, help="only the first N test samples"),
        seed: int = typer.Option(0, help="seed for split, training and attacks"),
        out: str = typer.Option(os.path.join("runs", "quickstart"), help="output directory"),
        overwrite: bool = typer.Option(False, help="discard a previous run in --out instead of resuming it"),
        eps: float = typer.Option(None, help="threat radius for robust accuracy and detection "
                                             "(default: l2 1.0, linf 0.05, l1 5.0)"),
    ) -> None:
        """Main job on the embedded data: demo model -> per-sample margins -> summary.md + histogram."""
        from marginkit.report.quickstart import write_quickstart_report
        from marginkit.training import demo_model

        from .margins import compute_table

        model, info = demo_model(arch, dataset, seed=seed, progress=True)
        console.print(f"model {info.path} (test accuracy {info.metadata.get('test_accuracy', float('nan')):.4f})")
        table_dir = os.path.join(out, "table")
        df, settings = compute_table(info.path, None, dataset, None, "test", norm, input_margin, limit, seed,
                                     table_dir, overwrite)
        settings["train"] = info.metadata.get("train")
        paths = write_quickstart_report(df, out, f"marginkit quickstart: {arch} on {dataset}", settings, eps, seed)
        console.print(open(paths["markdown"]).read().split("## Settings")[0])
        typer.echo(f"table {os.path.join(table_dir, 'results.parquet')}; report {paths['markdown']}; "
                   f"histogram {paths['histogram']}")
