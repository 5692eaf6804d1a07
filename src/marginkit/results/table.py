"""The per-sample results table: one schema, Parquet parts with a JSON sidecar, resumable.

A run writes into a directory::

    run_dir/results.json        settings, seed, library versions, model and data fingerprints, status
    run_dir/parts/part-*.parquet  chunks of finished samples, each written atomically
    run_dir/results.parquet     all rows, one per sample index, written by ``finalize()``

An interrupted run is restarted with the same settings: the store reports which sample indices are
done, the run computes only the others, and ``finalize()`` merges parts without duplicating rows.
Restarting with different settings is refused (it would mix two experiments in one table).
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .provenance import atomic_write_bytes, atomic_write_text, library_versions

__all__ = ["SCHEMA", "COLUMNS", "ResultsStore", "read_results", "empty_columns"]

SCHEMA_VERSION = 1

# name -> (arrow type, description). The one per-sample schema of marginkit.
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "index": (pa.int64(), "position of the sample in the evaluated split"),
    "label": (pa.int64(), "true label"),
    "prediction": (pa.int64(), "predicted class on the clean input"),
    "logit_margin": (pa.float64(), "top logit minus runner-up (eq. 4), >= 0"),
    "feature_margin": (pa.float64(), "distance of h(x) to the nearest head hyperplane (eq. 2); NaN without a linear head"),
    "input_margin_upper": (pa.float64(), "upper bound on d_in: norm of a verified flipping perturbation; inf if none found; NaN if not computed"),
    "input_margin_lower": (pa.float64(), "certified lower bound on d_in; NaN if not computed"),
    "norm": (pa.string(), "l1, l2 or linf"),
    "method": (pa.string(), "how the input margin was obtained"),
    "status": (pa.string(), "one of marginkit.results.status.STATUSES: exact | bracketed | upper-only | lower-only | failed | misclassified | not_computed"),
    "seconds": (pa.float64(), "wall time spent on this sample's input margin"),
    "adversarial_class": (pa.int64(), "class the best verified adversarial is classified as; -1 if none"),
    "passes": (pa.int64(), "forward + backward passes spent on this sample's input margin; -1 if not computed"),
}
# The columns of the first schema version: every table has them; later additions are filled in on read.
CORE_COLUMNS = ("index", "label", "prediction", "logit_margin", "feature_margin", "input_margin_upper",
                "input_margin_lower", "norm", "method", "status", "seconds")
SCHEMA = pa.schema([(name, typ) for name, (typ, _) in COLUMNS.items()])


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Column arrays of length ``n`` filled with 'unknown' values (NaN, -1, empty strings)."""
    out: dict[str, np.ndarray] = {}
    for name, (typ, _) in COLUMNS.items():
        if pa.types.is_integer(typ):
            out[name] = np.full(n, -1, dtype=np.int64)
        elif pa.types.is_floating(typ):
            out[name] = np.full(n, np.nan)
        else:
            out[name] = np.full(n, "", dtype=object)
    return out


def _to_table(rows: Mapping[str, Any] | pd.DataFrame) -> pa.Table:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame({k: np.asarray(v) for k, v in rows.items()})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results rows lack column(s) {missing}; every row must carry the full schema")
    extra = [c for c in df.columns if c not in COLUMNS]
    fields = list(SCHEMA) + [pa.field(c, pa.Table.from_pandas(df[[c]], preserve_index=False).schema.field(c).type) for c in extra]
    return pa.Table.from_pandas(df[list(COLUMNS) + extra], schema=pa.schema(fields), preserve_index=False)


