"""Build the per-sample results table of a model on a set of inputs, resumably.

For every sample: label, prediction, logit margin (eq. 4), feature margin (eq. 2) and, when asked,
the input margin: exact for affine models (:func:`affine_input_margin`), otherwise an upper bound from
the minimal-norm attack engine (``marginkit.attacks.input_margin``) when it is available.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..checks import check_inputs, check_labels, check_model_mode
from ..norms import Norm, as_norm
from ..results.status import EXACT, NOT_COMPUTED
from ..results.table import ResultsStore, empty_columns
from .affine import affine_input_margin, affine_parameters
from .output import output_margins

__all__ = ["INPUT_MARGIN_MODES", "affine_map_or_none", "is_affine", "margin_table"]

INPUT_MARGIN_MODES = ("auto", "exact", "attack", "none")
_AFFINE_LAYERS = (nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)


def is_affine(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether ``model`` computes an affine map of its input (checked numerically when not obvious)."""
    if isinstance(model, nn.Sequential) and all(isinstance(m, _AFFINE_LAYERS) for m in model):
        return True
    return affine_map_or_none(model, input_shape) is not None


def affine_map_or_none(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, c) of ``model`` when it is affine (:func:`affine_parameters`, checked), else None; models with a
    known non-linear layer are rejected without a forward pass."""
    if any(isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Softmax)) for m in model.modules()):
        return None
    try:
        return affine_parameters(model, input_shape)
    except ValueError:
        return None


def _attack_engine() -> Callable[..., Any] | None:
    try:
        from ..attacks import input_margin  # type: ignore[attr-defined]
    except ImportError:
        return None
    return input_margin


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
) -> pd.DataFrame:
    """Per-sample table (schema :data:`marginkit.results.COLUMNS`) for ``inputs`` with true ``labels``.

    ``input_margin``: ``"exact"`` (affine models only), ``"attack"`` (minimal-norm attack engine),
    ``"auto"`` (exact when the model is affine, else the attack engine when installed, else skipped) or
    ``"none"``. Input margins are margins of the model's decision (reference class = prediction).
    With a ``store`` the table is written chunk by chunk and samples already in it are skipped, so an
    interrupted run resumes where it stopped; the full table is returned either way.
    """
    norm = as_norm(norm)
    if input_margin not in INPUT_MARGIN_MODES:
        raise ValueError(f"input_margin must be one of {INPUT_MARGIN_MODES}, got {input_margin!r}")
    check_inputs(inputs)
    labels = check_labels(labels, inputs.shape[0])
    check_model_mode(model)
    idx_all = np.arange(inputs.shape[0], dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx_all.shape[0] != inputs.shape[0]:
        raise ValueError(f"indices has {idx_all.shape[0]} entries for {inputs.shape[0]} inputs")

    mode = input_margin
    affine_map = None
    if mode in ("auto", "exact"):
        affine_map = affine_map_or_none(model, tuple(inputs.shape[1:]))
        if mode == "exact" and affine_map is None:
            raise ValueError("input_margin='exact' needs an affine model; use 'attack' for networks")
        mode = "exact" if affine_map is not None else ("attack" if _attack_engine() is not None else "none")
    if mode == "attack" and _attack_engine() is None:
        raise ValueError("input_margin='attack' needs the minimal-norm attack engine (marginkit.attacks.input_margin)")

    todo = np.arange(inputs.shape[0]) if store is None else np.flatnonzero(np.isin(idx_all, store.pending(idx_all)))
    frames: list[pd.DataFrame] = []
    bar = None
    if progress and len(todo):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"margins ({norm}, {mode})", unit="sample")
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
        if mode == "exact":
            res = affine_input_margin(affine_map, xb, None, norm, bounds=bounds)
            rows["input_margin_upper"] = res.margin.cpu().numpy()
            rows["input_margin_lower"] = res.margin.cpu().numpy()
            rows["method"][:] = "affine-exact"
            rows["status"][:] = EXACT
        elif mode == "attack":
            engine = _attack_engine()
            res = engine(model, xb, None, norm, bounds=bounds, **(attack_options or {}))
            rows.update(res.columns())  # upper bound, status, per-sample method, seconds, class reached, passes
        else:
            rows["method"][:] = "none"
            rows["status"][:] = NOT_COMPUTED
        if mode != "attack":  # the engine times each sample itself
            rows["seconds"][:] = (time.perf_counter() - t0) / len(pos)
        frame = pd.DataFrame(rows)
        if store is not None:
            store.append(frame)
        frames.append(frame)
        if bar is not None:
            bar.update(len(pos))
    if bar is not None:
        bar.close()
    if store is not None:
        return store.finalize({"input_margin_mode": mode})
    if not frames:
        return pd.DataFrame(empty_columns(0))
    return pd.concat(frames).sort_values("index").reset_index(drop=True)
