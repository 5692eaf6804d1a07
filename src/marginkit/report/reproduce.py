"""The reproduction report: every measured number next to the paper's, in Markdown and self-contained HTML.

:func:`write_reproduction_report` reads the study results of a ``marginkit reproduce`` folder
(:func:`marginkit.pipeline.reproduce.load_reproduction`), draws each study's figures from their stored
data with matplotlib (Agg) into ``OUT/figures/*.png`` and writes

* ``OUT/report.md``: per study the paper's claim and setting, a table (our value, 95% CI and how it was
  formed, n, seeds, the paper's number, the claim's direction, the verdict), what was used where the paper
  used more, the command that produced it, and its figures as PNG links;
* ``OUT/report.html``: the same content with inline CSS and every figure embedded as a ``data:image/png``
  URI, so the file shows everything when opened on its own (no external links, scripts or stylesheets).

Both are built from one list of blocks, so they cannot disagree.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..pipeline.reproduce import STUDIES, VERDICT_RULE, Measurement, StudyResult, load_reproduction

__all__ = ["ReportFiles", "write_reproduction_report", "draw_figure"]


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a" if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}"


def _ci(m: Measurement) -> str:
    if m.ci is None:
        return "none"
    if m.ci[0] == m.ci[1] == m.value:
        return "exact"
    return f"[{_fmt(m.ci[0])}, {_fmt(m.ci[1])}]"


def draw_figure(spec: dict[str, Any], path: Path) -> Path:
    """Draw a stored figure spec (``"lines"`` or ``"errorbars"``) to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.2, 3.9))
    try:
        if spec["kind"] == "lines":
            for s in spec.get("series", []):
                x = np.asarray([_f(v) for v in s["x"]])
                y = np.asarray([_f(v) for v in s["y"]])
                ls = "none" if spec.get("markers_only") else ":" if s.get("dotted") else "--" if s.get("dashed") else "-"
                ax.plot(x, y, marker="o" if spec.get("markers_only") else ".", ls=ls, label=s.get("label"))
                if "lo" in s and "hi" in s:
                    ax.fill_between(x, [_f(v) for v in s["lo"]], [_f(v) for v in s["hi"]], alpha=0.2)
            if spec.get("xlog"):
                ax.set_xscale("log")
            if spec.get("ylog"):
                ys = [_f(v) for s in spec.get("series", []) for v in s["y"]]
                if any(math.isfinite(v) and v > 0 for v in ys):
                    ax.set_yscale("log")
            ax.set_xlabel(spec.get("xlabel", ""))
        elif spec["kind"] == "errorbars":
            vals = np.asarray([_f(v) for v in spec["values"]])
            lo = np.asarray([_f(v) for v in spec["lo"]])
            hi = np.asarray([_f(v) for v in spec["hi"]])
            pos = np.arange(len(vals))
            err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
            ax.errorbar(pos, vals, yerr=np.clip(err, 0, None), fmt="o", capsize=3)
            ax.set_xticks(pos)
            ax.set_xticklabels(spec["labels"], rotation=35, ha="right", fontsize=7)
        else:
            raise ValueError(f"unknown figure kind {spec['kind']!r}")
        if spec.get("hline") is not None:
            ax.axhline(float(spec["hline"]), color="grey", lw=0.8, ls=":")
        ax.set_ylabel(spec.get("ylabel", ""))
        ax.set_title(spec.get("title", ""), fontsize=10)
        if spec["kind"] == "lines" and spec.get("series"):
            ax.legend(fontsize=7, ncol=2 if len(spec["series"]) > 4 else 1)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


# Blocks: ("h1"|"h2"|"h3"|"p", text), ("table", header, rows), ("code", text), ("img", path, caption).
Block = tuple[Any, ...]


