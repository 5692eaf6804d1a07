"""``marginkit run``: the main job. Train (or reuse) a demo model, write its per-sample margin table and
a human-readable report: margin statistics, histograms, robust accuracy read from the input margins and
margin consistency."""

from __future__ import annotations

import os
import shutil

import typer

from ._common import TEST_FRACTION_HELP, console, eps_value, friendly_errors
from .margins import ESTIMATOR_HELP


RUN_HELP = ("Main job on the embedded data: demo model -> per-sample margins -> summary.md + histogram.\n\n"
            "The default job takes about 30 s on 2 idle cores, several times that on a busy machine (bench/quickstart.md). The trained model is cached in runs/models/ "
            "(its name carries a hash of the settings) and copied to OUT/model.pt, for "
            "`marginkit margins --model OUT/model.pt`. Training prints its progress; the margin step states its "
            "expected time after the first chunk.")


def register(app: typer.Typer) -> None:
    @app.command("run", help=RUN_HELP)
    @friendly_errors
    def run_cmd(
        dataset: str = typer.Option("mnist5k", help="built-in dataset or file spec (an npz with x/y alone is used "
                                    "whole, train = test, unless --test-fraction splits it)"),
        test_fraction: float = typer.Option(None, "--test-fraction", help=TEST_FRACTION_HELP),
        arch: str = typer.Option("mlp", help="linear | mlp | cnn"),
        norm: str = typer.Option("l2", help="l1 | l2 | linf"),
        input_margin: str = typer.Option("auto", help=ESTIMATOR_HELP),
        limit: int = typer.Option(None, help="only the first N test samples"),
        seed: int = typer.Option(0, help="seed for split, training and attacks"),
        out: str = typer.Option(os.path.join("runs", "quickstart"), help="output directory"),
        overwrite: bool = typer.Option(False, help="discard a previous run in --out instead of resuming it"),
        eps: str = typer.Option(None, help="threat radius for robust accuracy and detection, e.g. 1.0 or 8/255 "
                                           "(default: l2 1.0, linf 0.05, l1 5.0)"),
        certify: int = typer.Option(50, "--certify", help="bracket the first N samples with certified lower bounds "
                                    "(CROWN; 0: off). Skipped for affine models (their margins are exact) and for "
                                    "CNNs (minutes per sample on a CPU)"),
        workers: int = typer.Option(None, "--workers", help="spread the samples over N local Ray workers "
                                    "(pip install 'marginkit[ray]')"),
        ray_address: str = typer.Option(None, "--ray-address", help="run the shards on an existing Ray cluster"),
    ) -> None:
        """Main job on the embedded data: demo model -> per-sample margins -> summary.md + histogram."""
        from marginkit.margins.estimators import check_estimator
        from marginkit.norms import as_norm
        from marginkit.pipeline import DataRef, MarginJob, ModelRef, check_output_folder, load_data_ref, run_margins
        from marginkit.report.quickstart import write_quickstart_report
        from marginkit.training import demo_model

        # Bad options fail before the demo model is trained.
        radius = None if eps is None else eps_value(eps, "--eps")
        data, norm, estimator = (DataRef(dataset, None, "test", limit, seed, test_fraction), as_norm(norm),
                                 check_estimator(input_margin))
        check_output_folder(out)
        ds = load_data_ref(data)[0]
        if ds.meta.get("split") == "whole":
            console.print(f"note: {dataset} is not split, so the model is evaluated on its training data; "
                          "give --test-fraction F to hold out a test split", markup=False, highlight=False)
        _, info = demo_model(arch, dataset, seed=seed, progress=True, test_fraction=test_fraction)
        console.print(f"model {info.path} (test accuracy {info.metadata.get('test_accuracy', float('nan')):.4f})",
                      markup=False, highlight=False)
        table_dir = os.path.join(out, "table")
        executor = None
        if workers is not None or ray_address is not None:
            from marginkit.parallel import ExecutorConfig

            executor = ExecutorConfig(workers=workers, ray_address=ray_address)
        df, settings = run_margins(MarginJob(ModelRef(info.path), data, norm, estimator), table_dir, overwrite=overwrite,
                                   executor=executor)
        bracket = None
        if certify < 0:
            raise ValueError(f"--certify must be >= 0, got {certify}")
        if certify and (df["status"] == "upper-only").any():
            from marginkit.pipeline import certify_subset, load_model_ref

            model, _ = load_model_ref(ModelRef(info.path))
            _, x, _ = load_data_ref(data)
            console.print(f"certifying the first {certify} samples (CROWN) ...", markup=False, highlight=False)
            bracket = certify_subset(model, x, df, certify, method="crown", bounds=ds.bounds)
        model_copy = os.path.join(out, "model.pt")  # a stable name: the cached file's name carries a hash
        shutil.copyfile(info.path, model_copy)
        settings["train"] = info.metadata.get("train")
        paths = write_quickstart_report(df, out, f"marginkit quickstart: {arch} on {dataset}", settings, radius, seed,
                                        bracket=bracket)
        with open(paths["markdown"]) as fh:
            console.print(fh.read().split("## Settings")[0], markup=False, highlight=False)
        typer.echo(f"model {model_copy}; table {os.path.join(table_dir, 'results.parquet')}; report {paths['markdown']}; "
                   f"histogram {paths['histogram']}")
