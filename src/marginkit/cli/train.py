"""``marginkit train``: train a demo model and save a checkpoint that reloads by path alone."""

from __future__ import annotations

import os
from dataclasses import asdict

import typer

from ._common import console, friendly_errors, parse_classes, parse_params


def register(app: typer.Typer) -> None:
    @app.command("train")
    @friendly_errors
    def train_cmd(
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        arch: str = typer.Option("mlp", help="linear | mlp | cnn"),
        classes: str = typer.Option(None, help="keep only these classes, e.g. 3,7"),
        method: str = typer.Option("standard", help="training method (see `marginkit train --help-methods`)"),
        method_param: list[str] = typer.Option(None, "--method-param", help="method hyperparameter key=value (repeatable)"),
        epochs: int = typer.Option(None, help="epochs (default: the architecture's preset)"),
        lr: float = typer.Option(None, help="learning rate (default: preset)"),
        batch_size: int = typer.Option(128, help="mini-batch size"),
        hidden: int = typer.Option(None, help="hidden width (default: preset)"),
        depth: int = typer.Option(None, help="hidden layers of an mlp (default: preset)"),
        seed: int = typer.Option(0, help="seed for the split, initialisation and batch order"),
        out: str = typer.Option(None, help="checkpoint path (default: runs/models/<dataset>-<arch>-<method>.pt)"),
        checkpoint_dir: str = typer.Option(None, help="save the training state after every epoch here; rerunning "
                                          "the same command resumes from it"),
        help_methods: bool = typer.Option(False, "--help-methods", help="list training methods and presets and exit"),
        preset_name: str = typer.Option(None, "--preset", help="named preset (method, hyperparameters, architecture), "
                                        "e.g. paper-mnist-mlp-amr; --epochs/--lr/--hidden/--depth/--method-param override it"),
    ) -> None:
        """Train a demo model with a seeded CPU-fast trainer and write a checkpoint."""
        from marginkit.data import load_dataset
        from marginkit.models import ModelSpec, build_model
        from marginkit.models.checkpoint import save_checkpoint
        from marginkit.training import DEMO_PRESETS, TrainConfig, available_methods, get_method, train_model
        from marginkit.training.presets import PRESETS, get_preset

        if help_methods:
            typer.echo("\n".join(available_methods()))
            typer.echo("presets: " + ", ".join(sorted(PRESETS)))
            raise typer.Exit()
        named = get_preset(preset_name) if preset_name else None
        if named is not None:
            arch, method = named.arch, named.method
        if arch not in DEMO_PRESETS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(DEMO_PRESETS)}")
        preset = DEMO_PRESETS[arch] if named is None else {"spec": named.spec, "train": named.train}
        ds = load_dataset(dataset, classes=parse_classes(classes), seed=seed)
        spec_kw = dict(preset["spec"])
        if hidden is not None:
            spec_kw["hidden"] = hidden
        if depth is not None:
            spec_kw["depth"] = depth
        spec = ModelSpec(arch, ds.input_shape, ds.num_classes, **spec_kw)
        train_kw = {**preset["train"], "batch_size": batch_size, "seed": seed}
        if epochs is not None:
            train_kw["epochs"] = epochs
        if lr is not None:
            train_kw["lr"] = lr
        config = TrainConfig(**train_kw)
        params = parse_params(method_param)
        if named is not None:
            params = {**named.method_params, **params}
        meth = get_method(method, **params)
        model = build_model(spec, seed=seed)
        console.print(f"training {arch} on {ds.name} ({ds.x_train.shape[0]} train / {ds.x_test.shape[0]} test) with {method}")
        result = train_model(model, ds, config, meth, progress=True, checkpoint_dir=checkpoint_dir)
        path = out or os.path.join("runs", "models", f"{ds.name}-{arch}-{method}.pt")
        save_checkpoint(path, result.model, spec, {
            "dataset": ds.name, "dataset_spec": dataset, "classes": ds.meta.get("classes"), "seed": seed,
            "dataset_fingerprint": ds.fingerprint(), "train": asdict(config), "method": method, "method_params": params, "preset": preset_name,
            "train_accuracy": result.train_accuracy, "test_accuracy": result.test_accuracy,
            "train_seconds": result.seconds, "history": result.history})
        typer.echo(f"test accuracy {result.test_accuracy:.4f} (train {result.train_accuracy:.4f}) "
                   f"in {result.seconds:.1f} s -> {path}")
