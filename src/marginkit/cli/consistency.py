"""``marginkit consistency``: margin consistency of a model (seed paper Table 1, Algorithm 1, Figs. 2/9).

Takes a model and a dataset (the per-sample table with input margins is computed, resumably, in
``OUT/table``) or an existing per-sample table, and writes ``metrics.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import json
import os
import time

import typer

from ._common import console, friendly_errors, parse_classes, parse_params


def _floats(text: str | None, what: str) -> list[float] | None:
    if not text:
        return None
    vals = []
    try:
        for t in (p.strip() for p in text.split(",")):
            if t:
                num, sep, den = t.partition("/")
                vals.append(float(num) / float(den) if sep else float(num))
    except (ValueError, ZeroDivisionError) as exc:
        raise typer.BadParameter(f"{what}: expected comma-separated numbers such as 0.1,0.2 or 8/255, got {text!r}") from exc
    return vals


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in (p.strip() for p in text.split(",")) if t]
    except ValueError as exc:
        raise typer.BadParameter(f"{what}: expected comma-separated integers, got {text!r}") from exc


def _estimate_only(model_ref: str, weights: str | None, dataset: str, classes: str | None, split: str, limit: int | None,
                   norm: str, eps: float, n: int, seed: int, attack_options: dict, out: str) -> None:
    """Algorithm 1 as deployed: one forward pass over the split, attacks on ``n`` samples only."""
    from marginkit.consistency import subset_estimates
    from marginkit.data import load_dataset
    from marginkit.models.checkpoint import load_model, model_fingerprint
    from marginkit.results import atomic_write_text, library_versions

    mdl, _ = load_model(model_ref, weights)
    ds = load_dataset(dataset, classes=parse_classes(classes), seed=seed)
    x, y = ds.split(split)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    console.print(f"Algorithm 1: forward pass on {x.shape[0]} samples, input margins ({norm}) of {n} of them")
    t0 = time.perf_counter()
    res = subset_estimates(mdl, x, y, norm, eps, n=n, seed=seed,
                           margin_kwargs={"bounds": ds.bounds, "progress": True, **attack_options})
    total = time.perf_counter() - t0
    payload = {"model": model_ref, "model_fingerprint": model_fingerprint(mdl), "dataset": ds.name, "split": split,
               "samples": int(x.shape[0]), "norm": norm, "eps": eps, "n": n, "seed": seed, "seconds_total": round(total, 2),
               "estimates": {k: r.to_dict(indices=True) for k, r in res.items()}, "versions": library_versions()}
    atomic_write_text(os.path.join(out, "estimate.json"), json.dumps(payload, indent=2, default=str))
    ra, vf = res["robust_accuracy"], res["vulnerable_fraction"]
    lines = [f"# Algorithm 1 estimate: {os.path.basename(model_ref)} ({norm}, eps={eps:.6g})", "",
             f"Input margins of {n} random samples (seed {seed}) out of {x.shape[0]}; threshold on the logit margin tuned "
             f"over the TPR grid; {ra.seconds_subset_margins:.1f} s of attacks, {total:.1f} s in total.", "",
             "| quantity | subset value | estimate for all samples | TPR level alpha | logit-margin threshold |", "|---|---|---|---|---|",
             f"| robust accuracy | {100 * ra.subset_value:.2f} | {100 * ra.estimate:.2f} | {ra.alpha} | {ra.threshold:.4g} |",
             f"| vulnerable fraction | {100 * vf.subset_value:.2f} | {100 * vf.estimate:.2f} | {vf.alpha} | {vf.threshold:.4g} |", ""]
    lines += [f"Note: {m}" for m in {ra.message, vf.message} if m]
    atomic_write_text(os.path.join(out, "estimate.md"), "\n".join(lines) + "\n")
    typer.echo(f"estimated robust accuracy {100 * ra.estimate:.2f}% (subset {100 * ra.subset_value:.2f}%), vulnerable "
               f"{100 * vf.estimate:.2f}% from {n} attacked samples in {total:.1f} s -> {os.path.join(out, 'estimate.md')}")


def register(app: typer.Typer) -> None:
    @app.command("consistency")
    @friendly_errors
    def consistency_cmd(
        eps: str = typer.Option(..., help="robustness threshold eps (a number or a fraction such as 8/255)"),
        model: str = typer.Option(None, help="checkpoint, TorchScript file or package.module:factory"),
        weights: str = typer.Option(None, help="state dict for a module:factory model"),
        table: str = typer.Option(None, help="existing per-sample results directory (instead of computing one)"),
        dataset: str = typer.Option("mnist5k", help="dataset name or file spec"),
        classes: str = typer.Option(None, help="keep only these classes, e.g. 3,7 (must match the model)"),
        split: str = typer.Option("test", help="split to evaluate: train | test"),
        limit: int = typer.Option(None, help="only the first N samples of the split"),
        norm: str = typer.Option(None, help="l1 | l2 | linf (default: l2 with --model; the table's norm with --table)"),
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
        seed: int = typer.Option(0, help="seed of the split, attacks, subsets and bootstrap"),
        out: str = typer.Option(..., help="output directory"),
        overwrite: bool = typer.Option(False, help="recompute tables in --out instead of resuming them"),
    ) -> None:
        """Kendall tau, non-robust detection (AUROC/AUPR/FPR@95), eps sweep and Algorithm 1; JSON + Markdown + PNG."""
        import torch

        from marginkit.consistency import evaluate_consistency
        from marginkit.norms import as_norm
        from marginkit.report.consistency_plots import write_consistency_plots
        from marginkit.results import atomic_write_text, library_versions, read_results

        from .margins import compute_table

        eps_vals = _floats(eps, "--eps")
        if not eps_vals or len(eps_vals) != 1:
            raise typer.BadParameter("--eps takes one value")
        eps_v = eps_vals[0]
        if eps_grid and eps_grid.strip().lower() == "paper":
            from marginkit.consistency import PAPER_LINF_EPS

            grid = list(PAPER_LINF_EPS)
        else:
            grid = _floats(eps_grid, "--eps-grid")
        sizes = _ints(subset_sizes, "--subset-sizes")
        attack_options = parse_params(attack_param)
        if (model is None) == (table is None):
            raise ValueError("give exactly one of --model (compute the table) or --table (read an existing one)")
        os.makedirs(out, exist_ok=True)
        t_start = time.perf_counter()
        if estimate_only > 0:
            if model is None:
                raise ValueError("--estimate-only needs --model")
            _estimate_only(model, weights, dataset, classes, split, limit, as_norm(norm or "l2").value, eps_v,
                           estimate_only, seed, attack_options, out)
            return
        mdl = None
        settings: dict = {}
        if table is not None:
            df, meta = read_results(table)
            settings = {"table": os.path.abspath(table), "table_settings": meta.get("settings", {})}
            model_ref = settings["table_settings"].get("model")
        else:
            from marginkit.models.checkpoint import load_model

            table_dir = os.path.join(out, "table")
            df, settings = compute_table(model, weights, dataset, classes, split, as_norm(norm or "l2").value, "auto", limit, seed,
                                         table_dir, overwrite, attack_options)
            settings = {"table": os.path.abspath(table_dir), "table_settings": settings}
            model_ref = model
            mdl, _ = load_model(model, weights)
        tnorm = str(df["norm"].iloc[0]) if len(df) and "norm" in df else as_norm(norm or "l2").value
        if norm is not None and tnorm != as_norm(norm).value:
            raise ValueError(f"--norm {norm} does not match the table, whose input margins are in {tnorm}")
        if mdl is None and pseudo_train > 0:
            raise ValueError("--pseudo-train needs --model (the pseudo-margin reads the model's representation)")
        if mdl is None and isometry > 0:
            raise ValueError("--isometry needs --model")
        evaluate_options = {"eps_grid": grid, "subset_sizes": sizes, "repeats": repeats, "n_resamples": bootstrap}
        iso = None
        if mdl is None:
            report = evaluate_consistency(df, eps_v, norm=tnorm, seed=seed, **evaluate_options)
        else:
            from marginkit.consistency import PseudoMarginConfig, model_consistency
            from marginkit.data import load_dataset

            x_eval = train = None
            bounds = (0.0, 1.0)
            if pseudo_train > 0 or isometry > 0:
                ds = load_dataset(dataset, classes=parse_classes(classes), seed=seed)
                bounds = ds.bounds
                x_split, _ = ds.split(split)
                x_eval = x_split[torch.as_tensor(df["index"].to_numpy(dtype="int64", copy=True))]
            if pseudo_train > 0:
                tr_dir = os.path.join(out, "train_table")
                console.print(f"pseudo-margin: input margins of {pseudo_train} training samples -> {tr_dir}")
                tr_df, _ = compute_table(model, weights, dataset, classes, "train", tnorm, "auto", pseudo_train, seed,
                                         tr_dir, overwrite, attack_options)
                x_train, _ = ds.split("train")
                train = (x_train[torch.as_tensor(tr_df["index"].to_numpy(dtype="int64", copy=True))],
                         tr_df["input_margin_upper"].to_numpy(dtype="float64"))
            if isometry > 0:
                console.print(f"local isometry: attacking {min(isometry, len(df))} samples again to keep their adversarial examples")
            study = model_consistency(mdl, x_eval, df, eps_v, norm=tnorm, train=train,
                                      pseudo_config=PseudoMarginConfig(source=pseudo_source, epochs=pseudo_epochs, seed=seed),
                                      isometry=isometry, bounds=bounds,
                                      attack_options=attack_options, seed=seed, progress=True, **evaluate_options)
            report, iso = study.report, study.isometry
            if study.pseudo_margin is not None:
                study.pseudo_margin.save(os.path.join(out, "pseudo_margin.pt"))
                report.extras["pseudo_margin"]["file"] = "pseudo_margin.pt"
        report.extras["plots"] = write_consistency_plots(report, out, iso)
        report.settings.update({"source": settings, "model": model_ref, "versions": library_versions(),
                                "seconds_total": round(time.perf_counter() - t_start, 2)})
        atomic_write_text(os.path.join(out, "metrics.json"), json.dumps(report.to_dict(), indent=2))
        title = f"Margin consistency of {os.path.basename(str(model_ref)) if model_ref else 'table'} ({tnorm}, eps={eps_v:.6g})"
        atomic_write_text(os.path.join(out, "report.md"), report.to_markdown(title))
        row = report.table1_row("logit_margin")
        fmt = (lambda v: "n/a" if v is None else f"{v:.2f}")
        typer.echo(f"tau {fmt(row['kendall_tau'])}  AUROC {fmt(row['auroc'])}  AUPR(AP) {fmt(row['aupr_ap'])}  "
                   f"FPR@95 {fmt(row['fpr95'])}  acc {row['accuracy']:.2f}  rob.acc {row['robust_accuracy']:.2f}  "
                   f"-> {os.path.join(out, 'report.md')}")
