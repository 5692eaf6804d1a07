"""``marginkit margins``: the per-sample margin table of a model on a dataset."""

from __future__ import annotations

import os

import typer

from ._common import friendly_errors, parse_classes, parse_params

ESTIMATOR_HELP = ("auto (exact for affine models, else attack) | exact | attack (upper bound) | "
                  "certify (attack + certified lower bound) | none")


def register(app: typer.Typer) -> None:
    @app.command("margins")
    @friendly_errors
    def margins_cmd(
        model: str = typer.Option(..., help="checkpoint path, TorchScript file or package.module:factory"),
        weights: str = typer.Option(None, help="state dict for a module:factory model"),
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        classes: str = typer.Option(None, help="keep only these classes, e.g. 3,7 (must match the model)"),
        split: str = typer.Option("test", help="train | test"),
        norm: str = typer.Option("l2", help="l1 | l2 | linf"),
        input_margin: str = typer.Option("auto", help=ESTIMATOR_HELP),
        limit: int = typer.Option(None, help="only the first N samples of the split"),
        seed: int = typer.Option(0, help="seed of the train/test split"),
        out: str = typer.Option(..., help="output directory for results.parquet, results.json and the summary"),
        overwrite: bool = typer.Option(False, help="discard a previous run in --out instead of resuming it"),
        budget: int = typer.Option(None, help="input-margin attack: forward + backward passes allowed per sample "
                                               "(samples out of budget keep their best point or fail with inf)"),
        attack_param: list[str] = typer.Option(None, "--attack-param", help="input-margin engine option key=value (repeatable)"),
        verify_param: list[str] = typer.Option(None, "--verify-param", help="certify / exact option key=value, e.g. "
                                               "time_limit=60 (repeatable)"),
    ) -> None:
        """Compute logit, feature and input margins per sample; resumes an interrupted run in --out."""
        from marginkit.pipeline import DataRef, MarginJob, ModelRef, run_margins
        from marginkit.report import write_summary

        attack_options = parse_params(attack_param)
        if budget is not None:
            attack_options["budget"] = budget
        job = MarginJob(ModelRef(model, weights), DataRef(dataset, parse_classes(classes), split, limit, seed), norm,
                        input_margin, attack_options=attack_options, verify_options=parse_params(verify_param))
        df, settings = run_margins(job, out, overwrite=overwrite)
        paths = write_summary(df, out, f"Margins of {os.path.basename(model)} on {settings['dataset']}", settings)
        typer.echo(f"{len(df)} samples -> {os.path.join(out, 'results.parquet')}; summary {paths['markdown']}")
