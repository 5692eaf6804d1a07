"""Per-sample results: one schema, Parquet tables with a JSON sidecar, resumable atomic writes."""

from .jsonio import dumps, read_json, to_jsonable, write_json
from .provenance import atomic_write_bytes, atomic_write_text, library_versions
from .table import COLUMNS, SCHEMA, ResultsStore, empty_columns, read_results

__all__ = ["COLUMNS", "SCHEMA", "ResultsStore", "atomic_write_bytes", "atomic_write_text", "empty_columns",
           "dumps", "library_versions", "read_json", "read_results", "to_jsonable", "write_json"]
