"""Checkpoints that reload by path alone, the one ``torch.load`` of marginkit, and loading of user models.

A marginkit checkpoint is a ``torch.save`` of plain data (loadable with ``weights_only=True``): the
architecture (:class:`ModelSpec`), the state dict and free-form metadata (training settings, dataset
fingerprint, accuracy, library versions).

User models come as (see ``docs/own-model-and-data.md``)

* a marginkit checkpoint (``*.pt`` written by :func:`save_checkpoint`),
* a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``torch.export.save``, ``*.pt2``),
* ``"package.module:factory"`` or ``"path/to/file.py:factory"`` plus a state-dict file: ``factory()``
  builds the model, the state dict fills in its weights. The module is looked up in the working
  directory first, then on ``sys.path`` (``PYTHONPATH``); without weights the call is refused unless
  ``random_init=True``.

Every file is read through :func:`load_torch_file`, whose errors are one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..checks import FileFormatError, InputError, one_line
from ..results.provenance import atomic_write_bytes, library_versions
from .zoo import ModelSpec, build_model

__all__ = ["Checkpoint", "ExportedModel", "SelectLogits", "save_checkpoint", "load_checkpoint", "load_model",
           "load_torch_file", "model_fingerprint", "torch_file_kind"]

FORMAT = "marginkit-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint records besides the weights.

    ``metadata["kind"]`` is ``"marginkit"``, ``"torchscript"``, ``"torch.export"`` or ``"factory"``;
    ``metadata["input_shape"]`` the input shape the model was built or exported for, when known.
    """

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


def torch_file_kind(path: str | os.PathLike) -> str:
    """``"torchscript"``, ``"torch.export"``, ``"torch.save"`` (a zip written by ``torch.save``) or
    ``"other"`` (not a zip: a legacy ``torch.save`` file, or not PyTorch at all), from the file's contents."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return "other"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return "other"
    if any(n.endswith("archive_format") or n.endswith("serialized_exported_program.json") for n in names):
        return "torch.export"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "torch.save"


def _check_readable_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path}: permission denied (the file is not readable by this user)")
    if os.path.getsize(path) == 0:
        raise FileFormatError(f"{what} {path} is empty (0 bytes): an interrupted save? save it again")


_PICKLE_HINT = (
    "marginkit reads files with torch.load(weights_only=True), which refuses pickled code because unpickling can "
    "run arbitrary code; save the weights instead, torch.save(model.state_dict(), PATH), and load them with a "
    "'module:factory' model plus weights=PATH (CLI --weights PATH), or save the model as TorchScript, "
    "torch.jit.save(torch.jit.script(model), PATH)"
)


def load_torch_file(path: str | os.PathLike, *, weights_only: bool = True, what: str = "checkpoint",
                    map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load`` with one-line errors naming the file (``what`` names its role, e.g. ``"weights file"``).

    A missing file, a folder or an unreadable file raise ``FileNotFoundError``/``IsADirectoryError``/
    ``PermissionError``; a truncated or corrupt file, a TorchScript or ``torch.export`` file (which
    ``torch.load`` cannot read) and a pickled object refused by ``weights_only=True`` (e.g. a
    ``torch.save(model)``; the message says how to save a state dict or TorchScript instead) raise
    :class:`~marginkit.checks.FileFormatError`.
    """
    path = os.fspath(path)
    _check_readable_file(path, what)
    kind = torch_file_kind(path)
    if kind in ("torchscript", "torch.export"):
        raise FileFormatError(f"{what} {path} is a {kind} file, not a torch.save file; give it as the model "
                              "itself (load_model(PATH), CLI --model PATH), not as weights")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if weights_only and found:
            raise FileFormatError(f"{what} {path} holds a pickled Python object ({found.group(1)}), e.g. a whole model "
                                  f"saved with torch.save(model); {_PICKLE_HINT}") from exc
        raise FileFormatError(f"{path} is not a readable {what}: not a PyTorch file, or truncated or corrupt "
                              f"({one_line(exc, 120)}); save it again with torch.save") from exc
    except Exception as exc:
        raise FileFormatError(f"{path} is not a readable {what}: not a PyTorch file, or truncated or corrupt "
                              f"({one_line(exc, 120)}); save it again with torch.save") from exc


