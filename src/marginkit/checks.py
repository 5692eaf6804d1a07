"""Input validation and evaluation sanity checks shared by every algorithm.

Errors (``ValueError``/``TypeError``) are raised for inputs that would make a result wrong; warnings
(:class:`MarginkitWarning`) for settings that usually make a robustness evaluation misleading
(train mode, softmax outputs, inputs outside the box).

User-facing errors are one line that names the file or tensor at fault and says how to fix it, so that
any front end can print ``str(exc)`` as is. Their classes let a front end tell them apart from bugs:
:class:`InputError` (a ``ValueError``: bad data, model or option), :class:`FileFormatError` (an
``InputError``: a file that exists but cannot be read as what it should be) and
:class:`OutputFolderError` (an ``OSError``: an output folder that cannot be used).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = [
    "FileFormatError",
    "InputError",
    "MarginkitWarning",
    "OutputFolderError",
    "one_line",
    "check_inputs",
    "check_labels",
    "check_logits",
    "check_model_mode",
    "check_box",
    "looks_like_probabilities",
    "model_device",
]


class MarginkitWarning(UserWarning):
    """A setting that usually makes a robustness evaluation misleading."""


class InputError(ValueError):
    """Bad input (data, model, option): the message names it and the fix, on one line."""


class FileFormatError(InputError):
    """A file that exists but cannot be read as what it is meant to be (corrupt, truncated, wrong kind)."""


class OutputFolderError(OSError):
    """An output folder that cannot be used: a file, read-only, or locked by a live run."""

    def __str__(self) -> str:  # OSError(errno, msg) would print "[Errno n] msg"; keep the plain message
        return str(self.args[0]) if self.args else ""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message, shortened: for quoting a library's error inside ours."""
    text = str(exc).strip().replace("\x1b[1m", "").replace("\x1b[0m", "")
    first = text.splitlines()[0].strip() if text else ""
    if len(first) > limit and ". " in first[:limit]:
        first = first[: first.index(". ") + 1]
    if len(first) < 20:  # a bare KeyError '101' or errno says little without its type
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."



def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def check_inputs(x: torch.Tensor, name: str = "inputs", min_dim: int = 2) -> torch.Tensor:
    """Reject non-tensors, wrong ranks, empty batches and non-finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have a batch dimension: expected at least {min_dim} dims, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())
        raise ValueError(f"{name} contains NaN or infinite values in {bad} sample(s)")
    return x


def check_labels(labels: torch.Tensor, n: int, num_classes: int | None = None, name: str = "labels") -> torch.Tensor:
    """Labels must be a 1-D integer tensor of length ``n`` with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the inputs, got {tuple(labels.shape)}")
    if torch.is_floating_point(labels) or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} contain a negative value ({int(labels.min())})")
    if num_classes is not None and n and int(labels.max()) >= num_classes:
        raise ValueError(f"{name} contain class {int(labels.max())} but the model has only {num_classes} outputs")
    return labels.long()


def check_logits(logits: torch.Tensor, n: int | None = None, name: str = "logits") -> torch.Tensor:
    """Logits must be (N, C) with C >= 2 and finite."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return {name} of shape (batch, classes), got {tuple(logits.shape)}")
    if n is not None and logits.shape[0] != n:
        raise ValueError(f"the model returned {logits.shape[0]} rows of {name} for {n} inputs")
    if logits.shape[1] < 2:
        raise ValueError(f"the model must return at least 2 {name} per sample, got {logits.shape[1]}")
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(1).sum())
        raise ValueError(f"the model returned non-finite {name} (NaN or inf) for {bad} sample(s)")
    return logits


def looks_like_probabilities(logits: torch.Tensor) -> bool:
    """True when every row is non-negative and sums to one: softmax outputs, not logits."""
    if logits.numel() == 0:
        return False
    sums = logits.sum(dim=1)
    return bool((logits >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))


def check_model_mode(model: nn.Module, strict: bool = False) -> None:
    """Warn (or raise, with ``strict``) when the model is in train mode: dropout and batch-norm statistics
    would change the decision between two forward passes of the same input."""
    if model.training:
        msg = ("the model is in train mode; call model.eval() first so that dropout and batch norm do not "
               "change predictions between passes")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, MarginkitWarning, stacklevel=3)


def check_box(x: torch.Tensor, bounds: tuple[float, float], name: str = "inputs", tol: float = 1e-6) -> None:
    """Raise if inputs lie outside the box they are supposed to live in."""
    lo, hi = bounds
    if lo >= hi:
        raise ValueError(f"bounds must satisfy lower < upper, got {bounds}")
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - tol or xmax > hi + tol:
        raise ValueError(f"{name} lie in [{xmin:.4g}, {xmax:.4g}], outside the bounds [{lo}, {hi}]; "
                         "rescale them or pass bounds=...")
