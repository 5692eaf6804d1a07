"""Output folders: locked while a run writes, nothing left by a refused run, path-proof resume, normal modes."""

import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from marginkit.checks import InputError, MarginkitWarning, OutputFolderError
from marginkit.results import COLUMNS, ResultsStore, empty_columns
from marginkit.results.table import LOCK_NAME

root_only = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes everywhere")


def _rows(indices):
    r = empty_columns(len(indices))
    r["index"] = np.asarray(indices)
    r["label"][:] = 0
    r["prediction"][:] = 0
    r["status"][:] = "not_computed"
    return r


def _write_lock(folder, pid, host=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w") as fh:
        json.dump({"pid": pid, "hostname": host or socket.gethostname(), "started": "then"}, fh)


def test_live_lock_refuses_a_second_run_even_with_overwrite(tmp_path):
    with ResultsStore(tmp_path, {"a": 1}) as store:
        store.append(_rows([0, 1]))
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname()
    assert not (tmp_path / LOCK_NAME).exists()
    _write_lock(tmp_path, os.getppid())  # a live run of another process of this machine (our parent)
    for resume in (True, False):
        with pytest.raises(OutputFolderError, match=f"is in use by process {os.getppid()} on .*choose another output"):
            ResultsStore(tmp_path, {"a": 2}, resume=resume)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getppid()  # left as it was
    (tmp_path / LOCK_NAME).unlink()
    with ResultsStore(tmp_path, {"a": 1}) as resumed:
        assert resumed.done == {0, 1}  # the refused overwrite cleared nothing
    _write_lock(tmp_path, 1, host="elsewhere.invalid")  # cannot be checked: assumed live
    with pytest.raises(OutputFolderError, match="elsewhere.invalid.*delete .*marginkit.lock"):
        ResultsStore(tmp_path, {"a": 1})


def test_a_second_store_of_the_same_process_closes_the_first(tmp_path):
    first = ResultsStore(tmp_path, {"a": 1})
    first.append(_rows([0]))
    with pytest.warns(MarginkitWarning, match="earlier results store of this process"):
        second = ResultsStore(tmp_path, {"a": 1})
    with pytest.raises(OutputFolderError, match="newer one of this process"):
        first.append(_rows([1]))
    del first  # collecting the closed store must not remove the second store's lock
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    second.append(_rows([1]))
    assert second.finalize()["index"].tolist() == [0, 1]
    second.close()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now dead
    _write_lock(tmp_path, child.pid)
    with pytest.warns(MarginkitWarning, match=f"stale lock of process {child.pid}"):
        store = ResultsStore(tmp_path, {"a": 1})
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    store.close()


def test_a_run_refused_before_writing_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError):
        with ResultsStore(out, {"classes": "3,7"}):
            raise InputError("refused by validation before any row")
    assert not out.exists()
    # a sidecar without rows (left by an earlier version or a crash) does not block the corrected command
    with ResultsStore(out, {"classes": "3,7"}) as store:
        assert not (out / "results.json").exists()
        store._write_meta()
    with ResultsStore(out, {"classes": None}) as store:
        store.append(_rows([0]))
        store.finalize()
    assert json.loads((out / "results.json").read_text())["settings"] == {"classes": None}


def test_resume_compares_resolved_paths_and_contents(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pt").write_bytes(b"weights v1")
    out = tmp_path / "out"
    with ResultsStore(out, {"model": "m.pt"}, inputs={"model": "m.pt"}) as store:
        store.append(_rows([0, 1]))
    with ResultsStore(out, {"model": str(tmp_path / "m.pt")}, inputs={"model": str(tmp_path / "m.pt")}) as again:
        assert again.done == {0, 1}  # the same file by its absolute path resumes
    os.symlink(tmp_path / "m.pt", tmp_path / "link.pt")
    with ResultsStore(out, {"model": "link.pt"}, inputs={"model": "link.pt"}) as again:
        assert again.done == {0, 1}
    with pytest.raises(InputError, match="other settings \\(differs in: model\\)"):
        ResultsStore(out, {"model": "other.pt"})
    (tmp_path / "m.pt").write_bytes(b"weights v2")
    with pytest.raises(InputError, match="other contents of input\\(s\\) model"):
        ResultsStore(out, {"model": "m.pt"}, inputs={"model": "m.pt"})


def test_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with ResultsStore(tmp_path, {}) as store:
            store.append(_rows([0]))
            store.finalize()
    finally:
        os.umask(old)
    for name in ("results.json", "results.parquet"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_output_path_that_is_a_file_or_read_only(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OutputFolderError, match="taken is a file, not a folder"):
        ResultsStore(tmp_path / "taken", {})
    with pytest.raises(OutputFolderError, match="a parent of it is a file"):
        ResultsStore(tmp_path / "taken" / "sub", {})
    assert "Errno" not in str(OutputFolderError("plain"))


@root_only
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(OutputFolderError, match="ro is read-only"):
        ResultsStore(ro, {})


def test_seconds_column_says_what_it_measures():
    assert "divided evenly" in COLUMNS["seconds"][1]
