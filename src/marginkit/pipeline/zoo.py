"""Train and evaluate the reproduction zoo (issue 19): cached models, per-model margin metrics.

:func:`train_zoo` trains every :class:`~marginkit.training.model_zoo.ZooEntry` not yet in ``cache_dir``
(one task per model through :func:`marginkit.parallel.run_many`, so a Ray executor trains several at
once) and stores it as ``<key>.pt`` (a marginkit checkpoint). The per-epoch training state lives in
``<key>.train/`` until the model is written, so an interrupted run resumes mid-training and a rerun
trains nothing.

:func:`evaluate_zoo` measures, per model, on a fixed set of test points:

* clean accuracy; robust accuracy read from the minimal-norm engine's input margins
  (:func:`marginkit.margins.robust.robust_accuracy_curve`) and from PGD at the same eps
  (:func:`marginkit.training.evaluation.pgd_robust_accuracy`): the robust-accuracy sanity check of the
  consistency paper's Fig. 8, and a gradient-masking check (PGD must not report more robustness than the
  margins allow, beyond the engine's slack);
* Kendall tau between the logit margin and the input margin on correctly classified points, with a
  bootstrap CI (:func:`marginkit.consistency.margin_consistency`; the consistency paper's Fig. 4 plots it
  against robust accuracy);
* AUROC / AUPR / FPR@95 of the logit margin at detecting non-robust points (d_in <= eps), the
  consistency paper's Table 1 (:func:`marginkit.consistency.detection_metrics`).

Results are cached per model as JSON next to the model, keyed by the evaluation settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data import load_dataset
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.zoo import build_model
from ..parallel import ExecutorConfig, run_many
from ..results.jsonio import decode_float, read_json, write_json
from ..training.methods import get_method
from ..training.model_zoo import ZooEntry
from ..training.trainer import train_model

__all__ = ["ZooModel", "ZooMetrics", "ZooMargins", "ZooPseudoMargin", "train_zoo", "evaluate_zoo", "zoo_margins",
           "zoo_points", "zoo_test_points", "pseudo_margin_zoo", "EVAL_VERSION", "PAPER_PSEUDO_HIDDEN",
           "PAPER_PSEUDO_POINTS"]

# Bumped when what evaluate_zoo measures changes, so stale cached metrics are recomputed.
EVAL_VERSION = 1


@dataclass(frozen=True)
class ZooModel:
    """A trained zoo model: its entry, checkpoint path, training seconds (of the run that trained it) and
    whether this call found it in the cache."""

    entry: ZooEntry
    path: Path
    seconds: float
    cached: bool


def _model_path(entry: ZooEntry, cache_dir: Path) -> Path:
    return cache_dir / f"{entry.key()}.pt"


def _stored(entry: ZooEntry, cache_dir: Path) -> ZooModel | None:
    path = _model_path(entry, cache_dir)
    if not path.exists():
        return None
    meta_path = path.with_suffix(".json")
    seconds = float(read_json(meta_path).get("train_seconds", float("nan"))) if meta_path.exists() else float("nan")
    return ZooModel(entry, path, seconds, True)


@dataclass(frozen=True)
class _TrainTask:
    """One model of the zoo (picklable for Ray): trains with per-epoch checkpoints, then writes the model."""

    entry: ZooEntry
    cache_dir: str

    def __call__(self) -> ZooModel:
        entry = self.entry
        cache = Path(self.cache_dir)
        path = _model_path(entry, cache)
        ds = load_dataset(entry.dataset, seed=entry.data_seed)
        spec = entry.model_spec(ds.input_shape, ds.num_classes)
        model = build_model(spec, seed=entry.seed)
        method = get_method(entry.method, **dict(entry.params))
        work = cache / f"{entry.key()}.train"
        result = train_model(model, ds, entry.train_config(), method, checkpoint_dir=work)
        meta = {"entry": _entry_dict(entry), "key": entry.key(), "label": entry.label, "dataset": ds.name,
                "dataset_fingerprint": ds.fingerprint(), "train_accuracy": result.train_accuracy,
                "test_accuracy": result.test_accuracy, "train_seconds": result.seconds, "history": result.history}
        save_checkpoint(path, result.model, spec, meta)
        write_json(path.with_suffix(".json"), meta)
        last = work / "last.pt"
        if last.exists():  # the model file is written: the resumable state is no longer needed
            last.unlink()
            try:
                work.rmdir()
            except OSError:
                pass
        return ZooModel(entry, path, result.seconds, False)


def _entry_dict(entry: ZooEntry) -> dict[str, Any]:
    d = asdict(entry)
    for k in ("params", "spec", "train"):
        d[k] = dict(d[k])
    return d


def train_zoo(entries: Sequence[ZooEntry], cache_dir: Path | str, *, executor: ExecutorConfig | None = None,
              progress: bool = False) -> list[ZooModel]:
    """Train every entry not yet cached in ``cache_dir`` and return all models in the order of ``entries``.

    Models are cached by :meth:`ZooEntry.key`; a rerun trains nothing. Training state is checkpointed
    every epoch, so an interrupted run resumes where it stopped. ``executor``: where the models train
    (default: in this process, one after the other; a Ray config trains several at once).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    keys = [e.key() for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError("entries contain the same settings twice; each model of a zoo must be distinct")
    cfg = executor if executor is not None else ExecutorConfig(executor="local", progress=progress)
    if executor is not None and executor.progress != progress:
        cfg = replace(executor, progress=progress)
    tasks = [_TrainTask(e, os.fspath(cache)) for e in entries]
    return run_many(tasks, config=cfg, done=lambda i: _stored(entries[i], cache), desc="zoo models",
                    names=[f"{e.label} (seed {e.seed}, {e.key()})" for e in entries])


@dataclass(frozen=True)
class ZooMetrics:
    """Margin metrics of one zoo model on ``n`` test points (see the module docstring).

    ``robust_acc_margin`` / ``robust_acc_pgd``: eps -> robust accuracy read from the engine's input
    margins / from PGD. ``tau``, ``tau_ci``: Kendall tau (logit margin vs input margin, correctly
    classified points) and its 95% bootstrap CI. ``auroc``, ``aupr``, ``fpr95``: detection of d_in <=
    ``eps`` by the logit margin (None where undefined at that eps: no non-robust or no robust point).
    ``median_margin``: median input margin of correctly classified points. ``seconds``: evaluation time.
    ``n_correct``: points the model classifies correctly (those tau and detection use); ``settings``:
    what was measured and how; ``key``: the model's cache key; ``label``: its display name.
    """

    entry: ZooEntry
    n: int
    accuracy: float
    robust_acc_margin: dict[float, float]
    robust_acc_pgd: dict[float, float]
    tau: float | None
    tau_ci: tuple[float | None, float | None]
    auroc: float | None
    aupr: float | None
    fpr95: float | None
    eps: float
    median_margin: float
    seconds: float
    n_correct: int = 0
    key: str = ""
    label: str = ""
    pgd_excess: dict[float, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["entry"] = _entry_dict(self.entry)
        d["robust_acc_margin"] = {str(k): v for k, v in self.robust_acc_margin.items()}
        d["robust_acc_pgd"] = {str(k): v for k, v in self.robust_acc_pgd.items()}
        d["pgd_excess"] = {str(k): v for k, v in self.pgd_excess.items()}
        d["tau_ci"] = list(self.tau_ci)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], entry: ZooEntry) -> "ZooMetrics":
        d = dict(d)
        d["entry"] = entry
        for k in ("robust_acc_margin", "robust_acc_pgd", "pgd_excess"):
            d[k] = {float(e): (None if v is None else float(v)) for e, v in d.get(k, {}).items()}
        d["tau_ci"] = tuple(d["tau_ci"])
        for k in ("accuracy", "median_margin", "seconds", "eps"):
            d[k] = decode_float(d[k])
        return cls(**d)


