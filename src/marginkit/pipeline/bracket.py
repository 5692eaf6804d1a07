"""A certified bracket for a subset of a finished margin table (what the main job shows).

Certified lower bounds cost more than the attack's upper bounds (bound propagation per sample, several
bisection steps), so the main job brackets only the first ``n`` samples of its table: enough to show
how far the attack's upper bounds can be from the truth, cheap on MLPs. Convolutional networks are
skipped unless asked for, since CROWN on a CNN takes minutes per sample on a CPU (bench/verify.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .estimate import verify_function

__all__ = ["SubsetBracket", "certify_subset"]


@dataclass(frozen=True)
class SubsetBracket:
    """``table``: index, logit_margin, label, prediction, input_margin_lower/upper, status, method, seconds
    for the bracketed samples (empty with ``skipped`` set when nothing was certified, and why)."""

    table: pd.DataFrame
    method: str
    skipped: str | None = None


def certify_subset(model: nn.Module, inputs: torch.Tensor, table: pd.DataFrame, n: int, *, method: str = "crown",
                   bounds: tuple[float, float] = (0.0, 1.0), include_conv: bool = False,
                   verify_options: dict[str, Any] | None = None) -> SubsetBracket:
    """Certified lower bounds (``marginkit.verify.certify``) for the first ``n`` rows of ``table`` by index.

    ``inputs`` is the split the table was computed on (row ``index`` i is ``inputs[i]``); the table's
    verified upper bounds close the bracket. Rows without an upper bound (not computed) are left out.
    """
    if n < 0:
        raise ValueError(f"the number of samples to certify must be >= 0, got {n}")
    cols = ["index", "label", "prediction", "logit_margin", "input_margin_upper"]
    rows = table.sort_values("index")
    rows = rows[rows["input_margin_upper"].notna()].head(n)
    if n == 0 or rows.empty:
        return SubsetBracket(rows[cols].iloc[:0], method, "no samples to certify")
    if not include_conv and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return SubsetBracket(rows[cols].iloc[:0], method,
                             "convolutional network: certification is minutes per sample on a CPU (pass include_conv=True)")
    certify = verify_function("certify")
    norm = str(table["norm"].iloc[0])
    idx = torch.as_tensor(rows["index"].to_numpy().copy(), dtype=torch.long)
    upper = torch.as_tensor(rows["input_margin_upper"].to_numpy(dtype=np.float64).copy())
    from ..verify.network import UnsupportedLayerError  # the lookup above made sure the package exists

    try:
        res = certify(model, inputs[idx], None, norm, upper=upper, bounds=bounds, method=method,
                      **(verify_options or {}))
    except UnsupportedLayerError as exc:
        return SubsetBracket(rows[cols].iloc[:0], method, f"not supported by bound propagation: {exc}")
    out = rows[cols].reset_index(drop=True).copy()
    for name, values in res.columns().items():
        if name != "norm":
            out[name] = np.asarray(values)
    return SubsetBracket(out, method)
