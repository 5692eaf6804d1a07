"""Files of a margin-consistency run: ``metrics.json``, ``report.md``, PNG plots (and the fitted
pseudo-margin), and the Markdown of an Algorithm 1 estimate."""

from __future__ import annotations

import os
from typing import Any

from ..pipeline.consistency import ConsistencyRun, SubsetEstimate
from ..results.jsonio import write_json
from ..results.provenance import atomic_write_text
from .consistency_plots import write_consistency_plots

__all__ = ["consistency_summary_line", "skipped_markdown", "write_consistency_report", "write_estimate_report"]


def write_consistency_report(run: ConsistencyRun, out: str | os.PathLike, *, title: str | None = None) -> dict[str, str]:
    """Write the report of ``run`` into ``out``; returns the paths written (``metrics``, ``markdown``, plots)."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    report = run.report
    if run.pseudo_margin is not None:
        run.pseudo_margin.save(os.path.join(out, "pseudo_margin.pt"))
        report.extras.setdefault("pseudo_margin", {})["file"] = "pseudo_margin.pt"
    plots = write_consistency_plots(report, out, run.isometry)
    report.extras["plots"] = plots
    metrics = write_json(os.path.join(out, "metrics.json"), report.to_dict())
    name = os.path.basename(str(run.model)) if run.model else "table"
    markdown = os.path.join(out, "report.md")
    text = report.to_markdown(title or f"Margin consistency of {name} ({run.norm}, eps={run.eps:.6g})")
    atomic_write_text(markdown, text.rstrip("\n") + "\n" + skipped_markdown(run.skipped))
    return {"metrics": metrics, "markdown": markdown, **plots}


def skipped_markdown(skipped: dict[str, str]) -> str:
    """The "Skipped steps" section: each step that did not run and why (empty when all ran)."""
    if not skipped:
        return ""
    lines = ["", "## Skipped steps", ""] + [f"- {step}: {why}" for step, why in skipped.items()]
    return "\n".join(lines) + "\n"


def consistency_summary_line(run: ConsistencyRun) -> str:
    """One line with Table 1's numbers for the logit margin."""
    row = run.report.table1_row("logit_margin")

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return (f"tau {fmt(row['kendall_tau'])}  AUROC {fmt(row['auroc'])}  AUPR(AP) {fmt(row['aupr_ap'])}  "
            f"FPR@95 {fmt(row['fpr95'])}  acc {row['accuracy']:.2f}  rob.acc {row['robust_accuracy']:.2f}")


def write_estimate_report(est: SubsetEstimate, out: str | os.PathLike) -> dict[str, str]:
    """``estimate.json`` and ``estimate.md`` of an Algorithm 1 estimate; returns their paths."""
    out = os.fspath(out)
    s = est.settings
    path_json = write_json(os.path.join(out, "estimate.json"), est.to_dict())
    ra, vf = est.estimates["robust_accuracy"], est.estimates["vulnerable_fraction"]
    lines = [f"# Algorithm 1 estimate: {os.path.basename(str(s['model']))} ({s['norm']}, eps={s['eps']:.6g})", "",
             f"Input margins of {s['n']} random samples (seed {s['seed']}) out of {s['samples']}; threshold on the "
             f"logit margin tuned over the TPR grid; {ra.seconds_subset_margins or 0.0:.1f} s of attacks, "
             f"{s['seconds_total']:.1f} s in total.", "",
             *([f"Data: {s['split_description']}", ""] if s.get("split_description") else []),
             "| quantity | subset value | estimate for all samples | TPR level alpha | logit-margin threshold |",
             "|---|---|---|---|---|",
             f"| robust accuracy | {100 * ra.subset_value:.2f} | {100 * ra.estimate:.2f} | {ra.alpha} | {ra.threshold:.4g} |",
             f"| vulnerable fraction | {100 * vf.subset_value:.2f} | {100 * vf.estimate:.2f} | {vf.alpha} | {vf.threshold:.4g} |",
             ""]
    lines += [f"Note: {m}" for m in sorted({ra.message, vf.message}) if m]
    path_md = os.path.join(out, "estimate.md")
    atomic_write_text(path_md, "\n".join(lines) + "\n")
    return {"json": path_json, "markdown": path_md}
