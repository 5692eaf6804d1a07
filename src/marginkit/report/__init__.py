"""Human-readable outputs: summaries, Markdown reports and plots (matplotlib, Agg backend)."""

from .summary import summarize_table, write_summary

__all__ = ["summarize_table", "write_summary"]
