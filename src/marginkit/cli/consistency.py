"""``marginkit consistency``: margin consistency of a model (seed paper Table 1, Algorithm 1, Figs. 2/9).

Takes a model and a dataset (the per-sample table with input margins is computed, resumably, in
``OUT/table``) or an existing per-sample table, and writes ``metrics.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import os

import typer

from ._common import (LOGITS_KEY_HELP, RANDOM_INIT_HELP, STOCHASTIC_HELP, TEST_FRACTION_HELP, console, eps_value,
                      friendly_errors, ints, model_ref, parse_classes, parse_params)
from .margins import ESTIMATOR_HELP


def register(app: typer.Typer) -> None:
    @app.command("consistency")
    @friendly_errors
    def consistency_cmd(
        eps: str = typer.Option(..., help="robustness threshold eps (a number or a fraction such as 8/255)"),
        model: str = typer.Option(None, help="checkpoint, TorchScript file or package.module:factory"),
        weights: str = typer.Option(None, help="state dict for a module:factory model"),
        random_init: bool = typer.Option(False, "--random-init", help=RANDOM_INIT_HELP),
        logits_key: str = typer.Option(None, "--logits-key", help=LOGITS_KEY_HELP),
        allow_stochastic: bool = typer.Option(False, "--allow-stochastic", help=STOCHASTIC_HELP),
        table: str = typer.Option(None, help="existing per-sample results directory (instead of computing one)"),
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        classes: str = typer.Option(None, help="keep only these classes, e.g. 3,7 (must match the model)"),
        split: str = typer.Option("test", help="split to evaluate: train | test"),
        test_fraction: float = typer.Option(None, "--test-fraction", help=TEST_FRACTION_HELP),
        limit: int = typer.Option(None, help="only the first N samples of the split"),
        norm: str = typer.Option(None, help="l1 | l2 | linf (default: l2 with --model; the table's norm with --table)"),
        input_margin: str = typer.Option("auto", help=ESTIMATOR_HELP),
        eps_grid: str = typer.Option(None, help="eps values of the AUROC sweep, e.g. 2/255,4/255,8/255, or 'paper' for {2,4,8,12,16,32}/255 (default: eps x 1/4..4)"),
        subset_sizes: str = typer.Option("100,500", help="Algorithm 1 subset sizes"),
        repeats: int = typer.Option(10, help="random subsets per Algorithm 1 subset size"),
        bootstrap: int = typer.Option(1000, help="bootstrap resamples for the tau / rho confidence intervals (0: none)"),
        pseudo_train: int = typer.Option(0, help="fit a pseudo-margin on the input margins of the first N training samples (0: no)"),
        pseudo_source: str = typer.Option("features", help="pseudo-margin input: features | logits"),
        pseudo_epochs: int = typer.Option(200, help="pseudo-margin training epochs (early stopping on validation MSE)"),
        isometry: int = typer.Option(0, help="local-isometry check (Fig. 6) on the first N evaluated samples (0: no)"),
        estimate_only: int = typer.Option(0, help="Algorithm 1 only: attack N random samples, estimate robust accuracy "
                                                  "and vulnerable fraction of the whole split from logit margins (no table)"),
        attack_param: list[str] = typer.Option(None, "--attack-param", help="input-margin engine option key=value (repeatable)"),
        verify_param: list[str] = typer.Option(None, "--verify-param", help="certify / exact option key=value (repeatable)"),
        seed: int = typer.Option(0, help="seed of the split, attacks, subsets and bootstrap"),
        out: str = typer.Option(..., help="output directory"),
        overwrite: bool = typer.Option(False, help="recompute tables in --out instead of resuming them"),
    ) -> None:
        """Kendall tau, non-robust detection (AUROC/AUPR/FPR@95), eps sweep and Algorithm 1; JSON + Markdown + PNG."""
        from marginkit import pipeline
        from marginkit.report.consistency_report import (
            consistency_summary_line,
            write_consistency_report,
            write_estimate_report,
        )

        radius = eps_value(eps, "--eps")
        try:
            grid = pipeline.eps_grid(eps_grid)
        except ValueError as exc:
            raise typer.BadParameter(f"--eps-grid: {exc}") from exc
        options = pipeline.ConsistencyOptions(grid, tuple(ints(subset_sizes, "--subset-sizes")), repeats, bootstrap,
                                              pseudo_train, pseudo_source, pseudo_epochs, isometry, seed)
        if (model is None) == (table is None):
            raise ValueError("give exactly one of --model (compute the table) or --table (read an existing one)")
        if table is not None:
            if estimate_only > 0:
                raise ValueError("--estimate-only needs --model")
            run = pipeline.consistency_from_table(table, radius, norm=norm, options=options)
        else:
            job = pipeline.MarginJob(model_ref(model, weights, random_init, logits_key, allow_stochastic),
                                     pipeline.DataRef(dataset, parse_classes(classes), split, limit, seed, test_fraction),
                                     norm or "l2", input_margin, attack_options=parse_params(attack_param),
                                     verify_options=parse_params(verify_param))
            pipeline.check_output_folder(out)
            if estimate_only > 0:
                console.print(f"Algorithm 1: forward pass over the split, input margins ({job.norm}) of {estimate_only} samples")
                est = pipeline.subset_estimate(job, radius, estimate_only, seed=seed)
                os.makedirs(out, exist_ok=True)
                paths = write_estimate_report(est, out)
                ra, vf = est.estimates["robust_accuracy"], est.estimates["vulnerable_fraction"]
                typer.echo(f"estimated robust accuracy {100 * ra.estimate:.2f}% (subset {100 * ra.subset_value:.2f}%), "
                           f"vulnerable {100 * vf.estimate:.2f}% from {estimate_only} attacked samples in "
                           f"{est.settings['seconds_total']:.1f} s -> {paths['markdown']}")
                return
            run = pipeline.consistency_from_job(job, out, radius, options=options, overwrite=overwrite)
        paths = write_consistency_report(run, out)
        for step, why in run.skipped.items():
            typer.echo(f"skipped {step}: {why}")
        typer.echo(f"{consistency_summary_line(run)}  -> {paths['markdown']}")
