"""Run a margin job: load the model and the data, build the per-sample table resumably, record provenance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..data import Dataset
from ..models.checkpoint import Checkpoint, model_fingerprint
from ..models.validate import ModelCheck, validate_model_for_dataset
from ..parallel import ExecutorConfig
from ..results.table import ResultsStore
from .specs import DataRef, MarginJob, ModelRef, load_data_ref, load_model_ref
from .table import margin_table

__all__ = ["Prepared", "check_output_folder", "job_settings", "prepare", "run_margins"]


def check_output_folder(path: str | os.PathLike) -> None:
    """Fail early, with one line, when ``path`` cannot become an output folder (it is a file, a parent of
    it is a file, or the folder or its nearest existing parent is read-only); creates nothing. For
    commands that do long work (training) before the results store opens."""
    from ..checks import OutputFolderError

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputFolderError(f"output folder {path} is a file, not a folder; choose another output folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputFolderError(f"output folder {path}: a parent of it ({probe}) is a file; choose another output folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {path}: {probe} is read-only; choose a writable output folder or fix "
                                "its permissions")


@dataclass
class Prepared:
    """A model and data loaded and checked against each other, before any work: the model (eval mode),
    its checkpoint record, the dataset, the (inputs, labels) of the split and the validation result
    (``check.feature_margin_reason`` says why feature margins are not available, None when they are)."""

    model: nn.Module
    info: Checkpoint
    dataset: Dataset
    inputs: torch.Tensor
    labels: torch.Tensor
    check: ModelCheck


def prepare(model_ref: ModelRef, data_ref: DataRef) -> Prepared:
    """Load ``model_ref`` and ``data_ref`` and validate the model on the data before any work
    (:func:`marginkit.models.validate_model_for_dataset`: output shape and class count against the
    labels and ``classes``, input shape against the checkpoint's, determinism unless
    ``model_ref.allow_stochastic``, tuple outputs). Raises a one-line ``ValueError`` / ``TypeError``."""
    model, info = load_model_ref(model_ref)
    ds, x, y = load_data_ref(data_ref)
    if x.shape[0] == 0:
        raise ValueError(f"{ds.name}: the {data_ref.split} split is empty")
    check = validate_model_for_dataset(model, ds, data_ref.split, expected_input_shape=info.metadata.get("input_shape"),
                                       allow_stochastic=model_ref.allow_stochastic)
    return Prepared(model, info, ds, x, y, check)


def job_settings(job: MarginJob, fingerprint: str, dataset_name: str, dataset_fingerprint: str,
                 samples: int) -> dict[str, Any]:
    """The settings a table records (and a resumed run must match): what was run on what. Weights and
    classes are covered by the model and data fingerprints."""
    settings: dict[str, Any] = {
        "model": job.model.ref, "model_fingerprint": fingerprint, "dataset": dataset_name,
        "dataset_fingerprint": dataset_fingerprint, "split": job.data.split, "samples": int(samples),
        "norm": job.norm, "input_margin": job.estimator, "seed": job.data.seed,
        "attack_options": job.attack_kwargs()}
    if job.data.test_fraction is not None:
        settings["test_fraction"] = job.data.test_fraction
    if job.model.logits_key is not None:
        settings["logits_key"] = job.model.logits_key
    if job.model.random_init:
        settings["random_init"] = True
    if job.model.allow_stochastic:
        settings["allow_stochastic"] = True
    if job.verify_options:
        settings["verify_options"] = job.verify_kwargs()
    return settings


def run_margins(job: MarginJob, out: str | os.PathLike, *, overwrite: bool = False,
                progress: bool = True, executor: ExecutorConfig | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The per-sample margin table of ``job`` in the results directory ``out``; returns (table, settings).

    The table (``out/results.parquet`` with ``out/results.json``: settings, fingerprints of model and
    data, library versions) is written chunk by chunk, so rerunning an interrupted job resumes it;
    a rerun with different settings is refused. ``overwrite`` discards a previous run in ``out``.

    The model is validated on the data (:func:`prepare`) before the results folder is touched, so a
    refused run leaves nothing behind; the folder is locked while the table is written. The returned
    settings also give the data split (``split_description``) and, when feature margins are not
    available, why (``feature_margin_reason``), for summaries.
    ``executor`` (:class:`marginkit.parallel.ExecutorConfig`, e.g. ``ExecutorConfig(workers=2)`` for two
    local Ray workers) spreads the samples over shards; None computes them in this process.
    """
    p = prepare(job.model, job.data)
    settings = job_settings(job, model_fingerprint(p.model), p.dataset.name, p.dataset.fingerprint(), p.inputs.shape[0])
    inputs = {"model": job.model.ref, "weights": job.model.weights, "data": p.dataset.source or None}
    with ResultsStore(os.fspath(out), settings, resume=not overwrite, inputs=inputs) as store:
        if store.done and progress:
            import sys

            print(f"resuming: {len(store.done)} of {p.inputs.shape[0]} samples already in {os.fspath(out)}",
                  file=sys.stderr)
        if executor is not None:
            from dataclasses import replace

            from .sharded import run_sharded

            from ..margins import resolve_estimator

            mode = resolve_estimator(job.estimator, p.model, tuple(p.inputs.shape[1:]))
            df = run_sharded(job, int(p.inputs.shape[0]), store, replace(executor, progress=progress and executor.progress),
                             mode=mode)
        else:
            df = margin_table(p.model, p.inputs, p.labels, job.norm, input_margin=job.estimator,
                              bounds=p.dataset.bounds, store=store, progress=progress,
                              attack_options=job.attack_kwargs() or None, verify_options=job.verify_kwargs() or None)
    # For summaries; not settings a resume must match (the data and model fingerprints cover them).
    settings["split_description"] = p.dataset.split_description
    settings["feature_margin_reason"] = p.check.feature_margin_reason
    return df, settings
