"""The per-sample results table: one schema, Parquet parts with a JSON sidecar, resumable.

A run writes into a directory::

    run_dir/results.json        settings, seed, library versions, model and data fingerprints, status
    run_dir/parts/part-*.parquet  chunks of finished samples, each written atomically
    run_dir/results.parquet     all rows, one per sample index, written by ``finalize()``

    run_dir/marginkit.lock      pid and hostname of the run writing the folder, while it runs

An interrupted run is restarted with the same settings: the store reports which sample indices are
done, the run computes only the others, and ``finalize()`` merges parts without duplicating rows.
Restarting with different settings is refused (it would mix two experiments in one table), and so is
a second run on a folder that a live run holds.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import warnings
import weakref
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..checks import FileFormatError, InputError, MarginkitWarning, OutputFolderError, one_line
from .provenance import atomic_write_bytes, atomic_write_text, file_fingerprint, library_versions

__all__ = ["SCHEMA", "COLUMNS", "LOCK_NAME", "ResultsStore", "acquire_lock", "read_results", "release_lock",
           "empty_columns"]

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
    "seconds": (pa.float64(), "wall time of the batch this sample's margins were computed in, divided evenly over "
                              "its samples (seconds); sums to the run's compute time, but samples of one batch share "
                              "one value"),
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


LOCK_NAME = "marginkit.lock"
# A lock file that cannot be parsed is taken for a run that is still writing it for this long.
_UNREADABLE_LOCK_GRACE_S = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the process exists but belongs to another user
        return True
    except OSError:
        return False
    return True


def _read_lock(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            info = json.load(fh)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _lock_is_stale(path: str, info: dict[str, Any] | None) -> tuple[bool, str]:
    """(stale, who holds it): stale when the holder is a dead process on this host."""
    if info is None:
        try:
            age = time.time() - os.path.getmtime(path)
        except OSError:
            return True, "nobody"
        return age > _UNREADABLE_LOCK_GRACE_S, f"an unreadable lock file written {age:.0f} s ago"
    pid, host = info.get("pid"), info.get("hostname")
    who = f"process {pid} on {host} (started {info.get('started', '?')})"
    if host != socket.gethostname() or not isinstance(pid, int):
        return False, who  # cannot check a process on another machine: assume it runs
    return not _pid_alive(pid), who


def acquire_lock(directory: str) -> str:
    """Create ``directory/marginkit.lock`` (pid, hostname, start time) or fail if a live run holds it.

    A lock left by a process that no longer runs on this host is stale: it is taken over with a
    :class:`~marginkit.checks.MarginkitWarning`. Returns the lock path; release it with :func:`release_lock`.
    """
    path = os.path.join(directory, LOCK_NAME)
    info = {"pid": os.getpid(), "hostname": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read_lock(path)
            stale, who = _lock_is_stale(path, holder)
            if not stale:
                same = holder is not None and holder.get("pid") == os.getpid() and holder.get("hostname") == info["hostname"]
                where = "another results store of this process" if same else who
                raise OutputFolderError(
                    f"output folder {directory} is in use by {where}: wait for that run to finish or choose another "
                    f"output folder (if no run is active, delete {path})") from None
            warnings.warn(f"taking over the stale lock of {who} in {directory}: that run ended without finishing",
                          MarginkitWarning, stacklevel=3)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        except PermissionError as exc:
            raise OutputFolderError(f"output folder {directory} is not writable ({exc.strerror}); choose another "
                                    "output folder or fix its permissions") from exc
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        return path
    raise OutputFolderError(f"could not take the lock {path}: other runs keep taking it; choose another output folder")


def release_lock(path: str) -> None:
    """Remove a lock taken by :func:`acquire_lock` in this process (a lock of another process is kept)."""
    info = _read_lock(path)
    if info is not None and info.get("pid") == os.getpid() and info.get("hostname") == socket.gethostname():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _same_value(old: Any, new: Any, old_cwd: str | None) -> bool:
    """Settings match when equal, or when both are paths that resolve to the same file."""
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str) and old and new:
        base = old_cwd or os.getcwd()
        a = os.path.realpath(os.path.join(base, os.path.expanduser(old)))
        b = os.path.realpath(os.path.expanduser(new))
        return a == b and os.path.exists(b)
    return False


# Stores of this process by resolved folder: a second store on a folder supersedes the first.
_OPEN_STORES: dict[str, "weakref.ref[ResultsStore]"] = {}


def _prepare_directory(directory: str) -> bool:
    """Create ``directory`` (and parents) if needed; returns whether it was created. One-line errors for
    a path that is a file or a folder that cannot be written."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OutputFolderError(f"output folder {directory} is a file, not a folder; choose another output folder")
    created = not os.path.exists(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputFolderError(f"output folder {directory}: a parent of it is a file; choose another output folder") from None
    except OSError as exc:
        raise OutputFolderError(f"cannot create output folder {directory} ({exc.strerror}); choose a writable "
                                "output folder") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {directory} is read-only; choose a writable output folder or fix its "
                                "permissions")
    return created


