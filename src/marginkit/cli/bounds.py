"""``marginkit bounds``: layer-wise lower bounds on the robust loss of classifiers built on each layer
(fixed-feature-extractor paper, section 4). Writes ``bounds.csv`` (model, layer, eps, 0-1 and cross-entropy
bounds), ``layers.csv`` (collision-search statistics per layer), ``settings.json`` and two PNG plots.
"""

from __future__ import annotations

import os
import time

import typer

from ._common import console, eps_list, friendly_errors, parse_classes, parse_params


def register(app: typer.Typer) -> None:
    @app.command("bounds")
    @friendly_errors
    def bounds_cmd(
        out: str = typer.Option(None, help="output directory (required unless --list-presets)"),
        preset: str = typer.Option(None, help="run one of the paper's experiments (see --list-presets): trains its "
                                   "extractors (cached in runs/models/bounds-presets) and searches every candidate pair"),
        quick: bool = typer.Option(False, help="with --preset: the quick version (fewer points per class)"),
        list_presets: bool = typer.Option(False, "--list-presets", help="list the paper's experiments and exit"),
        settle: bool = typer.Option(True, help="skip pairs that a certified lower bound shows cannot change any "
                                    "graph on the eps grid (--no-settle searches them too)"),
        model: list[str] = typer.Option(None, help="NAME=MODEL_REF (checkpoint, TorchScript or module:factory); repeatable"),
        demo: list[str] = typer.Option(None, help="train/reuse demo MLPs with these training methods, e.g. standard, pgd; repeatable"),
        demo_param: list[str] = typer.Option(None, help="METHOD.key=value parameters of a demo method, e.g. pgd.eps=2.0"),
        hidden: int = typer.Option(64, help="demo MLP width"),
        depth: int = typer.Option(3, help="demo MLP hidden layers"),
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        classes: str = typer.Option("3,7", help="classes to keep, e.g. 3,7"),
        per_class: int = typer.Option(200, help="training points per class (the graph's vertices)"),
        norm: str = typer.Option("l2", help="l2 | linf | l1"),
        eps: str = typer.Option("1.0,1.5,2.0,2.5,3.0", help="comma-separated eps grid (numbers or fractions such as 8/255)"),
        layers: str = typer.Option(None, help="comma-separated layers (default: input, then every layer up to the penultimate)"),
        box: bool = typer.Option(False, help="keep perturbed points in [0,1] (default: unconstrained, as in the paper)"),
        neighbours: int = typer.Option(None, help="ReLU descent on each point's k most promising partners (0: all candidate "
                                       "pairs; default 1, with --preset 0)"),
        max_pairs: int = typer.Option(None, help="cap on descents per layer"),
        solver: str = typer.Option("CLARABEL", help="cvxpy solver for the cone programs"),
        no_ce: bool = typer.Option(False, help="skip the cross-entropy bound (0-1 only)"),
        seed: int = typer.Option(0, help="seed of the point subset and the demo training"),
        resume: bool = typer.Option(True, help="reuse layers finished by an interrupted run (saved in OUT/checkpoints)"),
        workers: int = typer.Option(None, "--workers", help="spread the pair searches over N local Ray workers "
                                    "(pip install 'marginkit[ray]')"),
        ray_address: str = typer.Option(None, "--ray-address", help="run the pair searches on an existing Ray cluster"),
    ) -> None:
        """Lower bounds on the robust 0-1 / cross-entropy loss of ANY classifier trained on each layer."""
        from marginkit.report.bounds_plots import write_bounds_report

        if list_presets:
            _print_presets()
            return
        if not out:
            raise typer.BadParameter("give --out DIR (or --list-presets)")
        t0 = time.perf_counter()
        executor = None
        if workers is not None or ray_address is not None:
            from marginkit.parallel import ExecutorConfig

            executor = ExecutorConfig(workers=workers, ray_address=ray_address)
        if preset is not None:
            if model or demo:
                raise typer.BadParameter("--preset trains its own models: drop --model / --demo")
            from marginkit.pipeline import run_bounds_preset

            run = run_bounds_preset(preset, out, quick=quick, settle=settle, executor=executor, progress=True, seed=seed,
                                    neighbours=neighbours or None, resume=resume,
                                    layers=tuple(s.strip() for s in layers.split(",")) if layers else None)
            write_bounds_report(run, out)
            _print_table(run)
            accs = ", ".join(f"{k} {v['test_accuracy']:.4f}" for k, v in run.settings["models"].items())
            console.print(f"test accuracy: {accs}", markup=False, highlight=False)
            console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
            return
        if quick:
            raise typer.BadParameter("--quick goes with --preset")
        from marginkit.pipeline import BoundsJob, run_bounds

        grid = eps_list(eps, "--eps")
        pairs = []
        for item in model or []:
            name, sep, ref = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"--model expects NAME=REF, got {item!r}")
            pairs.append((name, ref))
        params = parse_params(demo_param)
        demo_params = {m: {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(m + ".")} for m in demo or []}
        job = BoundsJob(tuple(pairs), tuple(demo or ()), demo_params, hidden, depth, dataset, parse_classes(classes),
                        per_class, norm, tuple(grid), tuple(s.strip() for s in layers.split(",")) if layers else None,
                        box, 1 if neighbours is None else (neighbours or None), max_pairs, solver, not no_ce, seed,
                        settle)
        run = run_bounds(job, checkpoint_dir=os.path.join(out, "checkpoints") if resume else None, executor=executor)
        write_bounds_report(run, out)
        _print_table(run)
        console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


def _print_table(run) -> None:
    value = "cross_entropy" if run.cross_entropy else "zero_one"
    console.print(run.table.pivot_table(index=["model", "eps"], columns="layer", values=value, sort=False)
                  .round(4).to_string(), markup=False, highlight=False)


def _print_presets() -> None:
    from marginkit.bounds.presets import DATA_NOTE, PRESETS

    for p in PRESETS.values():
        models = ", ".join(r.label for r in p.models)
        console.print(f"{p.name}: {p.figure}; {p.dataset} classes {','.join(map(str, p.classes))}, {p.per_class} points "
                      f"per class (--quick: {p.quick_per_class}); models: {models}; layers: {', '.join(p.layers)}",
                      markup=False, highlight=False)
    console.print(DATA_NOTE, markup=False, highlight=False)
