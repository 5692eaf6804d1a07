"""Margin consistency of a model or of an existing per-sample table (seed paper Table 1, Algorithm 1,
section 3.3), assembled for the report writers in :mod:`marginkit.report.consistency_report`."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks import RuntimeOptions
from ..consistency import (
    PAPER_LINF_EPS,
    Algorithm1Result,
    ConsistencyReport,
    Isometry,
    PseudoMargin,
    PseudoMarginConfig,
    evaluate_consistency,
    model_consistency,
    subset_estimates,
)
from ..models.checkpoint import model_fingerprint
from ..norms import as_norm, parse_eps
from ..results import library_versions, read_results
from .run import prepare, run_margins
from .specs import MarginJob, load_data_ref, load_model_ref

__all__ = ["ConsistencyOptions", "ConsistencyRun", "SubsetEstimate", "consistency_from_job", "consistency_from_table",
           "eps_grid", "subset_estimate"]


def eps_grid(text: str | None) -> tuple[float, ...] | None:
    """The eps grid of the AUROC sweep from user text: ``"paper"`` for {2,4,8,12,16,32}/255 (appendix
    B.2), otherwise :func:`marginkit.norms.parse_eps` (``"2/255,4/255"``); None or empty: the default."""
    if text is None or not str(text).strip():
        return None
    if str(text).strip().lower() == "paper":
        return tuple(PAPER_LINF_EPS)
    return tuple(parse_eps(text))


@dataclass(frozen=True)
class ConsistencyOptions:
    """What :func:`marginkit.consistency.evaluate_consistency` and the model steps are asked for.

    ``eps_grid``: radii of the AUROC sweep (None: eps x 1/4..4); ``subset_sizes`` / ``repeats``:
    Algorithm 1; ``bootstrap``: resamples of the tau / rho confidence intervals (0: none);
    ``pseudo_train``: fit a pseudo-margin on the input margins of the first N training samples (0: no),
    from ``pseudo_source`` (features | logits) for ``pseudo_epochs``; ``isometry``: local-isometry check
    on the first N evaluated samples (0: no); ``seed``: subsets, bootstrap and the pseudo-margin.
    """

    eps_grid: tuple[float, ...] | None = None
    subset_sizes: tuple[int, ...] = (100, 500)
    repeats: int = 10
    bootstrap: int = 1000
    pseudo_train: int = 0
    pseudo_source: str = "features"
    pseudo_epochs: int = 200
    isometry: int = 0
    seed: int = 0

    def evaluate_options(self) -> dict[str, Any]:
        return {"eps_grid": None if self.eps_grid is None else list(self.eps_grid),
                "subset_sizes": list(self.subset_sizes), "repeats": self.repeats, "n_resamples": self.bootstrap}


@dataclass
class ConsistencyRun:
    """A consistency report and what was fitted or measured next to it (for plots and files)."""

    report: ConsistencyReport
    eps: float
    norm: str
    model: str | None = None  # the model reference, None for a table alone
    isometry: Isometry | None = None
    pseudo_margin: PseudoMargin | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # step -> why it did not run


def _finish(report: ConsistencyReport, source: dict[str, Any], model: str | None, t0: float) -> None:
    report.settings.update({"source": source, "model": model, "versions": library_versions(),
                            "seconds_total": round(time.perf_counter() - t0, 2)})


def consistency_from_table(table: str | os.PathLike, eps: float, *, norm: str | None = None,
                           options: ConsistencyOptions = ConsistencyOptions()) -> ConsistencyRun:
    """Consistency of an existing per-sample results directory (no model needed: no pseudo-margin,
    no isometry). ``norm``, when given, must be the table's."""
    if options.pseudo_train > 0:
        raise ValueError("the pseudo-margin needs the model (it reads the model's representation); run from a model")
    if options.isometry > 0:
        raise ValueError("the isometry check needs the model; run from a model")
    t0 = time.perf_counter()
    df, meta = read_results(os.fspath(table))
    tnorm = str(df["norm"].iloc[0]) if len(df) and "norm" in df else str(as_norm(norm or "l2"))
    if norm is not None and tnorm != str(as_norm(norm)):
        raise ValueError(f"norm {norm} does not match the table, whose input margins are in {tnorm}")
    report = evaluate_consistency(df, eps, norm=tnorm, seed=options.seed, **options.evaluate_options())
    source = {"table": os.path.abspath(table), "table_settings": meta.get("settings", {})}
    model = source["table_settings"].get("model")
    _finish(report, source, model, t0)
    return ConsistencyRun(report, float(eps), tnorm, model)


