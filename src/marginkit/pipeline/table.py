"""The per-sample results table of a model on a set of inputs, built resumably.

For every sample: label, prediction, logit margin (seed paper eq. 4), feature margin (eq. 2) and the
input margin by the estimator asked for (:mod:`marginkit.margins.estimators`; dispatch in
:mod:`marginkit.pipeline.estimate`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..checks import check_inputs, check_labels, check_model_mode
from ..margins.affine import affine_map_or_none
from ..margins.estimators import ESTIMATORS, check_estimator
from ..margins.output import output_margins
from ..norms import Norm, as_norm
from ..results.table import ResultsStore, empty_columns
from .estimate import input_margin_columns, verify_function

__all__ = ["INPUT_MARGIN_MODES", "margin_table"]

# The estimator names margin_table accepts (the package's one vocabulary).
INPUT_MARGIN_MODES = ESTIMATORS


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def margin_table(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    norm: Norm | str = "l2",
    *,
    input_margin: str = "auto",
    bounds: tuple[float, float] = (0.0, 1.0),
    store: ResultsStore | None = None,
    indices: np.ndarray | None = None,
    chunk_size: int = 256,
    progress: bool = False,
    attack_options: dict[str, Any] | None = None,
    verify_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Per-sample table (schema :data:`marginkit.results.COLUMNS`) for ``inputs`` with true ``labels``.

    ``input_margin`` is an estimator of :mod:`marginkit.margins.estimators`: ``"auto"`` (the closed
    form when the model is affine, else the attack engine), ``"exact"``, ``"attack"``, ``"certify"`` or
    ``"none"``. Input margins are margins of the model's decision (reference class = prediction).
    With a ``store`` the table is written chunk by chunk and samples already in it are skipped, so an
    interrupted run resumes where it stopped; the full table is returned either way.
    """
    norm = as_norm(norm)
    mode = check_estimator(input_margin)
    check_inputs(inputs)
    labels = check_labels(labels, inputs.shape[0])
    check_model_mode(model)
    idx_all = np.arange(inputs.shape[0], dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx_all.shape[0] != inputs.shape[0]:
        raise ValueError(f"indices has {idx_all.shape[0]} entries for {inputs.shape[0]} inputs")

    affine_map = None
    if mode in ("auto", "exact"):
        affine_map = affine_map_or_none(model, tuple(inputs.shape[1:]))
        if mode == "auto":
            mode = "exact" if affine_map is not None else "attack"
        elif affine_map is None:
            verify_function("exact_margin")  # networks need the verify package: fail before any work
    elif mode == "certify":
        verify_function("certify")

    todo = np.arange(inputs.shape[0]) if store is None else np.flatnonzero(np.isin(idx_all, store.pending(idx_all)))
    frames: list[pd.DataFrame] = []
    bar = None
    if progress and len(todo):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"margins ({norm}, {mode})", unit="sample")
    try:
        for start in range(0, len(todo), chunk_size):
            pos = todo[start : start + chunk_size]
            xb, yb = inputs[pos], labels[pos]
            t0 = time.perf_counter()
            om = output_margins(model, xb, None, norm)
            check_labels(yb, len(pos), om.logits.shape[1])  # a dataset with more classes than the model is an error
            rows = empty_columns(len(pos))
            rows["index"] = idx_all[pos]
            rows["label"] = yb.cpu().numpy()
            rows["prediction"] = om.prediction.cpu().numpy()
            rows["logit_margin"] = om.logit_margin.double().cpu().numpy()
            if om.feature_margin is not None:
                rows["feature_margin"] = om.feature_margin.double().cpu().numpy()
            rows["norm"][:] = str(norm)
            cols = input_margin_columns(model, xb, norm, mode, bounds=bounds, affine_map=affine_map,
                                        attack_options=attack_options, verify_options=verify_options)
            rows.update(cols)
            if "seconds" not in cols:  # one batched pass: its time shared by the samples
                rows["seconds"][:] = (time.perf_counter() - t0) / len(pos)
            frame = pd.DataFrame(rows)
            if store is not None:
                store.append(frame)
            frames.append(frame)
            if bar is not None:
                bar.update(len(pos))
                left = len(todo) - start - len(pos)
                if start == 0 and left > 0:  # the expected run time, from the measured cost of the first chunk
                    per = (time.perf_counter() - t0) / len(pos)
                    bar.write(f"expected time for the remaining {left} samples: about {_duration(per * left)} "
                              f"({per:.3g} s per sample measured on the first {len(pos)})")
    finally:  # an error prints on its own line, not after a half-drawn bar
        if bar is not None:
            bar.close()
    if store is not None:
        return store.finalize({"input_margin_mode": mode})
    if not frames:
        return pd.DataFrame(empty_columns(0))
    return pd.concat(frames).sort_values("index").reset_index(drop=True)
