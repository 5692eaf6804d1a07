"""Plots of layer-wise lower bounds (fixed-feature-extractor paper Figs. 3/4, 8/9): bound against eps,
one line per layer, one panel per model. PNG via matplotlib Agg."""

from __future__ import annotations

from typing import Any, Sequence

from .plotting import pyplot, save_figure

__all__ = ["plot_layerwise_bounds", "write_bounds_report"]


def plot_layerwise_bounds(rows: Sequence[dict] | Any, path: str, loss: str = "cross_entropy") -> str:
    """Plot ``loss`` ("cross_entropy" or "zero_one") against eps for every (model, layer) of a
    :class:`marginkit.bounds.LayerwiseResult` table (``rows`` or its DataFrame); returns ``path``."""
    import pandas as pd

    plt = pyplot()

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if loss not in ("cross_entropy", "zero_one"):
        raise ValueError(f"loss must be 'cross_entropy' or 'zero_one', got {loss!r}")
    if df.empty:
        raise ValueError("no bounds to plot")
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], models):
        sub = df[df["model"] == name]
        for layer in sorted(dict.fromkeys(sub["layer"]), key=lambda l: int(sub[sub["layer"] == l]["depth"].iloc[0])):
            part = sub[sub["layer"] == layer].sort_values("eps")
            ax.plot(part["eps"], part[loss], marker="o", ms=3, label=layer)
        ax.set_title(str(name))
        ax.set_xlabel("eps (adversarial budget)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("lower bound on robust " + ("cross-entropy (nats)" if loss == "cross_entropy" else "0-1 loss"))
    axes[0][-1].legend(title="layer", fontsize=8)
    return save_figure(fig, path)


def write_bounds_report(run: Any, out: str) -> dict[str, str]:
    """Files of a :class:`marginkit.pipeline.BoundsRun`: ``bounds.csv``, ``layers.csv``,
    ``settings.json`` and the bound-vs-eps plots (cross-entropy only when it was computed)."""
    import os

    from ..results.jsonio import write_json
    from ..results.provenance import atomic_write_text

    os.makedirs(out, exist_ok=True)
    paths = {"bounds": os.path.join(out, "bounds.csv"), "layers": os.path.join(out, "layers.csv")}
    atomic_write_text(paths["bounds"], run.table.to_csv(index=False))
    atomic_write_text(paths["layers"], run.layers.to_csv(index=False))
    paths["settings"] = write_json(os.path.join(out, "settings.json"), run.settings)
    if run.cross_entropy:
        paths["cross_entropy_plot"] = plot_layerwise_bounds(run.table, os.path.join(out, "bounds_cross_entropy.png"),
                                                            "cross_entropy")
    paths["zero_one_plot"] = plot_layerwise_bounds(run.table, os.path.join(out, "bounds_zero_one.png"), "zero_one")
    return paths