def zoo_points(entry: ZooEntry, split: str, n_points: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``n_points`` points of ``split`` ("train" or "test") drawn without replacement with ``seed`` (the same
    points for every model on the same dataset and data seed), with their indices in the split."""
    ds = load_dataset(entry.dataset, seed=entry.data_seed)
    x, y = ds.split(split)
    n = min(int(n_points), x.shape[0])
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx], idx.tolist()


def zoo_test_points(entry: ZooEntry, n_points: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation points of ``entry``: :func:`zoo_points` of the test split."""
    x, y, _ = zoo_points(entry, "test", n_points, seed)
    return x, y


@dataclass(frozen=True)
class ZooMargins:
    """Per-point input margins of one model on fixed points: ``margin`` w.r.t. the true label (engine
    upper bound; 0 where misclassified, inf where no flip was found), ``logit_margin`` (f_y - max_{j!=y}
    f_j), ``correct``; ``indices`` into the split; ``seconds``: engine time; ``settings``."""

    split: str
    indices: list[int]
    margin: np.ndarray
    logit_margin: np.ndarray
    correct: np.ndarray
    seconds: float
    settings: dict[str, Any]


def zoo_margins(model_info: ZooModel, *, split: str = "test", n_points: int, seed: int = 0, norm: str = "l2",
                preset: str = "default", cache_dir: Path | str | None = None, chunk: int = 250,
                progress: bool = False) -> ZooMargins:
    """Input margins (:func:`marginkit.attacks.input_margin`, ``preset``) and logit margins of ``model_info``
    on :func:`zoo_points`. Cached as JSON next to the model (or in ``cache_dir``); long runs are written
    every ``chunk`` points and resume where they stopped."""
    from ..attacks import RuntimeOptions, input_margin
    from ..margins.output import logit_margin

    settings = {"eval_version": EVAL_VERSION, "split": split, "n_points": int(n_points), "seed": int(seed),
                "norm": str(norm), "engine_preset": preset}
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else Path(model_info.path).parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model_info.entry.key()}.margins-{split}-{tag}.json"
    stored: dict[str, Any] = read_json(path) if path.exists() else {"settings": settings, "chunks": []}
    x, y, idx = zoo_points(model_info.entry, split, n_points, seed)
    model, _ = load_checkpoint(model_info.path)
    model.eval()
    chunks: list[dict[str, Any]] = stored["chunks"]
    starts = list(range(0, x.shape[0], chunk))
    for s in starts[len(chunks):]:
        xb, yb = x[s : s + chunk], y[s : s + chunk]
        t0 = time.perf_counter()
        res = input_margin(model, xb, yb, norm, preset=preset, runtime=RuntimeOptions(progress=progress))
        with torch.no_grad():
            lm = logit_margin(model(xb), yb)
        chunks.append({"margin": res.upper.double().tolist(), "logit_margin": lm.double().tolist(),
                       "seconds": time.perf_counter() - t0})
        write_json(path, {"settings": settings, "chunks": chunks})
    margin = np.array([decode_float(v) for c in chunks for v in c["margin"]], dtype=np.float64)
    lmargin = np.array([decode_float(v) for c in chunks for v in c["logit_margin"]], dtype=np.float64)
    return ZooMargins(split, idx, margin, lmargin, lmargin > 0, float(sum(c["seconds"] for c in chunks)), settings)