def _checkpoint_from_payload(path: str, payload: Any) -> tuple[nn.Module, Checkpoint]:
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise FileFormatError(f"{path} was written by a newer marginkit (checkpoint format {payload['format_version']}); "
                              "upgrade marginkit")
    spec = ModelSpec.from_dict(payload["spec"])
    model = build_model(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise FileFormatError(f"{path}: weights do not fit the recorded architecture {spec}: {one_line(exc)}") from exc
    model.eval()
    return model, Checkpoint(path, spec, {"kind": "marginkit", "input_shape": list(spec.input_shape),
                                          **dict(payload.get("metadata", {}))})


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model saved by :func:`save_checkpoint` from its path alone (in eval mode)."""
    path = os.fspath(path)
    payload = load_torch_file(path, what="checkpoint", map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if _is_state_dict(payload) or (isinstance(payload, dict) and _is_state_dict(payload.get("state_dict"))):
            raise InputError(f"{path} is a state dict (weights without an architecture): load it into the model that "
                             f"defines them, load_model('module:factory', weights='{path}') (CLI --model module:factory "
                             f"--weights {path})")
        raise InputError(f"{path} holds a {type(payload).__name__}, not a marginkit checkpoint; give a checkpoint "
                         "written by marginkit, a TorchScript or torch.export file, or 'module:factory' with weights")
    return _checkpoint_from_payload(path, payload)


class SelectLogits(nn.Module):
    """Wrap a model that returns a tuple, list or dict so that it returns the logits ``output[key]`` only.

    A ``marginkit_split`` hook of the wrapped model is used for the wrapper (its head must produce those
    logits; :func:`marginkit.models.validate_model` checks that).
    """

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            raise InputError(f"logits_key={self.key!r} was given but the model returns a single tensor; drop logits_key")
        try:
            picked = out[self.key]
        except (KeyError, IndexError, TypeError) as exc:
            have = list(out.keys()) if isinstance(out, Mapping) else f"indices 0..{len(out) - 1}"
            raise InputError(f"logits_key={self.key!r} is not in the model's {type(out).__name__} output "
                             f"(it has {have})") from exc
        if not isinstance(picked, torch.Tensor):
            raise InputError(f"the model's output [{self.key!r}] is a {type(picked).__name__}, not a logits tensor")
        return picked


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module: always in eval mode (an exported graph cannot switch), and
    batches of any size are run in slices of the batch size it was exported with when that size is static."""

    def __init__(self, graph: nn.Module, batch_size: int | None) -> None:
        super().__init__()
        self.graph = graph
        self.batch_size = batch_size
        self.training = False
        graph.training = False  # cannot call graph.eval(): exported modules refuse train()/eval()

    def train(self, mode: bool = True) -> "ExportedModel":
        if mode:
            raise InputError("a torch.export program cannot be switched to train mode; train the original module")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.batch_size
        if b is None or x.shape[0] == b:
            return self.graph(x)
        outs = []
        for start in range(0, x.shape[0], b):
            xb = x[start : start + b]
            m = xb.shape[0]
            if m < b:  # pad the last slice with copies of its first row; the extra outputs are dropped
                xb = torch.cat([xb, xb[:1].expand(b - m, *xb.shape[1:])])
            outs.append(self.graph(xb)[:m])
        return torch.cat(outs)


def _load_exported(path: str) -> tuple[nn.Module, dict[str, Any]]:
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise FileFormatError(f"{path} is not a loadable torch.export program (truncated, or saved by another torch "
                              f"version?): {one_line(exc, 120)}") from exc
    batch: int | None = None
    shape: list[int] | None = None
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user and "val" in node.meta:
            dims = node.meta["val"].shape
            batch = int(dims[0]) if isinstance(dims[0], int) else None
            shape = [int(d) if isinstance(d, int) else -1 for d in dims[1:]]
            break
    meta = {"kind": "torch.export", "exported_batch": batch, "input_shape": shape}
    return ExportedModel(program.module(), batch), meta


def _import_module(mod_name: str, ref: str) -> Any:
    """Import ``mod_name`` (a dotted name, or a path to a ``.py`` file) with the working directory searched first."""
    if mod_name.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(mod_name))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model factory file {mod_name} (in {ref!r}): no such file")
        name = "marginkit_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InputError(f"cannot import {path} as a Python module (in {ref!r})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        folder = os.path.dirname(path)
        added = folder not in sys.path
        if added:
            sys.path.insert(0, folder)  # so that the file's own sibling imports work
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise InputError(f"importing {path} (in {ref!r}) failed: {type(exc).__name__}: {one_line(exc)}") from exc
        finally:
            if added:
                sys.path.remove(folder)
        return module
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise InputError(f"cannot find module {mod_name!r} for model {ref!r}: looked in the working directory "
                             f"({cwd}) and on PYTHONPATH; run from the folder holding "
                             f"{mod_name.replace('.', '/')}.py, add its folder to PYTHONPATH, or give the file: "
                             f"path/to/{mod_name.rsplit('.', 1)[-1]}.py:{ref.rpartition(':')[2]}") from exc
        raise InputError(f"importing {mod_name!r} for model {ref!r} failed: {one_line(exc)} (a package it needs "
                         "is not installed)") from exc
    except Exception as exc:
        raise InputError(f"importing {mod_name!r} for model {ref!r} failed: {type(exc).__name__}: {one_line(exc)}") from exc
    finally:
        if added:
            sys.path.remove(cwd)