class ResultsStore:
    """Resumable, atomic writer of one results table (see module docstring)."""

    def __init__(self, directory: str | os.PathLike, settings: Mapping[str, Any], resume: bool = True) -> None:
        self.directory = os.fspath(directory)
        self.parts_dir = os.path.join(self.directory, "parts")
        self.meta_path = os.path.join(self.directory, "results.json")
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        os.makedirs(self.parts_dir, exist_ok=True)
        if os.path.exists(self.meta_path):
            old = self._read_meta()
            if not resume:
                self._clear()
            elif old.get("settings") != self.settings:
                diff = sorted(k for k in set(old.get("settings", {})) | set(self.settings)
                              if old.get("settings", {}).get(k) != self.settings.get(k))
                raise ValueError(f"{self.directory} holds results of a run with other settings (differs in: "
                                 f"{', '.join(diff)}); choose another output directory or pass overwrite")
        self.meta = {"schema_version": SCHEMA_VERSION, "settings": self.settings, "versions": library_versions(),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "complete": False,
                     "columns": {k: d for k, (_, d) in COLUMNS.items()}}
        if os.path.exists(self.meta_path):
            self.meta["created"] = self._read_meta().get("created", self.meta["created"])
        self._write_meta()
        self._done = self._scan_done()

    def _read_meta(self) -> dict[str, Any]:
        try:
            with open(self.meta_path) as fh:
                return json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.meta_path}: unreadable results sidecar ({exc})") from exc

    def _write_meta(self) -> None:
        atomic_write_text(self.meta_path, json.dumps(self.meta, indent=2, default=str))

    def _clear(self) -> None:
        for f in os.listdir(self.parts_dir):
            os.unlink(os.path.join(self.parts_dir, f))
        final = os.path.join(self.directory, "results.parquet")
        if os.path.exists(final):
            os.unlink(final)

    def _part_files(self) -> list[str]:
        return sorted(os.path.join(self.parts_dir, f) for f in os.listdir(self.parts_dir) if f.endswith(".parquet"))

    def _scan_done(self) -> set[int]:
        done: set[int] = set()
        for f in self._part_files():
            done.update(pq.read_table(f, columns=["index"]).column("index").to_pylist())
        return done

    @property
    def done(self) -> set[int]:
        """Sample indices already written."""
        return set(self._done)

    def pending(self, indices: Iterable[int]) -> np.ndarray:
        """The subset of ``indices`` not yet written, in the given order."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return idx[~np.isin(idx, np.fromiter(self._done, dtype=np.int64, count=len(self._done)))]

    def append(self, rows: Mapping[str, Any] | pd.DataFrame) -> int:
        """Write the rows whose index is not written yet as one atomic part; returns how many were new."""
        table = _to_table(rows)
        idx = np.asarray(table.column("index").to_numpy(), dtype=np.int64)
        if len(np.unique(idx)) != len(idx):
            raise ValueError("results rows repeat a sample index within one append")
        keep = ~np.isin(idx, np.fromiter(self._done, dtype=np.int64, count=len(self._done)))
        if not keep.any():
            return 0
        table = table.filter(pa.array(keep))
        n_parts = len(self._part_files())
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(os.path.join(self.parts_dir, f"part-{n_parts:06d}-{int(idx[keep][0])}.parquet"), buf.getvalue())
        self._done.update(idx[keep].tolist())
        return int(keep.sum())

    def finalize(self, extra_meta: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Merge the parts into ``results.parquet`` (one row per index, sorted) and mark the run complete."""
        files = self._part_files()
        if files:
            table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
            df = table.to_pandas()
            df = df.drop_duplicates("index", keep="first").sort_values("index").reset_index(drop=True)
        else:
            df = pd.DataFrame({k: pd.Series(dtype=object) for k in COLUMNS})
        buf = io.BytesIO()
        pq.write_table(_to_table(df) if len(df) else pa.Table.from_pandas(df, preserve_index=False), buf)
        atomic_write_bytes(os.path.join(self.directory, "results.parquet"), buf.getvalue())
        self.meta.update({"complete": True, "rows": int(len(df)), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if extra_meta:
            self.meta.update(json.loads(json.dumps(dict(extra_meta), default=str)))
        self._write_meta()
        return df


def read_results(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a results table (its directory or its ``results.parquet``) and its sidecar."""
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    table_path = os.path.join(directory, "results.parquet") if os.path.isdir(path) else path
    if not os.path.exists(table_path):
        raise FileNotFoundError(f"no results table at {table_path} (did the run finish?)")
    try:
        df = pq.read_table(table_path).to_pandas()
    except Exception as exc:
        raise ValueError(f"{table_path}: unreadable Parquet file ({exc})") from exc
    meta_path = os.path.join(directory, "results.json")
    meta: dict[str, Any] = {}
    if os.path.exists(meta_path):
        with open(meta_path) as fh:
            meta = json.load(fh)
    missing = [c for c in CORE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{table_path}: not a marginkit results table (missing columns {missing})")
    defaults = empty_columns(len(df))
    for c in COLUMNS:  # columns added to the schema later read as 'unknown' in older tables
        if c not in df.columns:
            df[c] = defaults[c]
    return df, meta
