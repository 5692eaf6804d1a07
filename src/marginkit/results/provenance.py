"""Provenance of results: library versions, file fingerprints, atomic file writes."""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version

__all__ = ["library_versions", "atomic_write_bytes", "atomic_write_text", "file_fingerprint"]

_PACKAGES = ("marginkit", "torch", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "cvxpy", "clarabel", "highspy")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def file_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes, or of a directory's files (names and bytes, sorted):
    identifies the exact input file a result came from, whatever path it was given by."""
    path = os.fspath(path)
    h = hashlib.sha256()
    files = [path] if not os.path.isdir(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    for f in files:
        if f != path:
            h.update(os.path.relpath(f, path).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the
    0600 of the temporary file it is written through.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's mode is not 0600 anyway
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
