"""``marginkit dynamics``: how the minimum and average margin evolve during training (Wu & Yu, Figs. 1, 2, 6, 7)."""

from __future__ import annotations

import json
import os

import typer

from ._common import console, friendly_errors, parse_classes


def register(app: typer.Typer) -> None:
    @app.command("dynamics")
    @friendly_errors
    def dynamics_cmd(
        arch: str = typer.Option("logreg", help="logreg (section 3: binary logistic regression by GD vs the SVM) "
                                 "or a preset architecture: mlp | cnn"),
        preset: str = typer.Option(None, help="training preset for mlp/cnn (default: cpu-mnist-<arch>-std); "
                                   "see `marginkit train --help-methods`"),
        dataset: str = typer.Option("mnist5k", help="dataset name"),
        classes: str = typer.Option("0,1", help="logreg only: the two classes"),
        epochs: int = typer.Option(None, help="epochs (logreg default 20000 GD steps; mlp/cnn: the preset's)"),
        every: int = typer.Option(1, help="mlp/cnn: record margins every k epochs (epoch 0 included)"),
        subset: int = typer.Option(500, help="mlp/cnn: size of the fixed train and test subsets"),
        estimator: str = typer.Option("paper", help="paper (exact for affine models, else lipschitz) | lipschitz (Theorem 3) | "
                                      "exact (affine models) | attack (engine upper bound) | auto (exact for affine, else attack)"),
        norm: str = typer.Option("l2", help="l1 | l2 | linf"),
        radius: float = typer.Option(5.0, help="Theorem 3 ball radius r"),
        samples: int = typer.Option(64, help="points sampled per input to estimate the local Lipschitz constants"),
        seed: int = typer.Option(0, help="seed for subsets, initialisation, batch order and sampling"),
        out: str = typer.Option(None, help="output directory (default runs/dynamics/<arch or preset>)"),
    ) -> None:
        """Track min / average margin over training and plot curves, histograms (and, for logreg, the
        adversarial examples of eq. 7 and the hard-margin SVM reference)."""
        from marginkit.report.dynamics_plots import plot_linear_dynamics, plot_tracker
        from marginkit.results import library_versions
        from marginkit.results.jsonio import write_json

        if arch == "logreg":
            from marginkit.training.dynamics import linear_margin_dynamics

            out_dir = out or os.path.join("runs", "dynamics", "logreg")
            res = linear_margin_dynamics(dataset, parse_classes(classes) or (0, 1), epochs=epochs or 20000,
                                         seed=seed, progress=True)
            plots = plot_linear_dynamics(res, out_dir)
            write_json(os.path.join(out_dir, "dynamics.json"),
                       {**json.loads(res.to_json()), "versions": library_versions()}, indent=None)
            df = res.frame()
            cols = ["epoch", "train_error", "train_min_margin", "train_avg_margin", "test_min_margin", "test_avg_margin"]
            typer.echo(df[cols].iloc[:: max(1, len(df) // 10)].to_string(index=False))
            console.print(f"hard-margin SVM: train min margin {res.svm['train_min_margin']:.4f}, "
                          f"train avg margin {res.svm['train_avg_margin']:.4f}; cosine(w_GD, w_SVM) = "
                          f"{res.svm['cosine_to_final_lr']:.4f}")
        else:
            from marginkit.pipeline import track_margins
            from marginkit.training.presets import get_preset

            name = preset or f"cpu-mnist-{arch}-std"
            if get_preset(name).arch != arch:
                raise ValueError(f"preset {name!r} trains a {get_preset(name).arch}, not a {arch}")
            out_dir = out or os.path.join("runs", "dynamics", name)
            run = track_margins(name, dataset, subset=subset, every=every, estimator=estimator, norm=norm, radius=radius,
                                samples=samples, seed=seed, epochs=epochs, path=os.path.join(out_dir, "dynamics.json"))
            tracker = run.tracker
            used = sorted({r["estimator"] for r in tracker.history})
            plots = plot_tracker(tracker.history, out_dir, title=f"{name} ({', '.join(used)} margins, {norm})")
            write_json(os.path.join(out_dir, "dynamics.json"),
                       {"settings": run.settings, "history": tracker.history, "train_history": run.result.history,
                        "versions": library_versions()}, indent=None)
            typer.echo(tracker.frame()[["epoch", "split", "accuracy", "min_margin", "avg_margin",
                                           "median_margin"]].to_string(index=False))
        for k, v in plots.items():
            typer.echo(f"{k}: {v}")