def consistency_from_job(job: MarginJob, out: str | os.PathLike, eps: float, *,
                         options: ConsistencyOptions = ConsistencyOptions(), overwrite: bool = False,
                         progress: bool = True) -> ConsistencyRun:
    """Consistency of the model of ``job`` on its data: the per-sample table is computed (resumably) in
    ``out/table``; with ``options.pseudo_train`` the input margins of that many training samples go to
    ``out/train_table`` and fit a pseudo-margin; ``options.isometry`` attacks samples again.

    Logit-margin analyses run for every model. Steps that read the model's representation (feature
    margins, a pseudo-margin on features, the isometry check, head equidistance) need a linear head
    split (an ``nn.Sequential`` ending in ``nn.Linear``, or the ``marginkit_split`` hook); without one
    they are skipped and ``ConsistencyRun.skipped`` (also ``report.extras["skipped"]``) says why."""
    t0 = time.perf_counter()
    out = os.fspath(out)
    table_dir = os.path.join(out, "table")
    df, settings = run_margins(job, table_dir, overwrite=overwrite, progress=progress)
    reason = settings.get("feature_margin_reason")
    skipped: dict[str, str] = {}
    if reason:
        skipped["feature margin"] = reason
        if options.pseudo_train > 0 and options.pseudo_source == "features":
            skipped["pseudo-margin"] = ("it reads the model's features (see feature margin); "
                                        "pseudo_source='logits' (CLI --pseudo-source logits) fits it on the logits")
            options = dataclasses.replace(options, pseudo_train=0)
        if options.isometry > 0:
            skipped["isometry"] = "it compares feature distances (see feature margin)"
            options = dataclasses.replace(options, isometry=0)
    model, _ = load_model_ref(job.model)
    x_eval = train = None
    bounds = (0.0, 1.0)
    if options.pseudo_train > 0 or options.isometry > 0:
        ds, x_split, _ = load_data_ref(job.data)
        bounds = ds.bounds
        x_eval = x_split[torch.as_tensor(df["index"].to_numpy(dtype="int64", copy=True))]
    if options.pseudo_train > 0:
        train_job = dataclasses.replace(job, data=dataclasses.replace(job.data, split="train", limit=options.pseudo_train))
        tr_df, _ = run_margins(train_job, os.path.join(out, "train_table"), overwrite=overwrite, progress=progress)
        _, x_train, _ = load_data_ref(dataclasses.replace(job.data, split="train", limit=None))
        train = (x_train[torch.as_tensor(tr_df["index"].to_numpy(dtype="int64", copy=True))],
                 tr_df["input_margin_upper"].to_numpy(dtype="float64"))
    study = model_consistency(model, x_eval, df, eps, norm=job.norm, train=train,
                              pseudo_config=PseudoMarginConfig(source=options.pseudo_source, epochs=options.pseudo_epochs,
                                                               seed=options.seed),
                              isometry=options.isometry, bounds=bounds, attack_options=job.attack_kwargs(),
                              seed=options.seed, progress=progress, **options.evaluate_options())
    if reason:
        skipped["head equidistance"] = "it reads the linear head (see feature margin)"
        study.report.extras.pop("equidistance", None)
    if skipped:
        study.report.extras["skipped"] = dict(skipped)
    _finish(study.report, {"table": os.path.abspath(table_dir), "table_settings": settings}, job.model.ref, t0)
    return ConsistencyRun(study.report, float(eps), job.norm, job.model.ref, study.isometry, study.pseudo_margin,
                          skipped)


@dataclass
class SubsetEstimate:
    """Algorithm 1 as deployed: estimates for the whole split from the input margins of ``n`` samples."""

    estimates: dict[str, Algorithm1Result]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings, "estimates": {k: r.to_dict(indices=True) for k, r in self.estimates.items()}}


def subset_estimate(job: MarginJob, eps: float, n: int, *, seed: int = 0, progress: bool = True) -> SubsetEstimate:
    """Robust accuracy and vulnerable fraction of the whole split of ``job`` from one forward pass and
    the attack's input margins of ``n`` random samples (seed paper Algorithm 1; no table is written)."""
    if job.estimator not in ("auto", "attack"):
        raise ValueError(f"Algorithm 1 estimates read attack margins; estimator {job.estimator!r} is not supported here")
    p = prepare(job.model, job.data)  # checked on the data before any work
    model, ds, x, y = p.model, p.dataset, p.inputs, p.labels
    t0 = time.perf_counter()
    res = subset_estimates(model, x, y, job.norm, eps, n=n, seed=seed,
                           margin_kwargs={"bounds": ds.bounds, "runtime": RuntimeOptions(progress=progress), **job.attack_kwargs()})
    total = time.perf_counter() - t0
    settings = {"model": job.model.ref, "model_fingerprint": model_fingerprint(model), "dataset": ds.name,
                "split": job.data.split, "split_description": ds.split_description, "samples": int(x.shape[0]),
                "norm": job.norm, "eps": eps, "n": n, "seed": seed,
                "seconds_total": round(total, 2), "versions": library_versions()}
    return SubsetEstimate(res, settings)


