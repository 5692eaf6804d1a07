"""``marginkit margins``: the per-sample margin table of a model on a dataset."""

from __future__ import annotations

import os

import typer

from ._common import console, friendly_errors, parse_classes


def compute_table(model_ref: str, weights: str | None, dataset: str, classes: str | None, split: str, norm: str,
                  input_margin: str, limit: int | None, seed: int, out: str, overwrite: bool,
                  attack_options: dict | None = None):
    """Load model and data, then build (or resume) the results table in ``out``; returns (df, settings)."""
    from marginkit.data import load_dataset
    from marginkit.margins import margin_table
    from marginkit.models.checkpoint import load_model, model_fingerprint
    from marginkit.norms import as_norm
    from marginkit.results import ResultsStore

    model, info = load_model(model_ref, weights)
    ds = load_dataset(dataset, classes=parse_classes(classes), seed=seed)
    x, y = ds.split(split)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be positive, got {limit}")
        x, y = x[:limit], y[:limit]
    settings = {"model": model_ref, "model_fingerprint": model_fingerprint(model), "dataset": ds.name,
                "dataset_fingerprint": ds.fingerprint(), "split": split, "samples": int(x.shape[0]),
                "norm": str(as_norm(norm)), "input_margin": input_margin, "seed": seed,
                "attack_options": attack_options or {}}
    store = ResultsStore(out, settings, resume=not overwrite)
    if store.done:
        console.print(f"resuming: {len(store.done)} of {x.shape[0]} samples already in {out}")
    df = margin_table(model, x, y, norm, input_margin=input_margin, bounds=ds.bounds, store=store, progress=True,
                      attack_options=attack_options)
    return df, settings


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
        input_margin: str = typer.Option("auto", help="auto | exact | attack | none"),
        limit: int = typer.Option(None, help="only the first N samples of the split"),
        seed: int = typer.Option(0, help="seed of the split (and of attacks)"),
        out: str = typer.Option(..., help="output directory for results.parquet, results.json and the summary"),
        overwrite: bool = typer.Option(False, help="discard a previous run in --out instead of resuming it"),
        budget: int = typer.Option(None, help="input-margin attack: forward + backward passes allowed per sample "
                                               "(samples out of budget keep their best point or fail with inf)"),
    ) -> None:
        """Compute logit, feature and input margins per sample; resumes an interrupted run in --out."""
        from marginkit.report import write_summary

        attack_options = None if budget is None else {"budget": budget}
        df, settings = compute_table(model, weights, dataset, classes, split, norm, input_margin, limit, seed, out,
                                     overwrite, attack_options=attack_options)
        paths = write_summary(df, out, f"Margins of {os.path.basename(model)} on {settings['dataset']}", settings)
        typer.echo(f"{len(df)} samples -> {os.path.join(out, 'results.parquet')}; summary {paths['markdown']}")
