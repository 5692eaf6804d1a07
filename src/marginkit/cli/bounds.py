"""``marginkit bounds``: layer-wise lower bounds on the robust loss of classifiers built on each layer
(fixed-feature-extractor paper, section 4). Writes ``bounds.csv`` (model, layer, eps, 0-1 and cross-entropy
bounds), ``layers.csv`` (collision-search statistics per layer), ``settings.json`` and two PNG plots.
"""

from __future__ import annotations

import json
import os
import time

import typer

from ._common import console, friendly_errors, parse_classes, parse_params


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(t) for t in (p.strip() for p in text.split(",")) if t]
    except ValueError as exc:
        raise typer.BadParameter(f"{what}: expected comma-separated numbers, got {text!r}") from exc
    if not vals:
        raise typer.BadParameter(f"{what}: give at least one number")
    return vals


def register(app: typer.Typer) -> None:
    @app.command("bounds")
    @friendly_errors
    def bounds_cmd(
        out: str = typer.Option(..., help="output directory"),
        model: list[str] = typer.Option(None, help="NAME=MODEL_REF (checkpoint, TorchScript or module:factory); repeatable"),
        demo: list[str] = typer.Option(None, help="train/reuse demo MLPs with these training methods, e.g. standard, pgd; repeatable"),
        demo_param: list[str] = typer.Option(None, help="METHOD.key=value parameters of a demo method, e.g. pgd.eps=2.0"),
        hidden: int = typer.Option(64, help="demo MLP width"),
        depth: int = typer.Option(3, help="demo MLP hidden layers"),
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        classes: str = typer.Option("3,7", help="classes to keep, e.g. 3,7"),
        per_class: int = typer.Option(200, help="training points per class (the graph's vertices)"),
        norm: str = typer.Option("l2", help="l2 | linf | l1"),
        eps: str = typer.Option("1.0,1.5,2.0,2.5,3.0", help="comma-separated eps grid"),
        layers: str = typer.Option(None, help="comma-separated layers (default: input, then every layer up to the penultimate)"),
        box: bool = typer.Option(False, help="keep perturbed points in [0,1] (default: unconstrained, as in the paper)"),
        neighbours: int = typer.Option(1, help="ReLU descent on each point's k most promising partners (0: all candidate pairs)"),
        max_pairs: int = typer.Option(None, help="cap on descents per layer"),
        solver: str = typer.Option("CLARABEL", help="cvxpy solver for the cone programs"),
        no_ce: bool = typer.Option(False, help="skip the cross-entropy bound (0-1 only)"),
        seed: int = typer.Option(0, help="seed of the point subset and the demo training"),
        resume: bool = typer.Option(True, help="reuse layers finished by an interrupted run (saved in OUT/checkpoints)"),
    ) -> None:
        """Lower bounds on the robust 0-1 / cross-entropy loss of ANY classifier trained on each layer."""
        from marginkit.bounds import balanced_subset, compare_layerwise
        from marginkit.data import load_dataset
        from marginkit.report.bounds_plots import plot_layerwise_bounds
        from marginkit.results import atomic_write_text, library_versions

        t0 = time.perf_counter()
        grid = _floats(eps, "eps")
        cls = parse_classes(classes)
        ds = load_dataset(dataset, classes=cls, seed=seed)
        models, refs = {}, {}
        for item in model or []:
            name, sep, ref = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"--model expects NAME=REF, got {item!r}")
            from marginkit.models.checkpoint import load_model

            models[name], _ = load_model(ref)
            refs[name] = ref
        params = parse_params(demo_param)
        for method in demo or []:
            from marginkit.training import demo_model

            mp = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(method + ".")}
            mdl, ck = demo_model("mlp", dataset=dataset, classes=cls, method=method, method_params=mp or None,
                                 seed=seed, hidden=hidden, depth=depth)
            models[method] = mdl
            refs[method] = {"checkpoint": ck.path, "test_accuracy": ck.metadata.get("test_accuracy"),
                            "method_params": mp}
        if not models:
            raise ValueError("give at least one --model NAME=REF or --demo METHOD")
        for m in models.values():
            m.eval()
        x, y = ds.split("train")
        idx = balanced_subset(y, per_class, seed)
        console.print(f"{len(models)} model(s), {len(idx)} points, eps grid {grid}")
        res = compare_layerwise(models, x[idx], y[idx], norm, grid,
                                layers=[s.strip() for s in layers.split(",")] if layers else None,
                                bounds=(0.0, 1.0) if box else None, neighbours=neighbours or None,
                                max_pairs=max_pairs, cross_entropy=not no_ce, solver=solver, progress=True,
                                checkpoint_dir=os.path.join(out, "checkpoints") if resume else None)
        os.makedirs(out, exist_ok=True)
        import pandas as pd

        table = res.to_frame()
        atomic_write_text(os.path.join(out, "bounds.csv"), table.to_csv(index=False))
        stats = pd.DataFrame(res.layers)
        atomic_write_text(os.path.join(out, "layers.csv"), stats.drop(columns=["statuses"], errors="ignore").to_csv(index=False))
        settings = {**res.settings, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(), "classes": cls,
                    "seed": seed, "models": refs, "seconds": time.perf_counter() - t0, "versions": library_versions(),
                    "layer_stats": res.layers}
        atomic_write_text(os.path.join(out, "settings.json"), json.dumps(settings, indent=2, default=str))
        plot_layerwise_bounds(table, os.path.join(out, "bounds_cross_entropy.png"), "cross_entropy") if not no_ce else None
        plot_layerwise_bounds(table, os.path.join(out, "bounds_zero_one.png"), "zero_one")
        console.print(table.pivot_table(index=["model", "eps"], columns="layer", values="cross_entropy" if not no_ce else "zero_one",
                                        sort=False).round(4).to_string())
        console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