def _eval_settings(n_points: int, eps: Sequence[float], norm: str, seed: int, detect_eps: float, preset: str,
                   pgd_steps: int, n_resamples: int) -> dict[str, Any]:
    return {"eval_version": EVAL_VERSION, "n_points": int(n_points), "eps": [float(e) for e in eps], "norm": norm,
            "seed": seed, "detection_eps": float(detect_eps), "engine_preset": preset, "pgd_steps": pgd_steps,
            "pgd_restarts": 1, "n_resamples": n_resamples}


def _evaluate_one(model_info: ZooModel, settings: dict[str, Any], cache_dir: Path | str | None = None) -> ZooMetrics:
    from ..consistency import detection_metrics, margin_consistency
    from ..consistency.metrics import DegenerateMetricError
    from ..margins.robust import robust_accuracy_curve
    from ..training.evaluation import pgd_robust_accuracy

    t0 = time.perf_counter()
    entry = model_info.entry
    eps = settings["eps"]
    norm = settings["norm"]
    # Input margins w.r.t. the true label: misclassified points get 0 (robust at no eps).
    zm = zoo_margins(model_info, split="test", n_points=settings["n_points"], seed=settings["seed"], norm=norm,
                     preset=settings["engine_preset"], cache_dir=cache_dir)
    model, _ = load_checkpoint(model_info.path)
    model.eval()
    x, y = zoo_test_points(entry, settings["n_points"], settings["seed"])
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    if not np.array_equal(correct.numpy(), zm.correct):
        raise RuntimeError(f"{model_info.path}: stored margins disagree with the model's decisions; delete the cache")
    d = torch.as_tensor(zm.margin)
    margin_curve = robust_accuracy_curve(d, eps, correct)
    ra = pgd_robust_accuracy(model, x, y, norm, eps, steps=settings["pgd_steps"], margins=d, seed=settings["seed"])
    pgd_curve = [float(v) for v in ra.table["pgd_robust_accuracy"]]
    c = correct.numpy()
    score = zm.logit_margin[c]
    dm = zm.margin[c]
    tau: float | None = None
    tau_ci: tuple[float | None, float | None] = (None, None)
    try:
        mc = margin_consistency(score, dm, n_resamples=settings["n_resamples"], seed=settings["seed"])
        tau, tau_ci = mc.tau, (mc.kendall.ci_low, mc.kendall.ci_high)
    except DegenerateMetricError:
        pass
    det = detection_metrics(score, dm, settings["detection_eps"]) if c.sum() >= 2 else None
    finite = dm[np.isfinite(dm)]
    return ZooMetrics(
        entry=entry, n=int(x.shape[0]), accuracy=float(correct.double().mean()),
        robust_acc_margin=dict(zip(eps, margin_curve)), robust_acc_pgd=dict(zip(eps, pgd_curve)),
        tau=tau, tau_ci=tau_ci,
        auroc=None if det is None else det.auroc, aupr=None if det is None else det.aupr,
        fpr95=None if det is None else det.fpr_at_95_tpr, eps=settings["detection_eps"],
        median_margin=float(np.median(dm)) if dm.size else float("nan"), seconds=time.perf_counter() - t0,
        n_correct=int(c.sum()), key=entry.key(), label=entry.label,
        pgd_excess={e: p - m for e, p, m in zip(eps, pgd_curve, margin_curve)},
        settings={**settings, "engine_seconds": zm.seconds, "n_no_flip": int(np.isinf(dm).sum()),
                  "n_finite_margin": int(finite.size)},
    )


