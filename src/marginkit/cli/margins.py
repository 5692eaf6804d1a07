"""``marginkit margins``: the per-sample margin table of a model on a dataset."""

from __future__ import annotations

import os

import typer

from ._common import (LOGITS_KEY_HELP, RANDOM_INIT_HELP, STOCHASTIC_HELP, TEST_FRACTION_HELP, friendly_errors, model_ref,
                      parse_classes, parse_params)

ESTIMATOR_HELP = ("auto (exact for affine models, else attack) | exact | attack (upper bound) | "
                  "certify (attack + certified lower bound) | none")


MARGINS_HELP = ("Compute logit, feature and input margins per sample; resumes an interrupted run in --out.\n\n"
                "The model is checked on the data first (classes, input shape, determinism, tuple outputs). "
                "Attack-based input margins take time in proportion to the samples: after the first chunk a line "
                "states the expected time of the rest, from the measured per-sample cost.")


def register(app: typer.Typer) -> None:
    @app.command("margins", help=MARGINS_HELP)
    @friendly_errors
    def margins_cmd(
        model: str = typer.Option(..., help="checkpoint path, TorchScript file or package.module:factory"),
        weights: str = typer.Option(None, help="state dict for a module:factory model"),
        random_init: bool = typer.Option(False, "--random-init", help=RANDOM_INIT_HELP),
        logits_key: str = typer.Option(None, "--logits-key", help=LOGITS_KEY_HELP),
        allow_stochastic: bool = typer.Option(False, "--allow-stochastic", help=STOCHASTIC_HELP),
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        classes: str = typer.Option(None, help="keep only these classes, e.g. 3,7 (must match the model)"),
        split: str = typer.Option("test", help="train | test"),
        norm: str = typer.Option("l2", help="l1 | l2 | linf"),
        input_margin: str = typer.Option("auto", help=ESTIMATOR_HELP),
        limit: int = typer.Option(None, help="only the first N samples of the split"),
        seed: int = typer.Option(0, help="seed of the train/test split"),
        test_fraction: float = typer.Option(None, "--test-fraction", help=TEST_FRACTION_HELP),
        out: str = typer.Option(..., help="output directory for results.parquet, results.json and the summary"),
        overwrite: bool = typer.Option(False, help="discard a previous run in --out instead of resuming it"),
        budget: int = typer.Option(None, help="input-margin attack: forward + backward passes allowed per sample "
                                               "(samples out of budget keep their best point or fail with inf)"),
        attack_param: list[str] = typer.Option(None, "--attack-param", help="input-margin engine option key=value (repeatable)"),
        verify_param: list[str] = typer.Option(None, "--verify-param", help="certify / exact option key=value, e.g. "
                                               "time_limit=60 (repeatable)"),
        certify: bool = typer.Option(False, "--certify", help="shorthand for --input-margin certify: a certified "
                                     "lower bound (alpha-CROWN bisection) under the attack's upper bound"),
        exact: bool = typer.Option(False, "--exact", help="shorthand for --input-margin exact: closed form for affine "
                                   "models, MILP for small ReLU networks (time limit per sample: --verify-param time_limit=S)"),
        workers: int = typer.Option(None, "--workers", help="spread the samples over N local Ray workers "
                                    "(pip install 'marginkit[ray]')"),
        ray_address: str = typer.Option(None, "--ray-address", help="run the shards on an existing Ray cluster (e.g. auto)"),
    ) -> None:
        """Compute logit, feature and input margins per sample; resumes an interrupted run in --out."""
        from marginkit.pipeline import DataRef, MarginJob, run_margins
        from marginkit.report import write_summary

        if certify and exact:
            raise ValueError("give --certify or --exact, not both")
        if (certify or exact) and input_margin not in ("auto", "certify" if certify else "exact"):
            raise ValueError(f"--{'certify' if certify else 'exact'} conflicts with --input-margin {input_margin}")
        input_margin = "certify" if certify else ("exact" if exact else input_margin)
        attack_options = parse_params(attack_param)
        if budget is not None:
            attack_options["budget"] = budget
        job = MarginJob(model_ref(model, weights, random_init, logits_key, allow_stochastic),
                        DataRef(dataset, parse_classes(classes), split, limit, seed, test_fraction), norm,
                        input_margin, attack_options=attack_options, verify_options=parse_params(verify_param))
        executor = None
        if workers is not None or ray_address is not None:
            from marginkit.parallel import ExecutorConfig

            executor = ExecutorConfig(workers=workers, ray_address=ray_address)
        df, settings = run_margins(job, out, overwrite=overwrite, executor=executor)
        paths = write_summary(df, out, f"Margins of {os.path.basename(model)} on {settings['dataset']}", settings)
        typer.echo(f"data: {settings['split_description']}")
        if settings.get("feature_margin_reason"):
            typer.echo(f"no feature margins: {settings['feature_margin_reason']}")
        typer.echo(f"{len(df)} samples -> {os.path.join(out, 'results.parquet')}; summary {paths['markdown']}")