def _blocks(results: Sequence[StudyResult], run: dict[str, Any], figures: dict[str, list[tuple[Path, str]]],
            unavailable: dict[str, str]) -> list[Block]:
    b: list[Block] = [("h1", "marginkit reproduce: the papers' findings, measured")]
    scale = results[0].scale if results else run.get("scale", "?")
    total = _f(run.get("total_seconds"))
    b.append(("p", f"Scale: {scale}. Total wall time over {len(run.get('sittings', []))} sitting(s): "
                   f"{_fmt(total)} s. Machine: {run.get('machine', {}).get('platform', '?')}, "
                   f"{run.get('machine', {}).get('cpus', '?')} CPUs."))
    b.append(("p", "Verdict rule. " + VERDICT_RULE))
    b.append(("p", "Papers: Ngnawe et al., margin consistency; Wu & Yu, minimum vs average margin (and its review); "
                   "Ayyagari et al., fixed-feature-extractor bounds. Where the paper's epochs, sizes or sample counts "
                   "did not fit this machine, each row says what was used."))
    rows = []
    for r in results:
        counts = {v: sum(m.verdict == v for m in r.measurements) for v in ("confirmed", "contradicted", "undetermined")}
        rows.append([r.name, r.section, r.title, str(counts["confirmed"]), str(counts["contradicted"]),
                     str(counts["undetermined"]), _fmt(r.seconds)])
    for name, why in unavailable.items():
        st = next((s for s in STUDIES if s.name == name), None)
        rows.append([name, st.section if st else "?", f"not run: {why}", "-", "-", "-", "-"])
    b.append(("h2", "Summary"))
    b.append(("table", ["study", "section", "what", "confirmed", "contradicted", "undetermined", "seconds"], rows))
    for r in results:
        b.append(("h2", f"{r.name}: {r.title}"))
        b.append(("p", f"Paper: {r.claim} ({r.reference}). Paper's setting: {r.paper_setting}."))
        mrows = []
        for m in r.measurements:
            unit = f" {m.unit}" if m.unit else ""
            mrows.append([m.quantity, _fmt(m.value) + unit, _ci(m), m.ci_kind, m.n, str(m.seeds),
                          f"{m.claim.paper} ({m.claim.source})", m.claim.describe(), m.verdict])
        b.append(("table", ["quantity", "ours", "95% CI", "CI from", "n", "seeds", "paper", "claim", "verdict"], mrows))
        settings = sorted({m.setting for m in r.measurements if m.setting})
        for s in settings:
            b.append(("p", f"Used here ({r.scale} scale): {s}."))
        b.append(("p", f"Wall time {_fmt(r.seconds)} s, finished {r.finished}. Command:"))
        b.append(("code", r.command))
        for path, caption in figures.get(r.name, []):
            b.append(("img", path, caption))
        for n in r.notes:
            b.append(("p", n))
    if run.get("sittings"):
        b.append(("h2", "Wall time by sitting"))
        b.append(("table", ["started", "seconds", "studies run", "studies reused"],
                  [[s.get("started", ""), _fmt(_f(s.get("seconds"))), ", ".join(s.get("ran", [])) or "-",
                    ", ".join(s.get("reused", [])) or "-"] for s in run["sittings"]]))
    return b


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[Block], base: Path) -> str:
    out: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h1":
            out.append(f"# {blk[1]}\n")
        elif kind == "h2":
            out.append(f"## {blk[1]}\n")
        elif kind == "p":
            out.append(f"{blk[1]}\n")
        elif kind == "code":
            out.append(f"    {blk[1]}\n")
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in blk[1]) + " |")
            out.append("|" + "---|" * len(blk[1]))
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in blk[2])
            out.append("")
        elif kind == "img":
            rel = os.path.relpath(blk[1], base)
            out.append(f"![{blk[2]}]({rel})\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em;width:100%}
th,td{border:1px solid #ccc;padding:.3em .45em;vertical-align:top;text-align:left}th{background:#f3f3f3}
code{background:#f5f5f5;padding:.25em .5em;display:block;font-size:.85em;overflow-x:auto}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}figure{margin:0}figcaption{font-size:.8em;color:#555}
td.confirmed{background:#dff3df}td.contradicted{background:#f8d9d9}td.undetermined{background:#fff3cd}
td.context{color:#666}
"""


def _html(blocks: list[Block]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>marginkit reproduce</title>", f"<style>{_CSS}</style></head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(blk[1])}</p>")
        elif kind == "code":
            parts.append(f"<code>{e(blk[1])}</code>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in blk[1])
            body = []
            for row in blk[2]:
                cells = []
                for h, c in zip(blk[1], row):
                    cls = f" class=\"{e(c)}\"" if h == "verdict" else ""
                    cells.append(f"<td{cls}>{e(str(c))}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(blk[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{e(blk[2])}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{e(blk[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reproduction_report(out: str | os.PathLike, *, unavailable: dict[str, str] | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for the studies stored in ``out``."""
    from ..results.provenance import atomic_write_text

    outp = Path(out)
    results, run = load_reproduction(outp)
    figures: dict[str, list[tuple[Path, str]]] = {}
    paths = []
    for r in results:
        for i, spec in enumerate(r.figures):
            name = spec.get("name") or f"{r.name}-{i}"
            path = draw_figure(spec, outp / "figures" / f"{name}.png")
            caption = spec.get("title", name) + (f" ({spec['caption']})" if spec.get("caption") else "")
            figures.setdefault(r.name, []).append((path, caption))
            paths.append(path)
    blocks = _blocks(results, run, figures, unavailable or {})
    md = outp / "report.md"
    htm = outp / "report.html"
    atomic_write_text(md, _markdown(blocks, outp))
    atomic_write_text(htm, _html(blocks))
    return ReportFiles(md, htm, tuple(paths))
