"""``marginkit train``: train a demo model and save a checkpoint that reloads by path alone."""

from __future__ import annotations

import typer

from ._common import TEST_FRACTION_HELP, friendly_errors, parse_classes, parse_params


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
        test_fraction: float = typer.Option(None, "--test-fraction", help=TEST_FRACTION_HELP),
        out: str = typer.Option(None, help="checkpoint path (default: runs/models/<dataset>-<arch>-<method>.pt)"),
        checkpoint_dir: str = typer.Option(None, help="save the training state after every epoch here; rerunning "
                                          "the same command resumes from it"),
        help_methods: bool = typer.Option(False, "--help-methods", help="list training methods and presets and exit"),
        preset_name: str = typer.Option(None, "--preset", help="named preset (method, hyperparameters, architecture), "
                                        "e.g. paper-mnist-mlp-amr; --epochs/--lr/--hidden/--depth/--method-param override it"),
    ) -> None:
        """Train a demo model with a seeded CPU-fast trainer and write a checkpoint."""
        from marginkit.pipeline import TrainJob, train_checkpoint
        from marginkit.training import available_methods
        from marginkit.training.presets import PRESETS

        if help_methods:
            typer.echo("\n".join(available_methods()))
            typer.echo("presets: " + ", ".join(sorted(PRESETS)))
            raise typer.Exit()
        job = TrainJob(dataset, arch, parse_classes(classes), method, parse_params(method_param), epochs, lr, batch_size,
                       hidden, depth, seed, preset_name, test_fraction)
        result, path = train_checkpoint(job, out, checkpoint_dir=checkpoint_dir)
        typer.echo(f"test accuracy {result.test_accuracy:.4f} (train {result.train_accuracy:.4f}) "
                   f"in {result.seconds:.1f} s -> {path}")