def _state_dict_from(payload: Any, weights: str) -> dict[str, torch.Tensor]:
    if isinstance(payload, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in payload and _is_state_dict(payload[key]):
                return dict(payload[key])
        if _is_state_dict(payload):
            return dict(payload)
    raise InputError(f"weights file {weights} holds a {type(payload).__name__}, not a state dict; save one with "
                     "torch.save(model.state_dict(), PATH)")


def _load_weights(model: nn.Module, weights: str, ref: str, map_location: str | torch.device) -> None:
    state = _state_dict_from(load_torch_file(weights, what="weights file", map_location=map_location), weights)
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from nn.DataParallel/DDP
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:2])}{'; ...' if len(shapes) > 2 else ''}")
        raise InputError(f"weights file {weights} does not fit the model built by {ref}(): {', '.join(parts)}; give "
                         "the weights saved from this architecture")
    model.load_state_dict(state)


def load_model(ref: str, weights: str | os.PathLike | None = None, map_location: str | torch.device = "cpu", *,
               random_init: bool = False, logits_key: int | str | None = None) -> tuple[nn.Module, Checkpoint]:
    """Load a model (in eval mode) from a file or a ``module:factory`` reference.

    ``ref``: a marginkit checkpoint, a TorchScript file, a ``torch.export`` program (``.pt2``), or
    ``"module:factory"`` / ``"path/to/file.py:factory"``: ``factory()`` is called with no arguments and
    ``weights`` (a state dict file, also one saved from ``nn.DataParallel``) is loaded into it. Without
    ``weights`` a factory model is refused unless ``random_init=True`` (its initial weights are then
    used on purpose). The module is imported with the working directory searched first, then
    ``PYTHONPATH``. ``logits_key``: for a model returning a tuple/list/dict, the index or key of the
    logits; the model is wrapped in :class:`SelectLogits`.
    """
    ref = os.fspath(ref)
    model: nn.Module
    if os.path.exists(ref):
        if weights is not None:
            raise InputError(f"weights={os.fspath(weights)} goes with a 'module:factory' model; {ref} is a model file "
                             "that holds its own weights")
        _check_readable_file(ref, "model file")
        kind = torch_file_kind(ref)
        if kind == "torch.export" or (kind == "other" and ref.endswith(".pt2")):
            model, meta = _load_exported(ref)
            info = Checkpoint(ref, None, meta)
        elif kind == "torchscript":
            try:
                model = torch.jit.load(ref, map_location=map_location)
            except Exception as exc:
                raise FileFormatError(f"{ref} looks like TorchScript but could not be loaded (truncated or corrupt?): "
                                      f"{one_line(exc, 120)}") from exc
            model.eval()
            info = Checkpoint(ref, None, {"kind": "torchscript"})
        else:
            model, info = load_checkpoint(ref, map_location)
        info.metadata["resolved_path"] = os.path.realpath(ref)
    else:
        mod_name, sep, attr = ref.rpartition(":")
        if not sep or not mod_name or not attr:
            raise FileNotFoundError(f"model {ref}: no such file, and not a 'module:factory' reference")
        if weights is None and not random_init:
            raise InputError(f"{ref} builds a model but no weights were given: pass weights=STATE_DICT_FILE (CLI "
                             "--weights), or random_init=True (CLI --random-init) to use its initial weights on purpose")
        if weights is not None and random_init:
            raise InputError("random_init=True and weights=... contradict each other; give one of them")
        module = _import_module(mod_name, ref)
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
            raise InputError(f"module {mod_name!r} has no callable {attr!r} (model {ref!r}); it has: {', '.join(names)}")
        try:
            model = factory()
        except Exception as exc:
            raise InputError(f"calling {ref}() failed: {type(exc).__name__}: {one_line(exc)}; the factory must build "
                             "the model with no arguments") from exc
        if not isinstance(model, nn.Module):
            raise InputError(f"{ref}() returned a {type(model).__name__}, not a torch.nn.Module")
        if weights is not None:
            _load_weights(model, os.fspath(weights), ref, map_location)
        model.to(map_location).eval()
        info = Checkpoint(ref, None, {"kind": "factory", "random_init": random_init,
                                      "weights": os.path.realpath(os.fspath(weights)) if weights is not None else None})
    if logits_key is not None:
        model = SelectLogits(model, logits_key).eval()
        info.metadata["logits_key"] = logits_key
    return model, info
