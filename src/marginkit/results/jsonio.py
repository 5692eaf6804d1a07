"""JSON for results: one encoding with one policy for values JSON cannot hold.

Policy (strict RFC 8259 output, ``allow_nan=False``): ``+inf`` is written as the string ``"inf"`` and
``-inf`` as ``"-inf"`` (an infinite input margin means "no flipping point", a value worth keeping);
NaN is written as ``null`` (not computed). NumPy scalars and arrays, torch tensors, paths, enums and
dataclasses become their plain JSON form; anything else is written as ``str(obj)``.
:func:`decode_float` reads such a value back.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from typing import Any

import numpy as np

from .provenance import atomic_write_text

__all__ = ["decode_float", "dumps", "read_json", "to_jsonable", "write_json"]


def _float(f: float) -> Any:
    if math.isnan(f):
        return None
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f


def to_jsonable(obj: Any) -> Any:
    """``obj`` as nested dicts, lists, strings, finite floats, ints, bools and None (see module policy)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return _float(float(obj))
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor, without importing torch here
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in (sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def dumps(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of ``obj`` under the module's inf/NaN policy."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> str:
    """Write ``obj`` atomically as strict JSON; returns the path."""
    atomic_write_text(path, dumps(obj, indent=indent) + "\n")
    return os.fspath(path)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (values stay as written: use :func:`decode_float` for numbers that may be inf)."""
    with open(path) as fh:
        return json.load(fh)


def decode_float(value: Any) -> float:
    """A float written under this policy: ``"inf"`` / ``"-inf"`` -> +-inf, ``None`` -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        if value in ("inf", "-inf"):
            return math.inf if value == "inf" else -math.inf
        raise ValueError(f"not a number under the results JSON policy: {value!r}")
    return float(value)