def evaluate_zoo(models: Sequence[ZooModel], *, n_points: int, eps: Sequence[float], norm: str = "l2", seed: int = 0,
                 cache_dir: Path | str | None = None, progress: bool = False, detection_eps: float | None = None,
                 engine_preset: str = "default", pgd_steps: int = 50, n_resamples: int = 1000) -> list[ZooMetrics]:
    """:class:`ZooMetrics` of every model on the same ``n_points`` test points (module docstring).

    ``eps``: radii of the robust-accuracy curves; ``detection_eps``: the radius of the detection task
    (default: the middle of ``eps``). Results are cached as JSON next to each model (or in ``cache_dir``)
    under a hash of these settings, so a rerun recomputes nothing.
    """
    eps = [float(e) for e in eps]
    if not eps:
        raise ValueError("eps must list at least one radius")
    detect = float(detection_eps) if detection_eps is not None else eps[len(eps) // 2]
    settings = _eval_settings(n_points, eps, str(norm), seed, detect, engine_preset, pgd_steps, n_resamples)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out: list[ZooMetrics] = []
    items = list(models)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="evaluate zoo", unit="model")
    for m in items:
        folder = Path(cache_dir) if cache_dir is not None else Path(m.path).parent
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{m.entry.key()}.eval-{tag}.json"
        if path.exists():  # the label is display only (not part of the key): take the entry's current one
            out.append(replace(ZooMetrics.from_dict(read_json(path), m.entry), label=m.entry.label))
        else:
            met = _evaluate_one(m, settings, cache_dir)
            write_json(path, met.to_dict())
            out.append(met)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


