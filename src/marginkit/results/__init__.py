"""Per-sample results: one schema, Parquet tables with a JSON sidecar, resumable atomic writes."""

from .provenance import atomic_write_bytes, atomic_write_text, library_versions
from .table import COLUMNS, SCHEMA, ResultsStore, empty_columns, read_results

__all__ = ["COLUMNS", "SCHEMA", "ResultsStore", "atomic_write_bytes", "atomic_write_text", "empty_columns",
           "library_versions", "read_results"]
