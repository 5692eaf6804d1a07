"""Check a model against the data before any work: the errors that would otherwise give wrong results.

:func:`validate_model` runs a few forward passes on a handful of samples and refuses, with one line
naming the problem and the fix (:class:`~marginkit.checks.InputError`):

* inputs of a shape the model cannot take (e.g. 3x32x32 data into an MNIST model),
* outputs that are not one logits tensor of shape (batch, classes) (tuples, dicts, extra axes),
* a class count that does not match the data (a 10-class model on a 2-class selection ``3,7``),
* a stochastic model (two passes over the same inputs differ: functional dropout, noise layers),
  unless ``allow_stochastic=True``,
* an output of one sample that depends on the rest of its batch (batch norm in train mode),
* outputs that do not depend differentiably on the inputs (input margins need gradients),
* a ``marginkit_split`` hook whose head does not reproduce the logits.

Softmax-looking outputs only warn (:class:`~marginkit.checks.MarginkitWarning`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..checks import InputError, MarginkitWarning, check_inputs, looks_like_probabilities, model_device, one_line
from ..data import Dataset
from .head import head_split_or_reason

__all__ = ["ModelCheck", "validate_model", "validate_model_for_dataset"]


@dataclass(frozen=True)
class ModelCheck:
    """What :func:`validate_model` found about a model that passed.

    ``num_outputs``: logits per sample. ``deterministic``: two passes agreed (False only with
    ``allow_stochastic``). ``feature_margin_reason``: None when a linear head split exists, else why
    feature margins are skipped. ``warnings``: the non-fatal findings, also issued as warnings.
    """

    num_outputs: int
    deterministic: bool
    feature_margin_reason: str | None
    warnings: tuple[str, ...] = ()

    @property
    def feature_margins(self) -> bool:
        return self.feature_margin_reason is None


def _first_layer_hint(model: nn.Module, data_shape: tuple[int, ...]) -> str:
    """What the model's first layer expects, when that visibly differs from the data's sample shape."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if m.in_features not in (math.prod(data_shape), data_shape[-1] if data_shape else 1):
                return f"its first layer {name or 'the model'} (Linear) takes {m.in_features} values per sample"
            return ""
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if not data_shape or data_shape[0] != m.in_channels:
                return f"its first layer {name or 'the model'} ({type(m).__name__}) takes {m.in_channels} input channels"
            return ""
    return ""


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _describe_output(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"tensor {tuple(out.shape)}"
    if isinstance(out, dict):
        return "dict with keys " + ", ".join(f"{k!r}: {_describe_output(v)}" for k, v in list(out.items())[:4])
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {len(out)}: " + ", ".join(_describe_output(v) for v in out[:4])
    return type(out).__name__


def _forward(model: nn.Module, x: torch.Tensor, data_shape: tuple[int, ...]) -> Any:
    try:
        with torch.no_grad():
            return model(x)
    except InputError:
        raise
    except Exception as exc:
        cause = f"[{type(exc).__name__}: {one_line(exc, 150)}]"
        hint = _first_layer_hint(model, data_shape)
        if hint:
            raise InputError(f"the model cannot take the data's inputs of shape {_shape_text(data_shape)} "
                             f"({math.prod(data_shape)} values per sample): {hint} {cause}; give data of the shape "
                             "the model was built for, or a model built for this data") from exc
        mode = " (it is in train mode: call model.eval())" if model.training else ""
        raise InputError(f"the model fails on a batch of {x.shape[0]} input(s) of shape {_shape_text(data_shape)}{mode} "
                         f"{cause}; check that the data has the shape the model was built for") from exc


def _as_logits(out: Any, n: int) -> torch.Tensor:
    if isinstance(out, (tuple, list, dict)):
        if isinstance(out, dict):
            keys = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 2]
            pick = f"logits_key={keys[0]!r} (CLI --logits-key {keys[0]})" if keys else "logits_key=KEY (CLI --logits-key)"
        else:
            idx = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor) and v.dim() == 2]
            pick = f"logits_key={idx[0]} (CLI --logits-key {idx[0]})" if idx else "logits_key=INDEX (CLI --logits-key)"
        raise InputError(f"the model returns a {_describe_output(out)} instead of one logits tensor; pick the logits "
                         f"with {pick}, or make forward() return the logits only")
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returns a {type(out).__name__}, not a logits tensor of shape (batch, classes)")
    if out.dim() != 2 or out.shape[0] != n:
        raise InputError(f"the model returns outputs of shape {tuple(out.shape)} for a batch of {n}; logits must have "
                         f"shape ({n}, classes): flatten or squeeze them in forward()")
    if out.shape[1] < 2:
        raise InputError(f"the model returns {out.shape[1]} output per sample; margins need one logit per class (a "
                         "binary model with one logit z can return torch.cat([-z, z], 1))")
    if not torch.is_floating_point(out):
        raise InputError(f"the model returns {out.dtype} outputs; logits must be floating point")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).any(1).sum())
        raise InputError(f"the model returns NaN or infinite logits for {bad} of {n} probe samples")
    return out


