import json
import os

import numpy as np
import pandas as pd
import pytest

from marginkit.results import COLUMNS, ResultsStore, empty_columns, read_results


def _rows(indices):
    r = empty_columns(len(indices))
    r["index"] = np.asarray(indices)
    r["label"][:] = 1
    r["prediction"][:] = 1
    r["logit_margin"] = np.asarray(indices, dtype=float) / 10
    r["norm"][:] = "l2"
    r["method"][:] = "test"
    r["status"][:] = "upper-only"
    return r


def test_interrupted_run_resumes_without_duplicates(tmp_path):
    settings = {"norm": "l2", "seed": 0}
    store = ResultsStore(tmp_path, settings)
    store.append(_rows(range(0, 10)))
    store.append(_rows(range(10, 15)))
    # "crash" here: no finalize; the process ends (its lock goes). A new process opens the same directory.
    store.close()
    again = ResultsStore(tmp_path, settings)
    assert again.done == set(range(15))
    todo = again.pending(range(30))
    assert todo.tolist() == list(range(15, 30))
    assert again.append(_rows(range(12, 20))) == 5  # overlap with written rows is skipped
    again.append(_rows(range(20, 30)))
    df = again.finalize()
    assert df["index"].tolist() == list(range(30))
    df2, meta = read_results(tmp_path)
    assert len(df2) == 30 and meta["complete"] and meta["settings"] == settings
    assert "torch" in meta["versions"]


def test_different_settings_are_refused_and_overwrite_clears(tmp_path):
    with ResultsStore(tmp_path, {"norm": "l2"}) as first:
        first.append(_rows([0, 1]))
    with pytest.raises(ValueError, match="differs in: norm"):
        ResultsStore(tmp_path, {"norm": "linf"})
    fresh = ResultsStore(tmp_path, {"norm": "linf"}, resume=False)
    assert fresh.done == set()


def test_torn_temporary_file_is_ignored(tmp_path):
    with ResultsStore(tmp_path, {"a": 1}) as store:
        store.append(_rows([0, 1, 2]))
    # a write killed half-way leaves only a hidden temporary file, never a part
    (tmp_path / "parts" / ".junk.tmp").write_bytes(b"PAR1 half")
    assert ResultsStore(tmp_path, {"a": 1}).done == {0, 1, 2}


def test_rows_must_carry_the_schema_and_unique_indices(tmp_path):
    store = ResultsStore(tmp_path, {})
    with pytest.raises(ValueError, match="lack column"):
        store.append({"index": [0]})
    with pytest.raises(ValueError, match="repeat a sample index"):
        store.append(_rows([3, 3]))


def test_extra_columns_survive(tmp_path):
    store = ResultsStore(tmp_path, {})
    r = _rows([0, 1])
    r["passes"] = np.array([5, 7])
    store.append(r)
    df = store.finalize()
    assert df["passes"].tolist() == [5, 7] and list(df.columns[: len(COLUMNS)]) == list(COLUMNS)


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="did the run finish"):
        read_results(tmp_path)
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        read_results(tmp_path)


def test_tables_from_before_later_columns_still_read(tmp_path):
    from marginkit.results.table import CORE_COLUMNS

    r = _rows([0, 1])
    pd.DataFrame({c: r[c] for c in CORE_COLUMNS}).to_parquet(tmp_path / "results.parquet")
    df, _ = read_results(tmp_path)
    assert set(COLUMNS) <= set(df.columns) and len(df) == 2
