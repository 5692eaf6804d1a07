"""``marginkit reproduce``: the papers' findings as one resumable run with a Markdown and HTML report.

Runs the studies of a section (consistency, dynamics, bounds or all; :mod:`marginkit.pipeline.reproduce`)
at a scale, stores each finished study in ``OUT/studies/<name>.json`` (a rerun skips it) and writes
``OUT/report.md``, ``OUT/report.html`` (self-contained) and ``OUT/figures/*.png``.
"""

from __future__ import annotations

import time

import typer

from ._common import console, friendly_errors

SECTION_CHOICES = ("consistency", "dynamics", "bounds", "all")


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    @friendly_errors
    def reproduce_cmd(
        section: str = typer.Argument(..., help="consistency | dynamics | bounds | all"),
        quick: bool = typer.Option(False, "--quick", help="minutes on 2 cores (default)"),
        full: bool = typer.Option(False, "--full", help="the papers' sample counts where this machine allows; hours, "
                                  "resumable: rerun the same command to continue"),
        tiny: bool = typer.Option(False, "--tiny", help="seconds per study: a smoke test of the whole suite"),
        out: str = typer.Option(None, "--out", help="output folder (default: runs/reproduce-SCALE)"),
        workers: int = typer.Option(None, "--workers", help="spread zoo models and seeds over N local Ray workers "
                                    "(pip install 'marginkit[ray]')"),
        only: str = typer.Option(None, "--only", help="comma-separated study names (e.g. theorem3,fisher)"),
        force: bool = typer.Option(False, "--force", help="rerun studies already stored in --out"),
        report_only: bool = typer.Option(False, "--report-only", help="only rewrite the report from the stored studies"),
    ) -> None:
        """Reproduce the papers' findings: each number next to the paper's, with its CI, verdict and command."""
        from marginkit.pipeline.reproduce import STUDIES, run_reproduction
        from marginkit.report.reproduce import write_reproduction_report

        if section not in SECTION_CHOICES:
            raise typer.BadParameter(f"section must be one of {', '.join(SECTION_CHOICES)}, got {section!r}")
        if quick + full + tiny > 1:
            raise typer.BadParameter("choose one of --quick, --full, --tiny")
        scale = "full" if full else "tiny" if tiny else "quick"
        folder = out or f"runs/reproduce-{scale}"
        names = [n.strip() for n in only.split(",") if n.strip()] if only else None
        t0 = time.perf_counter()
        unavailable: dict[str, str] = {}
        if not report_only:
            executor = None
            if workers is not None:
                from marginkit.parallel import ExecutorConfig

                executor = ExecutorConfig(workers=workers)
            total = len([s for s in STUDIES if section == "all" or s.section == section
                         if not names or s.name in names])
            count = [0]

            def on_study(study, state, result) -> None:
                if state == "start":
                    count[0] += 1
                    console.print(f"[{count[0]}/{total}] {study.name}: {study.title} ...", markup=False, highlight=False)
                elif state == "done":
                    console.print(f"      {study.name} done in {result.seconds:.1f} s", markup=False, highlight=False)
                elif state == "reused":
                    count[0] += 1
                    console.print(f"[{count[0]}/{total}] {study.name}: stored result reused", markup=False,
                                  highlight=False)
                else:
                    console.print(f"      {study.name} not run (its library parts are missing)", markup=False,
                                  highlight=False)

            run = run_reproduction([section], out=folder, scale=scale, only=names, executor=executor, progress=True,
                                   force=force, on_study=on_study)
            unavailable = run.unavailable
        files = write_reproduction_report(folder, unavailable=unavailable)
        from marginkit.pipeline.reproduce import load_reproduction

        results, run_info = load_reproduction(folder)
        for r in results:
            for m in r.measurements:
                ci = "" if m.ci is None else f" [{m.ci[0]:.4g}, {m.ci[1]:.4g}]"
                typer.echo(f"{r.name:15s} {m.verdict:13s} {m.value:.4g}{ci}  {m.quantity}")
        for name, why in unavailable.items():
            typer.echo(f"{name:15s} not run: {why}")
        console.print(f"wrote {files.markdown} and {files.html} ({len(files.figures)} figures) in "
                      f"{time.perf_counter() - t0:.1f} s; total over sittings "
                      f"{run_info.get('total_seconds', float('nan')):.1f} s", markup=False, highlight=False)
