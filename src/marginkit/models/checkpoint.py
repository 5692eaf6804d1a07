"""Checkpoints that reload by path alone, and loading of user models.

A marginkit checkpoint is a ``torch.save`` of plain data (loadable with ``weights_only=True``): the
architecture (:class:`ModelSpec`), the state dict and free-form metadata (training settings, dataset
fingerprint, accuracy, library versions).

User models come as
* a marginkit checkpoint (``*.pt`` written by :func:`save_checkpoint`),
* a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``*.pt2``),
* ``"package.module:factory"`` plus an optional state-dict file: ``factory()`` builds the model.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..results.provenance import atomic_write_bytes, library_versions
from .zoo import ModelSpec, build_model

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "load_model", "model_fingerprint"]

FORMAT = "marginkit-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint records besides the weights."""

    path: str
    spec: ModelSpec | None
    metadata: dict[str, Any] = field(default_factory=dict)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state dict: identifies the exact weights a result came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, metadata: dict[str, Any] | None = None) -> str:
    """Write ``model`` with its architecture and ``metadata`` atomically to ``path``."""
    import io

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {**(metadata or {}), "versions": library_versions(), "fingerprint": model_fingerprint(model)},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model saved by :func:`save_checkpoint` from its path alone (in eval mode)."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable marginkit checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a marginkit checkpoint (no '{FORMAT}' header); "
                         "load TorchScript or module:factory models with load_model()")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer marginkit (format {payload['format_version']})")
    spec = ModelSpec.from_dict(payload["spec"])
    model = build_model(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the recorded architecture {spec}: {exc}") from exc
    model.eval()
    return model, Checkpoint(path, spec, dict(payload.get("metadata", {})))


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def load_model(ref: str, weights: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Load a model from a marginkit checkpoint, a TorchScript file or ``"module:factory"`` (+ ``weights``).

    The model is returned in eval mode. A ``module:factory`` reference imports ``module``, calls
    ``factory()`` with no arguments and, when ``weights`` is given, loads that state dict into it.
    """
    if os.path.exists(ref):
        if weights is not None:
            raise ValueError("weights=... goes with a 'module:factory' reference, not with a file")
        if ref.endswith(".pt2"):
            try:
                program = torch.export.load(ref)
            except Exception as exc:
                raise ValueError(f"{ref} is not a loadable torch.export program: {exc}") from exc
            return program.module(), Checkpoint(ref, None, {"kind": "torch.export"})
        try:
            payload_is_ckpt = not _is_torchscript(ref)
        except OSError as exc:
            raise ValueError(f"cannot read model file {ref}: {exc}") from exc
        if payload_is_ckpt:
            return load_checkpoint(ref, map_location)
        try:
            model = torch.jit.load(ref, map_location=map_location)
        except Exception as exc:
            raise ValueError(f"{ref} looks like TorchScript but could not be loaded: {exc}") from exc
        model.eval()
        return model, Checkpoint(ref, None, {"kind": "torchscript"})
    if ":" not in ref:
        raise FileNotFoundError(f"no model file {ref!r}, and it is not a 'package.module:factory' reference")
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {mod_name!r} for model {ref!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"module {mod_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{ref}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        try:
            state = torch.load(weights, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot read state dict {weights}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"state dict {weights} does not fit {ref}(): {exc}") from exc
    model.to(map_location).eval()
    return model, Checkpoint(ref, None, {"kind": "factory", "weights": str(weights) if weights else None})
