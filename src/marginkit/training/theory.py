"""How the Theorem 3 estimate of the min-vs-average margin paper moves with its sample count.

Section 5.1 / Appendix F of Wu & Yu estimate the local Lipschitz constant L_k of eq. (16) by the
largest gradient norm over 1024 x 50 = 51,200 points sampled in B(x, r). The estimate can only fall
as samples are added (a running maximum of L_k), so a bound read at 32-64 samples is an upper
estimate of the one at 51,200. :func:`theorem3_convergence` runs :func:`lipschitz_margin` once with
checkpoints and summarises the curve; an optional reference (e.g. the engine's verified upper bounds
on the true margin) shows how often the estimate exceeds a distance that is known to be attainable,
which a valid lower bound never does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..norms import Norm
from .dynamics import lipschitz_margin

__all__ = ["PAPER_SAMPLES", "Theorem3Convergence", "theorem3_convergence", "doubling_counts", "plot_theorem3"]

PAPER_SAMPLES = 1024 * 50


def doubling_counts(samples: int) -> list[int]:
    """0, 1, 2, 4, ... up to ``samples`` (included): the checkpoints of a convergence curve."""
    out = [0]
    k = 1
    while k < samples:
        out.append(k)
        k *= 2
    return out + [samples]


@dataclass(frozen=True)
class Theorem3Convergence:
    """The Theorem 3 bound per point against the number of samples in B(x, r).

    ``counts`` (S,) sample counts; ``bounds`` (S, N) the bound of each (correctly classified) point after
    that many samples; ``reference`` (N,) optional upper bounds on the true margin (NaN: none).
    """

    counts: list[int]
    bounds: np.ndarray
    reference: np.ndarray
    radius: float
    norm: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, float]]:
        """Per count: mean / median bound, mean ratio to the final bound, share above the reference."""
        final = self.bounds[-1]
        rows = []
        for c, b in zip(self.counts, self.bounds):
            ok = final > 0
            above = self.reference[np.isfinite(self.reference)]
            row = {"samples": int(c), "mean": float(b.mean()), "median": float(np.median(b)),
                   "mean_ratio_to_final": float(np.mean(b[ok] / final[ok])) if ok.any() else float("nan"),
                   "max_ratio_to_final": float(np.max(b[ok] / final[ok])) if ok.any() else float("nan")}
            if above.size:
                fin = np.isfinite(self.reference)
                row["share_above_reference"] = float(np.mean(b[fin] > self.reference[fin]))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bounds"] = self.bounds.tolist()
        d["reference"] = [float(v) for v in self.reference]
        d["summary"] = self.summary()
        return d


def theorem3_convergence(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    norm: Norm | str = "l2",
    *,
    radius: float = 5.0,
    samples: int = PAPER_SAMPLES,
    counts: Sequence[int] | None = None,
    reference: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 4096,
    seed: int = 0,
) -> Theorem3Convergence:
    """Eq. (16) with L_k from ``samples`` points per input (paper: r = 5, 51,200), read at ``counts``.

    Only inputs the model classifies as ``labels`` are kept (the bound is 0 elsewhere). ``reference``
    (N,) is an upper bound on each input's true margin (e.g. ``marginkit.attacks.input_margin(...).upper``).
    """
    counts = sorted(set(doubling_counts(samples) if counts is None else [int(c) for c in counts]) | {samples})
    res = lipschitz_margin(model, inputs, labels, norm, radius=radius, samples=samples, batch_size=batch_size,
                           seed=seed, checkpoints=counts)
    with torch.no_grad():
        correct = (model(inputs.to(res.bound.device)).argmax(1) == labels.to(res.bound.device)).cpu().numpy()
    bounds = np.stack([res.curve[c].cpu().numpy()[correct] for c in counts])
    ref = np.full(int(correct.sum()), np.nan) if reference is None else np.asarray(
        reference.detach().cpu() if isinstance(reference, torch.Tensor) else reference, dtype=np.float64)[correct]
    return Theorem3Convergence(counts, bounds, ref, float(radius), str(res.norm), seed,
                               {"n_inputs": int(len(correct)), "n_correct": int(correct.sum()), "samples": samples,
                                "batch_size": batch_size})


def plot_theorem3(results: dict[str, Theorem3Convergence], path: str, *, mark: Sequence[int] = (32, 64)) -> None:
    """Mean bound (with the 10-90% band of the ratio to the final bound) against the sample count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        x = np.maximum(np.asarray(r.counts), 0.5)  # the count 0 (x alone) drawn at 0.5 on the log axis
        axes[0].plot(x, r.bounds.mean(1), marker=".", label=f"{name} (n={r.bounds.shape[1]})")
        ok = r.bounds[-1] > 0
        ratio = r.bounds[:, ok] / r.bounds[-1, ok]
        axes[1].plot(x, ratio.mean(1), marker=".", label=name)
        axes[1].fill_between(x, np.quantile(ratio, 0.1, axis=1), np.quantile(ratio, 0.9, axis=1), alpha=0.2)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("samples in B(x, r) (0 = x alone, drawn at 0.5)")
        for m in mark:
            ax.axvline(m, color="grey", lw=0.6, ls=":")
    axes[0].set_ylabel("mean Theorem 3 bound (l2)")
    axes[1].set_ylabel("bound / bound at the largest count")
    axes[0].legend(fontsize=8)
    axes[1].set_title("mean and 10-90% band", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
