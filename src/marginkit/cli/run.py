"""``marginkit run``: the main job. Train (or reuse) a demo model, write its per-sample margin table and
a human-readable report: margin statistics, histograms, robust accuracy read from the input margins and
margin consistency."""

from __future__ import annotations

import os

import typer

from ._common import console, eps_value, friendly_errors
from .margins import ESTIMATOR_HELP


def register(app: typer.Typer) -> None:
    @app.command("run")
    @friendly_errors
    def run_cmd(
        dataset: str = typer.Option("mnist5k", help="built-in dataset"),
        arch: str = typer.Option("mlp", help="linear | mlp | cnn"),
        norm: str = typer.Option("l2", help="l1 | l2 | linf"),
        input_margin: str = typer.Option("auto", help=ESTIMATOR_HELP),
        limit: int = typer.Option(None, help="only the first N test samples"),
        seed: int = typer.Option(0, help="seed for split, training and attacks"),
        out: str = typer.Option(os.path.join("runs", "quickstart"), help="output directory"),
        overwrite: bool = typer.Option(False, help="discard a previous run in --out instead of resuming it"),
        eps: str = typer.Option(None, help="threat radius for robust accuracy and detection, e.g. 1.0 or 8/255 "
                                           "(default: l2 1.0, linf 0.05, l1 5.0)"),
    ) -> None:
        """Main job on the embedded data: demo model -> per-sample margins -> summary.md + histogram."""
        from marginkit.margins.estimators import check_estimator
        from marginkit.norms import as_norm
        from marginkit.pipeline import DataRef, MarginJob, ModelRef, run_margins
        from marginkit.report.quickstart import write_quickstart_report
        from marginkit.training import demo_model

        # Bad options fail before the demo model is trained.
        radius = None if eps is None else eps_value(eps, "--eps")
        data, norm, estimator = DataRef(dataset, None, "test", limit, seed), as_norm(norm), check_estimator(input_margin)
        _, info = demo_model(arch, dataset, seed=seed, progress=True)
        console.print(f"model {info.path} (test accuracy {info.metadata.get('test_accuracy', float('nan')):.4f})")
        table_dir = os.path.join(out, "table")
        df, settings = run_margins(MarginJob(ModelRef(info.path), data, norm, estimator), table_dir, overwrite=overwrite)
        settings["train"] = info.metadata.get("train")
        paths = write_quickstart_report(df, out, f"marginkit quickstart: {arch} on {dataset}", settings, radius, seed)
        with open(paths["markdown"]) as fh:
            console.print(fh.read().split("## Settings")[0], markup=False, highlight=False)
        typer.echo(f"table {os.path.join(table_dir, 'results.parquet')}; report {paths['markdown']}; "
                   f"histogram {paths['histogram']}")