class ResultsStore:
    """Resumable, atomic, locked writer of one results table (see module docstring).

    While a store is open its folder holds ``marginkit.lock`` (pid, hostname): a store of another
    process on the same folder, with or without ``resume=False``, fails with
    :class:`~marginkit.checks.OutputFolderError` instead of racing it. A second store of the same process
    (a rerun in a notebook after an error) closes the first one with a warning; the first then refuses
    to write. The lock goes with :meth:`close` (``with ResultsStore(...) as store:``), when the
    store is garbage collected or when the process exits; a lock of a killed process is detected as
    stale and taken over with a warning.

    Nothing is written before the first :meth:`append` or :meth:`finalize`: a run refused by a check
    after opening the store leaves no ``results.json`` behind (and :meth:`close` removes a folder the
    store created and never wrote into). A folder whose sidecar records no finished rows is reused
    whatever its settings, since no work would be lost.

    Resuming needs the same ``settings``; a string setting that names a path matches another spelling
    of the same file (relative vs absolute, symlinks). ``inputs`` maps names to input files (model,
    weights, data): they are recorded by resolved path and content fingerprint, and a resume whose
    input files differ in content is refused, whatever their paths.
    """

    def __init__(self, directory: str | os.PathLike, settings: Mapping[str, Any], resume: bool = True, *,
                 inputs: Mapping[str, str | os.PathLike | None] | None = None) -> None:
        self.directory = os.fspath(directory)
        self.parts_dir = os.path.join(self.directory, "parts")
        self.meta_path = os.path.join(self.directory, "results.json")
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.inputs = {k: _describe_input(v) for k, v in (inputs or {}).items()}
        self._created_dir = _prepare_directory(self.directory)
        self._superseded = False
        key = os.path.realpath(self.directory)
        earlier = _OPEN_STORES.get(key)
        earlier_store = earlier() if earlier is not None else None
        if earlier_store is not None and earlier_store._lock_path:
            # The same process opens the folder again (a notebook cell rerun after an error, a retried call):
            # the earlier store is closed for writing instead of blocking the folder until it is collected.
            warnings.warn(f"an earlier results store of this process on {self.directory} was still open; it is closed "
                          "now (use `with ResultsStore(...)` to close stores when a run ends)", MarginkitWarning,
                          stacklevel=2)
            earlier_store._supersede()
        self._lock_path: str | None = acquire_lock(self.directory)
        self._release = weakref.finalize(self, release_lock, self._lock_path)
        _OPEN_STORES[key] = weakref.ref(self)
        self._written = False
        try:
            self._open(resume)
        except BaseException:
            self.close()
            raise

    def _open(self, resume: bool) -> None:
        self._created_parts = not os.path.isdir(self.parts_dir)
        os.makedirs(self.parts_dir, exist_ok=True)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if os.path.exists(self.meta_path):
            old = self._read_meta()
            has_rows = bool(self._part_files()) or os.path.exists(os.path.join(self.directory, "results.parquet"))
            if not resume or not has_rows:
                self._clear()
            else:
                self._check_resume(old)
                created = old.get("created", created)
                self._written = True  # the sidecar on disk is this run's
        self.meta = {"schema_version": SCHEMA_VERSION, "settings": self.settings, "inputs": self.inputs,
                     "versions": library_versions(), "cwd": os.getcwd(), "created": created, "complete": False,
                     "columns": {k: d for k, (_, d) in COLUMNS.items()}}
        self._done = self._scan_done()
        if self._written:
            self._write_meta()

    def _check_resume(self, old: dict[str, Any]) -> None:
        old_settings, old_cwd = old.get("settings", {}), old.get("cwd")
        diff = sorted(k for k in set(old_settings) | set(self.settings)
                      if not _same_value(old_settings.get(k), self.settings.get(k), old_cwd))
        if diff:
            raise InputError(f"{self.directory} holds results of a run with other settings (differs in: "
                             f"{', '.join(diff)}); choose another output folder or overwrite it")
        old_inputs = old.get("inputs", {})
        changed = sorted(k for k in set(old_inputs) & set(self.inputs)
                         if old_inputs[k].get("fingerprint") != self.inputs[k].get("fingerprint"))
        if changed:
            raise InputError(f"{self.directory} holds results for other contents of input(s) {', '.join(changed)} "
                             "(the files changed since); choose another output folder or overwrite it")

    def _supersede(self) -> None:
        self._superseded = True
        self.close()

    def _check_open(self) -> None:
        if self._superseded:
            raise OutputFolderError(f"this results store of {self.directory} was closed because a newer one of this "
                                    "process opened the folder; write through the newer store")

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder's lock; folders this store created and never wrote into are removed."""
        lock, self._lock_path = self._lock_path, None
        if lock:
            release_lock(lock)
        self._release.detach()
        if not self._written:
            for d, made in ((self.parts_dir, getattr(self, "_created_parts", False)), (self.directory, self._created_dir)):
                if made:
                    try:
                        os.rmdir(d)  # only succeeds when empty
                    except OSError:
                        pass

    def _read_meta(self) -> dict[str, Any]:
        try:
            with open(self.meta_path) as fh:
                return json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise FileFormatError(f"{self.meta_path}: unreadable results sidecar ({one_line(exc)}); delete it or "
                                  "choose another output folder") from exc

    def _write_meta(self) -> None:
        self._check_open()
        self._written = True
        atomic_write_text(self.meta_path, json.dumps(self.meta, indent=2, default=str))

    def _clear(self) -> None:
        for f in os.listdir(self.parts_dir):
            os.unlink(os.path.join(self.parts_dir, f))
        for f in ("results.parquet", "results.json"):
            if os.path.exists(os.path.join(self.directory, f)):
                os.unlink(os.path.join(self.directory, f))

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
        self._check_open()
        table = _to_table(rows)
        idx = np.asarray(table.column("index").to_numpy(), dtype=np.int64)
        if len(np.unique(idx)) != len(idx):
            raise ValueError("results rows repeat a sample index within one append")
        keep = ~np.isin(idx, np.fromiter(self._done, dtype=np.int64, count=len(self._done)))
        if not keep.any():
            return 0
        if not self._written:
            self._write_meta()
        table = table.filter(pa.array(keep))
        n_parts = len(self._part_files())
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(os.path.join(self.parts_dir, f"part-{n_parts:06d}-{int(idx[keep][0])}.parquet"), buf.getvalue())
        self._done.update(idx[keep].tolist())
        return int(keep.sum())

    def finalize(self, extra_meta: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Merge the parts into ``results.parquet`` (one row per index, sorted) and mark the run complete.

        The lock is kept (a summary may still be written next to the table) until :meth:`close`.
        """
        self._check_open()
        files = self._part_files()
        if files:
            table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
            df = table.to_pandas()
            df = df.drop_duplicates("index", keep="first").sort_values("index").reset_index(drop=True)
        else:
            df = pd.DataFrame({k: pd.Series(dtype=object) for k in COLUMNS})
        buf = io.BytesIO()
        pq.write_table(_to_table(df) if len(df) else pa.Table.from_pandas(df, preserve_index=False), buf)
        self.meta.update({"complete": True, "rows": int(len(df)), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if extra_meta:
            self.meta.update(json.loads(json.dumps(dict(extra_meta), default=str)))
        atomic_write_bytes(os.path.join(self.directory, "results.parquet"), buf.getvalue())
        self._write_meta()
        return df


def _describe_input(path: str | os.PathLike | None) -> dict[str, Any]:
    """How an input is recorded: resolved path and content fingerprint for a file or folder, else the text."""
    if path is None:
        return {"ref": None}
    text = os.fspath(path)
    if os.path.exists(text):
        return {"path": os.path.realpath(text), "fingerprint": file_fingerprint(text)}
    return {"ref": text, "fingerprint": text}


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
