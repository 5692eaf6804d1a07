"""``certify``: a certified bracket [lower, upper] of the input margin of every sample."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_inputs, model_device
from ..margins.gap import reference_class
from ..norms import Norm, as_norm
from ..results.status import MISCLASSIFIED, status_of
from .network import as_relu_network
from .propagation import _MAX_ELEMENTS, _check_method
from .radius import certified_radius

__all__ = ["CertifyResult", "certify"]


@dataclass
class CertifyResult:
    """Per-sample bracket of the input margin d_in(x) (see :func:`certify`).

    ``lower`` (N,) float64 certified radius (0 for misclassified samples and where nothing certifies;
    ``inf`` where no point of the box changes the decision); ``upper`` (N,) the given verified upper
    bounds; ``status`` per :func:`marginkit.results.status.status_of` ("bracketed", "exact", "upper-only",
    "lower-only", "failed", "misclassified"); ``seconds`` (N,) the wall time of the call divided evenly
    among the samples (the search is batched); ``evaluations`` (N,) bound computations per sample.
    """

    lower: Tensor
    upper: Tensor
    status: list[str]
    seconds: Tensor
    evaluations: Tensor
    method: str
    norm: Norm
    labels: Tensor
    total_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, np.ndarray]:
        """Input-margin columns of the per-sample results table."""
        n = len(self.status)
        return {
            "input_margin_lower": self.lower.detach().cpu().numpy().astype(np.float64),
            "input_margin_upper": self.upper.detach().cpu().numpy().astype(np.float64),
            "norm": np.array([str(self.norm)] * n, dtype=object),
            "status": np.array(self.status, dtype=object),
            "method": np.array([self.method] * n, dtype=object),
            "seconds": self.seconds.detach().cpu().numpy().astype(np.float64),
        }


def certify(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None = None,
    norm: Norm | str = "l2",
    *,
    upper: Tensor | np.ndarray | float,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    method: str = "alpha-crown",
    rtol: float = 0.01,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    alpha_intermediate: int = 0,
    dtype: torch.dtype = torch.float64,
    max_elements: int | None = None,
    time_limit: float = 20.0,
    intermediate: str = "auto",
) -> CertifyResult:
    """Certified lower bounds of the input margin, bracketed with the caller's verified ``upper`` bounds.

    ``model``: an ``nn.Sequential`` ReLU classifier (:func:`marginkit.verify.as_relu_network`); ``inputs``
    (N, ...) in ``bounds``; ``labels`` None: the margin of the model's own decision, given: of the true
    label (misclassified samples get lower = 0 and status "misclassified"); ``upper`` (N,) verified upper
    bounds (e.g. :func:`marginkit.attacks.input_margin`'s ``upper``; ``inf`` where none is known).
    ``lower`` is the largest eps at which ``method`` ("ibp", "crown", "alpha-crown") certifies every row
    of the specification on B_p(x, eps) ∩ box, found by bisection to relative tolerance ``rtol``
    (alpha-CROWN: ``alpha_steps`` Adam steps of size ``alpha_lr`` on the specification rows' slopes, and
    ``alpha_intermediate`` steps on the slopes behind each intermediate neuron's bounds, 0: CROWN's)
    (:func:`marginkit.verify.radius.certified_radius`). ``method="bab"``: from the alpha-CROWN radius on,
    branch and bound over ReLU phases within ``time_limit`` seconds per sample
    (:func:`marginkit.verify.bab.bab_radius`). Computation runs on the model's device in ``dtype``.
    ``intermediate``: how CROWN bounds the intermediate layers (:func:`marginkit.verify.spec_lower_bounds`;
    "auto" uses receptive-field backward passes where a layer below is convolutional or pooling).
    """
    bab = method.lower() == "bab"
    m = "bab" if bab else _check_method(method)
    p = as_norm(norm)
    x = check_inputs(inputs)
    n = x.shape[0]
    device = model_device(model)
    x = x.to(device)
    start = time.perf_counter()
    net = as_relu_network(model, tuple(x.shape[1:]))
    with torch.no_grad():
        logits = model(x)
    ref = reference_class(logits, labels).cpu()
    up = torch.as_tensor(np.asarray(upper, dtype=np.float64) if not isinstance(upper, Tensor) else upper.detach().cpu(),
                         dtype=torch.float64).reshape(-1)
    if up.numel() == 1 and n != 1:
        up = up.expand(n).clone()
    if up.shape[0] != n:
        raise ValueError(f"upper has {up.shape[0]} entries for {n} inputs")
    wrong = (logits.argmax(1).cpu() != ref) if labels is not None else torch.zeros(n, dtype=torch.bool)
    kw: dict[str, Any] = {"alpha_steps": alpha_steps, "alpha_lr": alpha_lr, "alpha_intermediate": alpha_intermediate, "dtype": dtype,
                          "intermediate": intermediate}
    if max_elements is not None:
        kw["max_elements"] = max_elements
    keep = (~wrong).nonzero().squeeze(1)
    lower = torch.zeros(n, dtype=torch.float64)
    evals = torch.zeros(n, dtype=torch.long)
    if keep.numel():
        if bab:
            from .bab import BabOptions, bab_radius

            res = bab_radius(net, x[keep], ref[keep], p, upper=up[keep].clamp_min(0), bounds=bounds, rtol=rtol, dtype=dtype,
                             options=BabOptions(time_limit=time_limit, alpha_steps=alpha_steps, lr_alpha=alpha_lr),
                             max_elements=_MAX_ELEMENTS if max_elements is None else max_elements)
        else:
            res = certified_radius(net, x[keep], ref[keep], p, upper=up[keep].clamp_min(0), bounds=bounds, method=m, rtol=rtol, **kw)
        lower[keep] = res.lower
        evals[keep] = res.evaluations
    # a certified radius above a verified flipping point is impossible: flag it rather than report it
    clash = (lower > up * (1 + 1e-9)) & ~wrong
    if bool(clash.any()):
        warnings.warn(f"{int(clash.sum())} certified lower bound(s) exceed the given upper bound (the upper bound is "
                      "not a verified flip, or the bounds are unsound); their lower bound is set to NaN", stacklevel=2)
        lower[clash] = math.nan
    status = [MISCLASSIFIED if bool(wrong[i]) else status_of(float(lower[i]), float(up[i])) for i in range(n)]
    total = time.perf_counter() - start
    return CertifyResult(
        lower=lower, upper=torch.where(wrong, torch.zeros_like(up), up), status=status,
        seconds=torch.full((n,), total / max(n, 1), dtype=torch.float64), evaluations=evals, method=m, norm=p,
        labels=ref, total_seconds=total,
        settings={"method": m, "rtol": rtol, "alpha_steps": alpha_steps, "alpha_lr": alpha_lr,
                  "alpha_intermediate": alpha_intermediate, "intermediate": intermediate, "bounds": bounds,
                  **({"time_limit": time_limit} if bab else {}),
                  "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__},
    )
