"""Run a margin job: load the model and the data, build the per-sample table resumably, record provenance."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from ..models.checkpoint import model_fingerprint
from ..results.table import ResultsStore
from ..parallel import ExecutorConfig
from .specs import MarginJob, load_data_ref, load_model_ref
from .table import margin_table

__all__ = ["job_settings", "run_margins"]


def job_settings(job: MarginJob, fingerprint: str, dataset_name: str, dataset_fingerprint: str,
                 samples: int) -> dict[str, Any]:
    """The settings a table records (and a resumed run must match): what was run on what. Weights and
    classes are covered by the model and data fingerprints."""
    settings: dict[str, Any] = {
        "model": job.model.ref, "model_fingerprint": fingerprint, "dataset": dataset_name,
        "dataset_fingerprint": dataset_fingerprint, "split": job.data.split, "samples": int(samples),
        "norm": job.norm, "input_margin": job.estimator, "seed": job.data.seed,
        "attack_options": job.attack_kwargs()}
    if job.verify_options:
        settings["verify_options"] = job.verify_kwargs()
    return settings


def run_margins(job: MarginJob, out: str | os.PathLike, *, overwrite: bool = False,
                progress: bool = True, executor: ExecutorConfig | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The per-sample margin table of ``job`` in the results directory ``out``; returns (table, settings).

    The table (``out/results.parquet`` with ``out/results.json``: settings, fingerprints of model and
    data, library versions) is written chunk by chunk, so rerunning an interrupted job resumes it;
    a rerun with different settings is refused. ``overwrite`` discards a previous run in ``out``.
    ``executor`` (:class:`marginkit.parallel.ExecutorConfig`, e.g. ``ExecutorConfig(workers=2)`` for two
    local Ray workers) spreads the samples over shards; None computes them in this process.
    """
    model, _ = load_model_ref(job.model)
    ds, x, y = load_data_ref(job.data)
    settings = job_settings(job, model_fingerprint(model), ds.name, ds.fingerprint(), x.shape[0])
    store = ResultsStore(os.fspath(out), settings, resume=not overwrite)
    if store.done and progress:
        import sys

        print(f"resuming: {len(store.done)} of {x.shape[0]} samples already in {os.fspath(out)}", file=sys.stderr)
    if executor is not None:
        from dataclasses import replace

        from .sharded import run_sharded

        df = run_sharded(job, int(x.shape[0]), store, replace(executor, progress=progress and executor.progress))
    else:
        df = margin_table(model, x, y, job.norm, input_margin=job.estimator, bounds=ds.bounds, store=store,
                          progress=progress, attack_options=job.attack_kwargs() or None,
                          verify_options=job.verify_kwargs() or None)
    return df, settings