def _tol(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    scale = max(1.0, float(a.abs().max()))
    return bool((a - b).abs().max() <= rel * scale)


def validate_model(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
                   num_classes: int | None = None, class_names: Sequence[str] | None = None,
                   classes_selected: bool = False, expected_input_shape: Sequence[int] | None = None,
                   allow_stochastic: bool = False, check_gradients: bool = True, probe_size: int = 8) -> ModelCheck:
    """Refuse a model that would give wrong or meaningless margins on ``inputs`` (see module docstring).

    ``labels``: every label must be an output of the model. ``num_classes``: the exact number of classes
    the model must output (None: only the labels are checked); ``class_names`` and ``classes_selected``
    (the data were cut to a class subset and relabelled) make the mismatch message name the fix.
    ``expected_input_shape``: the shape the model was built or exported for (-1 = any), when known.
    Only the first ``probe_size`` inputs are run (a few forward passes and one backward pass).
    """
    check_inputs(inputs, "data inputs")
    data_shape = tuple(int(d) for d in inputs.shape[1:])
    if expected_input_shape is not None:
        exp = tuple(int(d) for d in expected_input_shape)
        if len(exp) != len(data_shape) or any(e not in (-1, d) for e, d in zip(exp, data_shape)):
            raise InputError(f"the data's inputs have shape {_shape_text(data_shape)} but the model was built for "
                             f"{_shape_text(exp)}; give data of that shape, or a model built for this data")
    device = model_device(model)
    probe = inputs[:probe_size].to(device)
    n = probe.shape[0]
    out = _as_logits(_forward(model, probe, data_shape), n)
    c = int(out.shape[1])
    found: list[str] = []

    if num_classes is not None and c != num_classes:
        names = f" ({', '.join(map(str, class_names))})" if class_names else ""
        if classes_selected:
            raise InputError(f"the model has {c} outputs but the data were cut to {num_classes} classes{names} and "
                             f"relabelled 0..{num_classes - 1}, so the model's output j would be read as the j-th "
                             f"selected class; drop the class selection (CLI --classes) to evaluate this {c}-class "
                             f"model, or use a model trained on exactly these {num_classes} classes in this order")
        raise InputError(f"the model has {c} outputs but the data have {num_classes} classes{names}; use a model "
                         f"trained for these classes")
    if labels is not None and labels.numel():
        top = int(labels.max())
        if top >= c:
            raise InputError(f"the data's labels go up to {top} but the model has only {c} outputs (classes 0..{c - 1}); "
                             "use a model trained for this data, or select the model's classes")

    if model.training:
        found.append("the model is in train mode; call model.eval() so that dropout and batch norm are fixed")
    again = _as_logits(_forward(model, probe, data_shape), n)
    deterministic = _tol(out, again, 1e-5)
    if not deterministic and not allow_stochastic:
        diff = float((out - again).abs().max())
        cause = ("the model is in train mode (call model.eval())" if model.training else
                 "randomness in forward() although the model is in eval mode, e.g. F.dropout(x, p) (its training flag "
                 "defaults to True: use nn.Dropout or F.dropout(x, p, training=self.training)) or added noise")
        raise InputError(f"the model is stochastic: two forward passes of the same inputs differ by up to {diff:.3g}; "
                         f"likely cause: {cause}; margins of a random function are meaningless; make forward() "
                         "deterministic, or pass allow_stochastic=True (CLI --allow-stochastic) to go on anyway")
    if deterministic and n > 1:
        try:
            single = _as_logits(_forward(model, probe[:1], data_shape), 1)
        except InputError as exc:
            raise InputError(f"the model runs on a batch of {n} samples but fails on a single one, so its output "
                             "depends on the batch (batch norm in train mode or without running statistics? call "
                             "model.eval()); margins need a per-sample function") from exc
        if not _tol(out[:1], single, 1e-4):
            raise InputError("the model's output for a sample depends on the other samples in its batch (batch norm "
                             "in train mode? call model.eval()); margins need a per-sample function")

    if check_gradients:
        x = probe[: min(n, 2)].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            try:
                y = model(x)
                y = y if isinstance(y, torch.Tensor) else _as_logits(y, x.shape[0])
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"the model fails when gradients are tracked: {type(exc).__name__}: "
                                 f"{one_line(exc, 150)}") from exc
        if not y.requires_grad:
            raise InputError("the model's logits do not depend differentiably on its inputs (torch.no_grad(), "
                             ".detach() or a non-torch step in forward()?); input margins need gradients")

    split, reason = head_split_or_reason(model)
    if split is not None:
        with torch.no_grad():
            z = split.features(probe)
            via = split.head(z.reshape(z.shape[0], -1))
        if via.shape != out.shape or not _tol(out, via, 1e-4):
            detail = (f"shape {tuple(via.shape)} vs {tuple(out.shape)}" if via.shape != out.shape
                      else f"max |difference| {float((out - via).abs().max()):.3g}")
            raise InputError(f"the head split of {type(model).__name__} (marginkit_split() or its last nn.Linear) does "
                             f"not reproduce the model's logits ({detail}); return (features, head) with "
                             "model(x) == head(features(x).flatten(1))")
    if looks_like_probabilities(out):
        found.append("the outputs look like probabilities (rows >= 0 summing to 1): margins are defined on logits; "
                     "remove the final softmax")
    for w in found:
        warnings.warn(w, MarginkitWarning, stacklevel=2)
    return ModelCheck(num_outputs=c, deterministic=deterministic, feature_margin_reason=reason, warnings=tuple(found))


def validate_model_for_dataset(model: nn.Module, dataset: Dataset, split: str = "test", *,
                               expected_input_shape: Sequence[int] | None = None, allow_stochastic: bool = False,
                               check_gradients: bool = True, probe_size: int = 8) -> ModelCheck:
    """:func:`validate_model` on a :class:`~marginkit.data.Dataset` split, with the class rule of its source.

    The model must output exactly ``dataset.num_classes`` logits when the classes were selected (and
    relabelled) or the class count is known (built-ins, CIFAR, an npz with ``class_names``); for data
    whose class count is only the largest label + 1 (an npz without names, IDX files), every label must
    be an output of the model.
    """
    x, y = dataset.split(split)
    if x.shape[0] == 0:
        raise InputError(f"{dataset.name}: the {split} split is empty")
    selected = "classes" in dataset.meta
    exact = selected or bool(dataset.meta.get("num_classes_known", True))
    return validate_model(model, x, y, num_classes=dataset.num_classes if exact else None,
                          class_names=dataset.class_names if exact else None, classes_selected=selected,
                          expected_input_shape=expected_input_shape, allow_stochastic=allow_stochastic,
                          check_gradients=check_gradients, probe_size=probe_size)
