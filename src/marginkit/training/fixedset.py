"""Minimum and average margin on a FIXED set of points during training.

:class:`marginkit.training.MarginTracker` (and the paper's Figures 2 and 6) summarise the margins of
the points that are correctly classified *at each record*. That set changes from one record to the
next: a point with a tiny margin that becomes misclassified leaves it, so the "minimum margin" of the
correct points can rise although no point's margin did. This module records every point's *signed*
margin (distance to the decision boundary, positive when correct w.r.t. its label, negative when
not: the m(x, y) of the paper's section 2) and summarises it over sets fixed in advance:

* ``"correct-now"``: the correct points of each record (what MarginTracker reports);
* ``"final-correct"``: the points correct at the last record, followed back through training;
* ``"always-correct"``: the points correct at every record;
* ``"all"``: every point (min of signed margins; average of |m|, the paper's section 2 definitions).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..margins import is_affine
from ..norms import Norm, as_norm
from .dynamics import lipschitz_margin

__all__ = ["SUBSETS", "signed_margins", "FixedSetTracker", "FixedSetSummary", "fixed_set_summary", "fixed_set_run"]

SUBSETS = ("correct-now", "final-correct", "always-correct", "all")


def signed_margins(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, norm: Norm | str = "l2", *,
                   radius: float = 5.0, samples: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed input margins (N,) w.r.t. ``labels`` and the correct mask (N,).

    The distance is that of the *prediction's* decision boundary: exact for affine models
    (``affine_input_margin`` without a box), the Theorem 3 estimate otherwise (``lipschitz_margin``
    with the prediction as reference); its sign is + for correctly classified points, - otherwise.
    """
    norm = as_norm(norm)
    if is_affine(model, tuple(inputs.shape[1:])):
        from ..margins import affine_input_margin

        dist = affine_input_margin(model, inputs, None, norm, bounds=None).margin.double().cpu()
    else:
        dist = lipschitz_margin(model, inputs, None, norm, radius=radius, samples=samples, seed=seed).bound.double().cpu()
    with torch.no_grad():
        pred = model(inputs.to(next(model.parameters()).device)).argmax(1).cpu()
    correct = pred == labels.cpu()
    return torch.where(correct, dist, -dist), correct


class FixedSetTracker:
    """Trainer callback: every point's signed margin on fixed ``splits`` at chosen epochs.

    ``splits`` maps a name to ``(x, y)``; records are taken at epoch 0 (before training) and at multiples
    of ``every`` or epochs in ``at``. ``history[name]`` is a list of (epoch, signed margins (N,), correct (N,)).
    """

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], *, every: int = 1, at: Iterable[int] = (),
                 norm: Norm | str = "l2", radius: float = 5.0, samples: int = 32, seed: int = 0) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.splits = splits
        self.every = every
        self.at = {int(a) for a in at}
        self.norm = as_norm(norm)
        self.radius = radius
        self.samples = samples
        self.seed = seed
        self.seconds = 0.0
        self.history: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {k: [] for k in splits}

    def wants(self, epoch: int) -> bool:
        return epoch in self.at or (self.every > 0 and epoch % self.every == 0)

    def record(self, model: nn.Module, epoch: int) -> None:
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            for name, (x, y) in self.splits.items():
                m, c = signed_margins(model, x, y, self.norm, radius=self.radius, samples=self.samples, seed=self.seed)
                self.history[name].append((int(epoch), m.numpy(), c.numpy()))
        finally:
            model.train(was_training)
        self.seconds += time.perf_counter() - t0

    def on_train_begin(self, trainer: Any) -> None:
        if self.wants(0):
            self.record(trainer.model, 0)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, Any]) -> None:
        if self.wants(epoch):
            self.record(trainer.model, epoch)

    def summary(self, split: str, subset: str, since: int = 1) -> "FixedSetSummary":
        return fixed_set_summary(self.history[split], subset, since=since)


@dataclass(frozen=True)
class FixedSetSummary:
    """Per recorded epoch: size of the set, min signed margin, mean signed margin, mean |margin|."""

    subset: str
    epochs: list[int]
    size: list[int]
    min_margin: list[float]
    avg_margin: list[float]
    avg_abs_margin: list[float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fixed_set_summary(history: list[tuple[int, np.ndarray, np.ndarray]], subset: str = "final-correct", *,
                      since: int = 1) -> FixedSetSummary:
    """Summarise a :class:`FixedSetTracker` history over one of :data:`SUBSETS`.

    ``"always-correct"`` is taken over the records with epoch >= ``since`` (at epoch 0 an untrained
    model is correct on about a tenth of the points, which would leave almost nothing).
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    if not history:
        raise ValueError("the history is empty: nothing was recorded")
    epochs = [e for e, _, _ in history]
    margins = np.stack([m for _, m, _ in history])
    correct = np.stack([c for _, _, c in history]).astype(bool)
    if subset == "final-correct":
        fixed = correct[-1]
    elif subset == "always-correct":
        later = np.asarray(epochs) >= since
        if not later.any():
            raise ValueError(f"no record at epoch >= {since}")
        fixed = correct[later].all(0)
    else:
        fixed = np.ones(margins.shape[1], dtype=bool)
    size, mins, avgs, abs_avgs = [], [], [], []
    for m, c in zip(margins, correct):
        sel = c if subset == "correct-now" else fixed
        v = m[sel]
        size.append(int(sel.sum()))
        mins.append(float(v.min()) if v.size else float("nan"))
        avgs.append(float(v.mean()) if v.size else float("nan"))
        abs_avgs.append(float(np.abs(v).mean()) if v.size else float("nan"))
    return FixedSetSummary(subset, epochs, size, mins, avgs, abs_avgs)


def fixed_set_run(preset: str = "cpu-mnist-mlp-std", dataset: str = "mnist5k", *, seed: int = 0, points: int = 300,
                  samples: int = 32, epochs: int | None = None, every: int = 5, radius: float = 5.0,
                  progress: bool = False) -> dict[str, Any]:
    """Train ``preset`` (``epochs`` overrides its epoch count) with a :class:`FixedSetTracker` on the first
    ``points`` train and test points of the seed's split (Theorem 3 margins, ``samples`` per point) and
    summarise every split over every subset of :data:`SUBSETS` (min-vs-average margin paper, Figs. 2, 6).

    Returns ``{"seconds", "tracker_seconds", "test_accuracy", "summaries": {split: {subset: FixedSetSummary dict}}}``.
    """
    from ..data import load_dataset
    from .presets import train_preset

    ds = load_dataset(dataset, seed=seed)
    p = points
    tracker = FixedSetTracker({"train": (ds.x_train[:p], ds.y_train[:p]), "test": (ds.x_test[:p], ds.y_test[:p])},
                              every=every, radius=radius, samples=samples, seed=seed)
    over = {} if epochs is None else {"epochs": epochs}
    t0 = time.perf_counter()
    res, _, _ = train_preset(preset, dataset, seed=seed, callbacks=[tracker], progress=progress, **over)
    return {"seconds": time.perf_counter() - t0, "tracker_seconds": tracker.seconds,
            "test_accuracy": res.test_accuracy,
            "summaries": {split: {sub: tracker.summary(split, sub).to_dict() for sub in SUBSETS}
                          for split in tracker.splits}}
