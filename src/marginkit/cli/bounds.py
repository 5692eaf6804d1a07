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
        eps: str = typer.Option("1.0,1.5,2.0,2.5,3.0", help="comma-separated eps grid (numbers or fractions such as 8/255)"),
        layers: str = typer.Option(None, help="comma-separated layers (default: input, then every layer up to the penultimate)"),
        box: bool = typer.Option(False, help="keep perturbed points in [0,1] (default: unconstrained, as in the paper)"),
        neighbours: int = typer.Option(1, help="ReLU descent on each point's k most promising partners (0: all candidate pairs)"),
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
        from marginkit.pipeline import BoundsJob, run_bounds
        from marginkit.report.bounds_plots import write_bounds_report

        t0 = time.perf_counter()
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
                        box, neighbours or None, max_pairs, solver, not no_ce, seed)
        executor = None
        if workers is not None or ray_address is not None:
            from marginkit.parallel import ExecutorConfig

            executor = ExecutorConfig(workers=workers, ray_address=ray_address)
        run = run_bounds(job, checkpoint_dir=os.path.join(out, "checkpoints") if resume else None, executor=executor)
        write_bounds_report(run, out)
        value = "cross_entropy" if run.cross_entropy else "zero_one"
        console.print(run.table.pivot_table(index=["model", "eps"], columns="layer", values=value, sort=False)
                      .round(4).to_string(), markup=False, highlight=False)
        console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