@dataclass(frozen=True)
class ZooPseudoMargin:
    """The consistency paper's Table 2 for one zoo model: logit margin against a learned pseudo-margin.

    ``logit`` / ``pseudo``: Kendall tau (with CI), AUROC, AUPR, FPR@95 at ``eps`` of each score on the same
    ``n_eval`` correctly classified test points (:func:`marginkit.consistency.compare_scores`).
    ``tau_gain``: tau(pseudo) - tau(logit) with a paired bootstrap 95% CI over the evaluation points.
    ``n_fit``: correctly classified training points with a margin that the pseudo-margin was fitted on
    (a share ``config["val_fraction"]`` of them held out to choose the epoch); ``config``: the network and
    training settings; ``fit``: validation MSE, epochs run; ``seconds``: margins of the training points
    plus the fit.
    """

    key: str
    label: str
    eps: float
    n_eval: int
    n_fit: int
    logit: dict[str, Any]
    pseudo: dict[str, Any]
    config: dict[str, Any]
    fit: dict[str, Any]
    seconds: float
    tau_gain: float | None = None
    tau_gain_ci: tuple[float | None, float | None] = (None, None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _paired_tau_gain(base: np.ndarray, new: np.ndarray, margin: np.ndarray, n_resamples: int,
                     seed: int) -> tuple[float | None, tuple[float | None, float | None]]:
    """Kendall tau of ``new`` minus that of ``base`` against ``margin`` on the same points, with a paired
    percentile bootstrap CI (points resampled together: the two taus share their noise)."""
    from scipy.stats import bootstrap, kendalltau

    if len(margin) < 3:
        return None, (None, None)
    d = margin.copy()
    inf = np.isinf(d)
    if inf.any():  # ranks only: inf above every finite margin, tied among themselves
        d[inf] = (d[~inf].max() if (~inf).any() else 0.0) + 1.0

    def stat(b: np.ndarray, n: np.ndarray, m: np.ndarray) -> float:
        return float(kendalltau(n, m).statistic - kendalltau(b, m).statistic)

    value = stat(base, new, d)
    if n_resamples <= 0 or math.isnan(value):
        return (None if math.isnan(value) else value), (None, None)
    res = bootstrap((base, new, d), stat, paired=True, vectorized=False, n_resamples=n_resamples,
                    method="percentile", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return value, (None if math.isnan(lo) else lo, None if math.isnan(hi) else hi)


# Appendix B.4 of the consistency paper: five dense layers of 512 ReLU units, a sigmoid output, MSE;
# 5000 training points with 20% held out for validation.
PAPER_PSEUDO_HIDDEN = (512, 512, 512, 512, 512)
PAPER_PSEUDO_POINTS = 5000


def pseudo_margin_zoo(model_info: ZooModel, *, eps: float, n_eval: int, n_fit: int = PAPER_PSEUDO_POINTS,
                      norm: str = "l2", seed: int = 0, preset: str = "default", config: Any = None,
                      n_resamples: int = 1000, cache_dir: Path | str | None = None,
                      progress: bool = False) -> ZooPseudoMargin:
    """Fit a pseudo-margin (:class:`marginkit.consistency.PseudoMargin`, appendix B.4 protocol) on the input
    margins of up to ``n_fit`` training points of ``model_info`` (all of them when the split is smaller)
    and compare it with the logit margin on ``n_eval`` test points (the points of :func:`evaluate_zoo`).

    ``config``: a :class:`~marginkit.consistency.PseudoMarginConfig` (default: the paper's five layers of
    512, 20% validation, ``seed``). The result is cached as JSON next to the model.
    """
    from ..consistency import PseudoMargin, PseudoMarginConfig, compare_scores

    cfg = config if config is not None else PseudoMarginConfig(hidden=PAPER_PSEUDO_HIDDEN, val_fraction=0.2, seed=seed)
    settings = {"eval_version": EVAL_VERSION, "eps": float(eps), "n_eval": int(n_eval), "n_fit": int(n_fit),
                "norm": str(norm), "seed": int(seed), "preset": preset, "config": asdict(cfg), "n_resamples": n_resamples,
                "paired_gain": True}
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else Path(model_info.path).parent
    path = folder / f"{model_info.entry.key()}.pseudo-{tag}.json"
    if path.exists():
        stored = read_json(path)
        stored["tau_gain_ci"] = tuple(stored.get("tau_gain_ci") or (None, None))
        return ZooPseudoMargin(**stored)
    t0 = time.perf_counter()
    tr = zoo_margins(model_info, split="train", n_points=n_fit, seed=seed, norm=norm, preset=preset,
                     cache_dir=cache_dir, progress=progress)
    te = zoo_margins(model_info, split="test", n_points=n_eval, seed=seed, norm=norm, preset=preset,
                     cache_dir=cache_dir, progress=progress)
    model, _ = load_checkpoint(model_info.path)
    model.eval()
    x_tr, _, _ = zoo_points(model_info.entry, "train", n_fit, seed)
    x_te, _, _ = zoo_points(model_info.entry, "test", n_eval, seed)
    fit_rows = torch.as_tensor(tr.correct)
    pm = PseudoMargin.fit_model(model, x_tr[fit_rows], tr.margin[tr.correct], cfg, progress=progress)
    pseudo = pm.score(model, x_te).double().cpu().numpy()
    c = te.correct
    comp = compare_scores({"logit": te.logit_margin[c], "pseudo": pseudo[c]}, te.margin[c], float(eps),
                          n_resamples=n_resamples, seed=seed)
    gain, gain_ci = _paired_tau_gain(te.logit_margin[c], pseudo[c], te.margin[c], n_resamples, seed)
    cfg_d = asdict(cfg)
    cfg_d["hidden"] = list(cfg_d["hidden"])
    out = ZooPseudoMargin(key=model_info.entry.key(), label=model_info.entry.label, eps=float(eps), n_eval=int(c.sum()),
                          n_fit=int(tr.correct.sum()), logit=comp["logit"], pseudo=comp["pseudo"], config=cfg_d,
                          fit={k: v for k, v in pm.info.items() if k != "val_indices"},
                          seconds=time.perf_counter() - t0, tau_gain=gain, tau_gain_ci=gain_ci)
    write_json(path, out.to_dict())
    return out
