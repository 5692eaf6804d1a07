"""The reproduction suite: the papers' findings as studies (data), run resumably, one JSON result per study.

What ``marginkit reproduce {consistency,dynamics,bounds,all}`` runs. Each :class:`Study` names its section,
the paper's statement it tests (:class:`Claim`: the published number or direction, and its source) and its
settings at three scales (``tiny`` for the tests, ``quick`` for minutes on 2 cores, ``full`` for the paper's
sample counts where this machine allows them). :func:`run_reproduction` runs the studies of the chosen
sections; each finished study is written to ``OUT/studies/<name>.json`` (:mod:`marginkit.results.jsonio`)
and skipped by a rerun, so a long ``--full`` run finishes over several sittings. Trained models are cached
under ``OUT/zoo`` (the model zoo of :mod:`.zoo`, the preset MLPs, the bounds extractors) and the
engine's input margins of the Algorithm 1 study under ``OUT/cache``, so an interrupted study does not
train or attack again. ``OUT/run.json`` records every sitting's wall time and the total.

Every measured number is a :class:`Measurement`: value, 95% CI and how it was formed, n and seeds, the
paper's number, and a verdict from the CI by :func:`verdict` (the rule is :data:`VERDICT_RULE`).
The statistics come from the library (:mod:`marginkit.training.theory`, ``.fixedset``, ``.ablation``,
``.fisher``, :mod:`marginkit.consistency.algorithm1`, :mod:`marginkit.bounds.presets`); this module only
chooses settings, calls them, and turns their results into measurements and figure data. The figures
are data too (``"lines"`` and ``"errorbars"`` specs) and are drawn by :mod:`marginkit.report.reproduce`.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..results.jsonio import read_json, write_json

__all__ = [
    "SCALES", "SECTIONS", "VERDICTS", "VERDICT_RULE", "Claim", "Measurement", "Study", "StudyResult",
    "ReproductionRun", "StudyUnavailable", "STUDIES", "studies_for", "verdict", "measure", "study_command",
    "run_study", "run_reproduction", "load_reproduction",
]

SCALES = ("tiny", "quick", "full")
SECTIONS = ("consistency", "dynamics", "bounds")
VERDICTS = ("confirmed", "contradicted", "undetermined")
VERDICT_RULE = (
    "A claim is a direction (value > t or value < t) or a range [a, b] taken from the paper. "
    "confirmed: the whole 95% CI lies on the claimed side of t (or inside [a, b]); "
    "contradicted: the whole CI lies at t or on the other side (or outside [a, b]); undetermined: the CI "
    "contains t with values on the claimed side (or straddles a bound of the range), or there is no CI. Exact computations (counterexample counts, bounds "
    "computed on fixed points) have the CI [value, value]. Rows marked 'context' carry no claim."
)


class StudyUnavailable(RuntimeError):
    """A study cannot run here (a library part it needs is missing); it is reported, not stored as done."""


# --------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """What the paper says about a measured quantity.

    ``kind``: ``"greater"`` / ``"less"`` (than ``threshold``), ``"within"`` ([``low``, ``high``]) or ``"none"``
    (context: the paper gives no comparable number). ``paper``: the published number or statement as
    printed; ``source``: where (paper, table, figure, section).
    """

    kind: str
    paper: str
    source: str
    threshold: float = 0.0
    low: float = float("nan")
    high: float = float("nan")

    def __post_init__(self) -> None:
        if self.kind not in ("greater", "less", "within", "none"):
            raise ValueError(f"claim kind must be greater, less, within or none, got {self.kind!r}")
        if self.kind == "within" and not self.low <= self.high:
            raise ValueError(f"a 'within' claim needs low <= high, got [{self.low}, {self.high}]")

    def describe(self) -> str:
        if self.kind == "greater":
            return f"> {self.threshold:g}"
        if self.kind == "less":
            return f"< {self.threshold:g}"
        if self.kind == "within":
            return f"in [{self.low:g}, {self.high:g}]"
        return "context"


def verdict(value: float, ci: tuple[float, float] | None, claim: Claim) -> str:
    """confirmed / contradicted / undetermined from the 95% CI (see :data:`VERDICT_RULE`); ``"context"``
    when the claim has no direction."""
    if claim.kind == "none":
        return "context"
    if ci is None or not all(math.isfinite(v) for v in ci) or not math.isfinite(value):
        return "undetermined"
    lo, hi = min(ci), max(ci)
    if claim.kind == "greater":
        return "confirmed" if lo > claim.threshold else "contradicted" if hi <= claim.threshold else "undetermined"
    if claim.kind == "less":
        return "confirmed" if hi < claim.threshold else "contradicted" if lo >= claim.threshold else "undetermined"
    if lo >= claim.low and hi <= claim.high:
        return "confirmed"
    return "contradicted" if hi < claim.low or lo > claim.high else "undetermined"


@dataclass(frozen=True)
class Measurement:
    """One measured number next to the paper's: ``ci`` is the 95% CI (``ci_kind`` says how it was formed),
    ``n`` what was counted (points, subsets, cases), ``seeds`` how many independent training seeds,
    ``setting`` what was used where the paper used more (epochs, sizes, samples)."""

    quantity: str
    value: float
    ci: tuple[float, float] | None
    ci_kind: str
    n: str
    seeds: int
    claim: Claim
    verdict: str
    setting: str = ""
    unit: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Measurement":
        claim = dict(d["claim"])
        for k in ("threshold", "low", "high"):
            claim[k] = _num(claim.get(k))
        ci = d.get("ci")
        return cls(d["quantity"], _num(d["value"]), None if ci is None else (_num(ci[0]), _num(ci[1])),
                   d.get("ci_kind", ""), str(d.get("n", "")), int(d.get("seeds", 0)), Claim(**claim),
                   d["verdict"], d.get("setting", ""), d.get("unit", ""))


def _num(v: Any) -> float:
    """A float read back from results.jsonio (``"inf"``, ``"-inf"``, None for NaN)."""
    if v is None:
        return float("nan")
    return float(v)


def measure(quantity: str, value: float, ci: tuple[float, float] | None, claim: Claim, *, ci_kind: str, n: str,
            seeds: int, setting: str = "", unit: str = "") -> Measurement:
    """A :class:`Measurement` with its verdict."""
    value = float(value)
    ci = None if ci is None else (float(ci[0]), float(ci[1]))
    return Measurement(quantity, value, ci, ci_kind, n, int(seeds), claim, verdict(value, ci, claim), setting, unit)


def t_ci(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and t 95% CI (None with fewer than 2 finite values; [mean, mean] when they do not vary)."""
    from scipy import stats

    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(a) == 0:
        return float("nan"), None
    m = float(a.mean())
    if len(a) < 2:
        return m, None
    sd = float(a.std(ddof=1))
    h = float(stats.t.ppf(0.975, len(a) - 1) * sd / math.sqrt(len(a))) if sd > 0 else 0.0
    return m, (m - h, m + h)


# --------------------------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class Study:
    """A paper finding as data: ``runner`` names the function of :data:`_RUNNERS` that measures it with
    the settings of a scale (``scales[scale]``); ``paper_setting`` is what the paper used."""

    name: str
    section: str
    title: str
    reference: str
    claim: str
    paper_setting: str
    runner: str
    scales: Mapping[str, Mapping[str, Any]]

    def settings(self, scale: str) -> dict[str, Any]:
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        return dict(self.scales[scale])


@dataclass
class StudyResult:
    """What a study measured at one scale (stored as ``OUT/studies/<name>.json``)."""

    name: str
    section: str
    title: str
    reference: str
    claim: str
    paper_setting: str
    scale: str
    settings: dict[str, Any]
    measurements: list[Measurement]
    figures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = float("nan")
    finished: str = ""
    command: str = ""
    status: str = "done"  # "done" | "unavailable"
    inputs: str = ""  # hash of what the study depends on beyond its settings (e.g. the zoo's model keys)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measurements"] = [asdict(m) for m in self.measurements]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StudyResult":
        kw = {k: d[k] for k in ("name", "section", "title", "reference", "claim", "paper_setting", "scale", "settings")}
        return cls(**kw, measurements=[Measurement.from_dict(m) for m in d.get("measurements", [])],
                   figures=list(d.get("figures", [])), notes=list(d.get("notes", [])), data=dict(d.get("data", {})),
                   seconds=_num(d.get("seconds")), finished=d.get("finished", ""), command=d.get("command", ""),
                   status=d.get("status", "done"), inputs=d.get("inputs", ""))


@dataclass
class _Context:
    """What a runner gets besides its settings: where to cache, the executor, whether to show progress."""

    out: Path
    scale: str
    executor: Any = None
    progress: bool = False

    def cache(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


def _write(path: Path, obj: Any) -> None:
    write_json(path, obj)


# ---- dynamics: Theorem 3 -------------------------------------------------------------------------


def _preset_model(ctx: _Context, preset: str, dataset: str, epochs: int, seed: int) -> Any:
    """A training preset's model, trained once and cached under OUT/zoo/presets."""
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..training import train_preset

    path = ctx.cache("zoo", "presets") / f"{preset}-{dataset}-e{epochs}-s{seed}.pt"
    if not path.exists():
        res, spec, _ = train_preset(preset, dataset, seed=seed, epochs=epochs, progress=ctx.progress)
        save_checkpoint(str(path), res.model, spec, {"preset": preset, "dataset": dataset, "epochs": epochs,
                                                     "seed": seed, "test_accuracy": res.test_accuracy})
    model, _ = load_checkpoint(str(path))
    return model.eval()


def _run_theorem3(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    import torch

    from ..attacks import input_margin
    from ..data import load_dataset
    from ..training.theory import theorem3_convergence

    model = _preset_model(ctx, s["preset"], s["dataset"], s["epochs"], s["seed"])
    ds = load_dataset(s["dataset"], seed=s["seed"])
    x, y = ds.x_test, ds.y_test
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    idx = torch.nonzero(correct).squeeze(1)[: s["points"]]
    ref = input_margin(model, x[idx], y[idx], "l2", preset=s.get("engine")).upper
    conv = theorem3_convergence(model, x[idx], y[idx], "l2", radius=s["radius"], samples=s["samples"], reference=ref,
                                seed=s["seed"])
    counts = list(conv.counts)
    final = conv.bounds[-1]
    ok = final > 0
    ratio = conv.bounds[:, ok] / final[ok]
    k64 = counts.index(64) if 64 in counts else None
    setting = (f"{s['preset']} at {s['epochs']} epochs on {s['dataset']}, {conv.bounds.shape[1]} test points, "
               f"{s['samples']} samples each, r {s['radius']}")
    ms = []
    if k64 is not None and k64 < len(counts) - 2:  # (else it is the last-doubling row below)
        m, ci = t_ci((100 * (ratio[k64] - 1)).tolist())
        ms.append(measure(f"bound at 64 samples above the bound at {s['samples']} samples", m, ci,
                          Claim("none", "the paper uses 1024 x 50 = 51,200 samples per point", "Wu & Yu, App. F"),
                          ci_kind="t over points", n=f"{ratio.shape[1]} points", seeds=1, setting=setting, unit="%"))
    last = 100 * (ratio[-2] - 1) if len(counts) > 2 else np.array([np.nan])
    m, ci = t_ci(last.tolist())
    ms.append(measure(f"change over the last doubling ({counts[-2]} -> {counts[-1]} samples)", m, ci,
                      Claim("within", "51,200 samples: taken as converged (here: moves by < 0.1% per doubling)",
                            "Wu & Yu, App. F", low=-0.1, high=0.1),
                      ci_kind="t over points", n=f"{ratio.shape[1]} points", seeds=1, setting=setting, unit="%"))
    fin = np.isfinite(conv.reference)
    above = int(np.sum(conv.bounds[:, fin] > conv.reference[fin][None, :] + 1e-9))
    ms.append(measure("estimates above the engine's verified upper bound (any count)", above, (above, above),
                      Claim("less", "0: eq. (16) is a lower bound on the distance", "Wu & Yu, Theorem 3", threshold=0.5),
                      ci_kind="exact count", n=f"{int(fin.sum())} points x {len(counts)} counts", seeds=1, setting=setting))
    x_plot = [max(c, 0.5) for c in counts]
    fig = {"kind": "lines", "name": "theorem3", "title": "Theorem 3 bound against the sample count",
           "xlabel": "samples in B(x, r) (0 drawn at 0.5)", "ylabel": "bound / bound at the largest count", "xlog": True,
           "series": [{"label": f"mean over {ratio.shape[1]} points", "x": x_plot, "y": ratio.mean(1).tolist(),
                       "lo": np.quantile(ratio, 0.1, axis=1).tolist(), "hi": np.quantile(ratio, 0.9, axis=1).tolist()}],
           "hline": 1.0, "caption": "mean ratio with the 10-90% band over points"}
    return _result(s, ms, [fig], data={"summary": conv.summary(), "counts": counts})


# ---- dynamics: min / average margin on fixed sets -------------------------------------------------


def _fixedset_seed(preset: str, dataset: str, seed: int, points: int, samples: int, epochs: int, every: int) -> dict:
    from ..training.fixedset import fixed_set_run

    return fixed_set_run(preset, dataset, seed=seed, points=points, samples=samples, epochs=epochs, every=every)


def _run_fixedset(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    import functools

    from ..parallel import run_many

    seeds = list(s["seeds"])
    store = ctx.cache("cache", "fixedset")
    key = _key({k: s[k] for k in ("preset", "dataset", "points", "samples", "epochs", "every")})
    paths = [store / f"seed{sd}-{key}.json" for sd in seeds]
    tasks = [functools.partial(_fixedset_seed, s["preset"], s["dataset"], sd, s["points"], s["samples"], s["epochs"],
                               s["every"]) for sd in seeds]
    runs = run_many(tasks, config=ctx.executor, desc="fixed-set seeds", names=[f"seed {sd}" for sd in seeds],
                    done=lambda i: read_json(paths[i]) if paths[i].exists() else None,
                    on_result=lambda i, r: _write(paths[i], r), progress=ctx.progress)
    first, last = s["every"], s["epochs"]
    setting = (f"{s['preset']} for {s['epochs']} epochs (paper: 200) on {s['dataset']}, first {s['points']} train / "
               f"test points, Theorem 3 with {s['samples']} samples (paper: 51,200), records every {s['every']}")
    ms, series_avg, series_min = [], [], []

    def read(split: str, sub: str, key: str) -> tuple[list[float], list[float]]:
        a, b = [], []
        for r in runs:
            row = r["summaries"][split][sub]
            i0 = row["epochs"].index(first)
            a.append(_num(row[key][i0]))
            b.append(_num(row[key][-1]))
        return a, b

    for split in ("train", "test"):
        a, b = read(split, "correct-now", "avg_margin")
        m, ci = t_ci([y - x for x, y in zip(a, b)])
        ms.append(measure(f"average margin change, epoch {first} -> {last} ({split}, correct points)", m, ci,
                          Claim("less", "falls during training (Figs. 1, 2, 6)", "Wu & Yu, sec. 3, 5.2, App. C"),
                          ci_kind="t over seeds", n=f"{s['points']} points", seeds=len(seeds), setting=setting))
    for sub in ("correct-now", "always-correct"):
        a, b = read("train", sub, "min_margin")
        logs = [math.log10(y / x) for x, y in zip(a, b) if x > 0 and y > 0]
        m, ci = t_ci(logs)
        label = "the correct points of each record" if sub == "correct-now" else "points correct at every record"
        ms.append(measure(f"log10 min-margin ratio, epoch {last} / {first} (train, {label})", m, ci,
                          Claim("greater", "the minimum margin keeps increasing (Figs. 1, 2, 6)", "Wu & Yu, sec. 3, 5.2"),
                          ci_kind="t over seeds", n=f"{len(logs)} of {len(seeds)} seeds with positive minima",
                          seeds=len(seeds), setting=setting))
    for sd, r in zip(seeds, runs):
        row = r["summaries"]["train"]["correct-now"]
        series_avg.append({"label": f"seed {sd}", "x": row["epochs"], "y": row["avg_margin"]})
        series_min.append({"label": f"seed {sd}", "x": row["epochs"], "y": row["min_margin"]})
    figs: list[dict[str, Any]] = [{"kind": "lines", "name": "fixedset-avg", "title": "average margin of the correct training points",
             "xlabel": "epoch", "ylabel": "average l2 margin (Theorem 3)", "series": series_avg},
            {"kind": "lines", "name": "fixedset-min", "title": "minimum margin of the correct training points",
             "xlabel": "epoch", "ylabel": "minimum l2 margin (Theorem 3)", "series": series_min, "ylog": True}]
    data = {"seeds": seeds, "test_accuracy": [r["test_accuracy"] for r in runs],
            "seconds": [r["seconds"] for r in runs], "summaries": [r["summaries"] for r in runs]}
    return _result(s, ms, figs, data=data)


# ---- dynamics: controlled ablation ---------------------------------------------------------------


def _run_ablation(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    from ..training.ablation import AblationConfig, run_ablation

    cfg = replace(AblationConfig(), seeds=tuple(s["seeds"]), n=s["n"], n_test=s["n_test"], anchors=s["anchors"],
                  gd_steps=s["gd_steps"], mlp_epochs=s["mlp_epochs"], classifiers=tuple(s["classifiers"]))
    res = run_ablation(cfg, progress=ctx.progress)
    lo, hi = cfg.avg_margins[0], cfg.avg_margins[-1]
    setting = (f"separable data, dim {cfg.dim}, {cfg.n} training points, min margin {cfg.min_margin}, average "
               f"{lo} vs {hi}; {cfg.n_test} test points; GD {cfg.gd_steps} steps, MLP {cfg.mlp_epochs} epochs")
    ms = []
    claim_own = Claim("greater", "average margin is more indicative of robustness", "Wu & Yu, sec. 3; review, major comment 1")
    claim_common = Claim("greater", "a larger average margin makes the classifier more robust (causal reading)",
                         "Wu & Yu, sec. 3-4; review, major comment 1")
    for test, key, claim in (("own", "robust@0.5", claim_own), ("common", "robust@0.1", claim_common)):
        for clf in cfg.classifiers:
            d = res.paired(clf, test, key)
            ci = None if not math.isfinite(d["lo"]) else (d["lo"], d["hi"])
            ms.append(measure(f"{clf}: {key} on {test} test points, avg {hi:g} minus avg {lo:g}", d["mean"], ci, claim,
                              ci_kind="paired t over seeds", n=f"{cfg.n_test} test points", seeds=len(cfg.seeds),
                              setting=setting))
    figs = []
    for test in ("own", "common"):
        labels, vals, los, his = [], [], [], []
        for clf in cfg.classifiers:
            for e in cfg.eps:
                d = res.paired(clf, test, f"robust@{e:g}")
                labels.append(f"{clf} @{e:g}")
                vals.append(d["mean"])
                los.append(d["lo"])
                his.append(d["hi"])
        figs.append({"kind": "errorbars", "name": f"ablation-{test}",
                     "title": f"robust accuracy, avg margin {hi:g} minus {lo:g} ({test} test points)",
                     "ylabel": "paired difference (95% t CI)", "labels": labels, "values": vals, "lo": los, "hi": his,
                     "hline": 0.0})
    return _result(s, ms, figs, data={"rows": res.rows})


# ---- dynamics: Fisher consistency of eq. (15) ----------------------------------------------------


def _run_fisher(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    from ..training.fisher import HAND_DISTRIBUTIONS, biased_head_check, score_level_grid

    rows = score_level_grid(s["dists"], lams=tuple(s["lams"]), taus=tuple(s["taus"]))
    bad = sum(not r["consistent"] for r in rows)
    bound = _cp_upper(0, len(rows)) if bad == 0 else float("nan")
    ms = [measure("score level (head without bias): cases where a minimiser predicts a non-Bayes class", bad,
                  (bad, bad), Claim("less", "0: Fisher consistent for every lam, tau >= 0", "Wu & Yu, Theorem 2",
                                    threshold=0.5),
                  ci_kind="exact count" + (f"; 95% upper bound on the failure rate {bound:.3g}" if bad == 0 else ""),
                  n=f"{len(rows)} cases", seeds=0,
                  setting=f"{s['dists']} random distributions per (classes, concentration), lam {list(s['lams'])}, "
                          f"tau {list(s['taus'])}")]
    head = []
    for name in s["hand"]:
        p, eta = HAND_DISTRIBUTIONS[name]
        for lam in s["head_lams"]:
            chk = biased_head_check(p, eta, lam, 1.0, steps=s["bias_steps"])
            head.append({"dist": name, "lam": lam, "consistent": bool(chk.consistent), "predicted": chk.predicted,
                         "bayes": chk.bayes, "risk": chk.risk, "bayes_risk": chk.detail.get("bayes_risk")})
    bad_h = sum(not r["consistent"] for r in head)
    if head:  # (the tiny scale skips the biased head: its bias search takes tens of seconds)
        ms.append(measure("head with a bias (eq. 15 as implemented, orthogonal limit): distributions x lam with a "
                          "non-Bayes minimiser", bad_h, (bad_h, bad_h),
                          Claim("less", "0: 'our regularized objective remains Fisher-consistent'", "Wu & Yu, abstract, sec. 4",
                                threshold=0.5),
                          ci_kind="exact count", n=f"{len(head)} cases", seeds=0,
                          setting=f"hand-made near-tie distributions {list(s['hand'])}, lam {list(s['head_lams'])}, tau 1, "
                                  f"bias grid {s['bias_steps']} steps per axis then Nelder-Mead"))
    return _result(s, ms, [], data={"score_cases": len(rows), "head": head,
                                    "min_slack": min((r["min_slack"] for r in rows), default=float("nan"))})


def _cp_upper(k: int, n: int) -> float:
    """Clopper-Pearson 95% upper bound on a rate with k events in n trials."""
    from scipy import stats

    return 1.0 if k >= n else float(stats.beta.ppf(0.975, k + 1, n - k))


# ---- consistency: Algorithm 1 against the subset-only estimate -----------------------------------


def _run_algorithm1(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    import torch

    from ..attacks import input_margin
    from ..consistency.algorithm1 import compare_with_subset
    from ..data import load_dataset
    from ..margins.gap import smallest_gap
    from ..training import demo_model

    over = dict(s.get("model_overrides", {}))
    model, _ = demo_model("mlp", s["dataset"], seed=s["seed"], cache_dir=ctx.cache("zoo", "demo"), progress=ctx.progress,
                          **over)
    model.eval()
    ds = load_dataset(s["dataset"], seed=s["seed"])
    if s["points"] == "all":
        x, y = torch.cat([ds.x_train, ds.x_test]), torch.cat([ds.y_train, ds.y_test])
    else:
        x, y = ds.x_test[: int(s["points"])], ds.y_test[: int(s["points"])]
    store = ctx.cache("cache", "algorithm1")
    key = _key({"dataset": s["dataset"], "seed": s["seed"], "points": s["points"], "model": over})
    parts = []
    chunk = int(s["chunk"])
    for a in range(0, len(x), chunk):  # margins chunk by chunk, so an interrupted study keeps what it attacked
        path = store / f"margins-{key}-{a:05d}.npy"
        if not path.exists():
            up = input_margin(model, x[a:a + chunk], y[a:a + chunk], "l2", preset=s.get("engine")).upper
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, up.double().cpu().numpy())
            os.replace(tmp, path)
        parts.append(np.load(path))
    d_in = np.concatenate(parts)
    with torch.no_grad():
        logits = model(x)
    score = smallest_gap(logits).double().numpy()
    correct = (logits.argmax(1) == y).numpy()
    setting = (f"demo MLP on {s['dataset']}, N = {len(x)} ({'train + test' if s['points'] == 'all' else 'test'} points), "
               f"{s['repeats']} subsets per row, engine l2 margins")
    rows, ms = [], []
    for eps in s["eps"]:
        for n in s["sizes"]:
            r = compare_with_subset(score, d_in, correct, eps, n, repeats=s["repeats"], seed=s["seed"])
            errs = r.pop("a1_abs_errors")
            rows.append(r)
            ci = (r["t_lo"], r["t_hi"]) if math.isfinite(r["t_lo"]) else None
            ms.append(measure(f"eps {eps:g}, n {n}: |A1 - full| - |subset - full| (robust accuracy {r['full']:.1f}%)",
                              r["mean"], ci, Claim("less", "Algorithm 1 estimates the full-set robust accuracy from n "
                                                   "attacked points (better than the n points alone)",
                                                   "Ngnawe et al., sec. 2.4, Fig. 5"),
                              ci_kind="paired t over subsets", n=f"{s['repeats']} subsets",
                              seeds=1, setting=setting, unit="points"))
            if n == max(s["sizes"]):
                m, ci2 = t_ci(errs)
                ms.append(measure(f"eps {eps:g}, n {n}: Algorithm 1 mean absolute error", m, ci2,
                                  Claim("less", "mean error below 2 points from 300 samples (strongly consistent models)",
                                        "Ngnawe et al., Fig. 10", threshold=2.0),
                                  ci_kind="t over subsets", n=f"{s['repeats']} subsets", seeds=1, setting=setting,
                                  unit="points"))
    labels = [f"eps {r['eps']:g}, n {r['n']}" for r in rows]
    fig = {"kind": "errorbars", "name": "algorithm1", "title": "Algorithm 1 minus subset-only absolute error",
           "ylabel": "points of robust accuracy (negative: A1 closer)", "labels": labels,
           "values": [r["mean"] for r in rows], "lo": [r["t_lo"] for r in rows], "hi": [r["t_hi"] for r in rows],
           "hline": 0.0}
    return _result(s, ms, [fig], data={"rows": rows, "N": len(x), "accuracy": float(correct.mean())})


# ---- consistency: the model zoo -------------------------------------------------------------------


def _zoo_api() -> dict[str, Any]:
    """The model zoo's parts (training.model_zoo, pipeline.zoo): ``ZooEntry``, ``zoo_entries``, ``train_zoo``,
    ``evaluate_zoo``, ``pseudo_margin_zoo``."""
    try:
        from ..training.model_zoo import ZooEntry, zoo_entries
        from .zoo import evaluate_zoo, pseudo_margin_zoo, train_zoo
    except ImportError as exc:
        raise StudyUnavailable(f"the model zoo is not available in this installation ({exc})") from exc
    return {"ZooEntry": ZooEntry, "zoo_entries": zoo_entries, "train_zoo": train_zoo, "evaluate_zoo": evaluate_zoo,
            "pseudo_margin_zoo": pseudo_margin_zoo}


# The paper's Table 1 of the margin-consistency paper: Kendall tau of 32 adversarially trained CIFAR models.
_TAU_STRONG = Claim("greater", "0.68-0.85 for 30 of 32 adversarially trained models (linf, CIFAR)",
                    "Ngnawe et al., Table 1", threshold=0.68)
_TAU_WEAK = Claim("none", "DI0 (MMA) 0.28, XU80 0.43: the two weakly consistent models", "Ngnawe et al., Table 1, 2")
_FIG8 = Claim("within", "mean |diff| 1.3, max 6.1 points (CIFAR10, AutoAttack vs margins)", "Ngnawe et al., sec. 3.1, Fig. 8",
              low=-6.1, high=6.1)
_TABLE2 = Claim("greater", "pseudo-margin raises tau: DI0 0.28 -> 0.57, XU80 0.43 -> 0.62", "Ngnawe et al., Table 2")


def _at(d: Any, eps: float) -> float:
    """The value at ``eps`` of a {eps: value} map (keys may have become strings through JSON)."""
    for k, v in dict(d).items():
        if abs(float(k) - eps) < 1e-9:
            return _num(v)
    return float("nan")


def _zoo_rows(metrics: Sequence[Any]) -> list[dict[str, Any]]:
    """Plain rows of :class:`marginkit.pipeline.zoo.ZooMetrics` (JSON-able; missing metrics as NaN)."""
    rows = []
    for zm in metrics:
        e = zm.entry
        rows.append({"label": e.label or e.method, "method": e.method, "seed": e.seed, "epochs": e.epochs,
                     "dataset": e.dataset, "arch": e.arch, "key": e.key(), "n": int(zm.n),
                     "accuracy": float(zm.accuracy), "tau": _num(zm.tau), "tau_ci": [_num(v) for v in zm.tau_ci],
                     "auroc": _num(zm.auroc), "eps": float(zm.eps),
                     "ra_margin": {float(k): float(v) for k, v in dict(zm.robust_acc_margin).items()},
                     "ra_pgd": {float(k): float(v) for k, v in dict(zm.robust_acc_pgd).items()}})
    return rows


def _over_seeds(values: Sequence[float], single_ci: tuple[float, float] | None, single_kind: str
                ) -> tuple[float, tuple[float, float] | None, str]:
    """Mean with a t CI over seeds; with one seed, the value with ``single_ci``."""
    if len(values) > 1:
        m, ci = t_ci(values)
        return m, ci, "t over seeds"
    return float(values[0]), single_ci, single_kind


def _run_zoo(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    api = _zoo_api()
    entries = api["zoo_entries"](s["zoo_scale"])
    cache = ctx.cache("zoo", "models")
    models = api["train_zoo"](entries, cache, executor=ctx.executor, progress=ctx.progress)
    eps_c = float(s["check_eps"])
    metrics = api["evaluate_zoo"](models, n_points=s["n_points"], eps=tuple(s["eps"]), norm="l2", seed=0,
                                  cache_dir=cache, progress=ctx.progress, detection_eps=eps_c,
                                  pgd_steps=s["pgd_steps"], n_resamples=s["resamples"])
    rows = _zoo_rows(metrics)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    ms = []
    for lab in labels:
        group = [r for r in rows if r["label"] == lab]
        g0 = group[0]
        setting = (f"{g0['arch']} on {g0['dataset']}, {g0['epochs']} epochs, {g0['n']} test points, l2 engine margins, "
                   f"PGD {s['pgd_steps']} steps")
        taus = [r["tau"] for r in group if math.isfinite(r["tau"])]
        if taus:
            ci1 = tuple(g0["tau_ci"]) if all(math.isfinite(v) for v in g0["tau_ci"]) else None
            m, ci, kind = _over_seeds(taus, ci1, "bootstrap over points")
            ms.append(measure(f"{lab}: Kendall tau (logit margin vs input margin)", m, ci,
                              _TAU_WEAK if g0["method"] == "mma" else _TAU_STRONG, ci_kind=kind,
                              n=f"{g0['n']} points", seeds=len(taus), setting=setting))
        diffs = [100 * (_at(r["ra_pgd"], eps_c) - _at(r["ra_margin"], eps_c)) for r in group]
        p1, p2 = _at(g0["ra_pgd"], eps_c), _at(g0["ra_margin"], eps_c)
        se = 100 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(g0["n"], 1))
        m, ci, kind = _over_seeds(diffs, (diffs[0] - 1.96 * se, diffs[0] + 1.96 * se), "normal, unpaired binomial SEs")
        ms.append(measure(f"{lab}: PGD minus margin robust accuracy at eps {eps_c:g} (Fig. 8 check)", m, ci, _FIG8,
                          ci_kind=kind, n=f"{g0['n']} points", seeds=len(group), setting=setting, unit="points"))
    pseudo = []
    if s.get("pseudo", 0) > 0:  # Table 2: the least consistent labels, their first seed
        mean_tau = {lab: np.nanmean([r["tau"] for r in rows if r["label"] == lab]) for lab in labels}
        worst = sorted((lab for lab in labels if math.isfinite(mean_tau[lab])), key=lambda k: mean_tau[k])[: s["pseudo"]]
        for lab in worst:
            model = next(m for m in models if (m.entry.label or m.entry.method) == lab)
            pm = api["pseudo_margin_zoo"](model, eps=eps_c, n_eval=s["n_points"], n_fit=s["pseudo_fit"], seed=0,
                                          cache_dir=cache, progress=ctx.progress)
            lt, pt = _num(pm.logit["kendall_tau"]), _num(pm.pseudo["kendall_tau"])
            lci = [_num(v) for v in pm.logit["tau_ci"]]
            pci = [_num(v) for v in pm.pseudo["tau_ci"]]
            pseudo.append({"label": lab, "logit_tau": lt, "pseudo_tau": pt, "logit_ci": lci, "pseudo_ci": pci,
                           "n_fit": pm.n_fit, "n_eval": pm.n_eval, "config": pm.config})
            ci = (pci[0] - lci[1], pci[1] - lci[0]) if all(math.isfinite(v) for v in lci + pci) else None
            ms.append(measure(f"{lab}: pseudo-margin tau minus logit-margin tau ({lt:.3f} -> {pt:.3f}) (Table 2)", pt - lt,
                              ci, _TABLE2, ci_kind="from the two 95% bootstrap CIs (coverage >= 90%)",
                              n=f"{pm.n_eval} test points, fitted on {pm.n_fit}", seeds=1,
                              setting=f"appendix B.4 network {pm.config.get('hidden')}, 20% held out, "
                                      f"{pm.n_fit} training points (paper: 5000)"))
    taus_m = [m_ for m_ in ms if "Kendall tau" in m_.quantity]
    tau_fig = {"kind": "errorbars", "name": "zoo-tau", "title": "Kendall tau per model (Table 1 analogue)",
               "ylabel": "Kendall tau", "labels": [m_.quantity.split(":")[0] for m_ in taus_m],
               "values": [m_.value for m_ in taus_m], "lo": [m_.ci[0] if m_.ci else m_.value for m_ in taus_m],
               "hi": [m_.ci[1] if m_.ci else m_.value for m_ in taus_m], "hline": 0.68}
    scatter = {"kind": "lines", "name": "zoo-tau-vs-robust", "title": "tau against robust accuracy (Fig. 4)",
               "xlabel": f"robust accuracy from margins at eps {eps_c:g}", "ylabel": "Kendall tau", "markers_only": True,
               "series": [{"label": lab, "x": [_at(r["ra_margin"], eps_c) for r in rows if r["label"] == lab],
                           "y": [r["tau"] for r in rows if r["label"] == lab]} for lab in labels]}
    series: list[dict[str, Any]] = []
    for lab in labels:
        r = [r for r in rows if r["label"] == lab][0]
        ks = sorted(r["ra_margin"])
        series.append({"label": f"{lab} margins", "x": ks, "y": [r["ra_margin"][k] for k in ks]})
        series.append({"label": f"{lab} PGD", "x": ks, "y": [_at(r["ra_pgd"], k) for k in ks], "dashed": True})
    ra_fig = {"kind": "lines", "name": "zoo-robust-accuracy", "title": "robust accuracy from margins and from PGD (Fig. 8)",
              "xlabel": "l2 eps", "ylabel": "robust accuracy (first seed)", "series": series}
    return _result(s, ms, [tau_fig, scatter, ra_fig], data={"rows": rows, "pseudo": pseudo})


# ---- dynamics: Table 1 of the min-vs-average margin paper -----------------------------------------

# Wu & Yu, Table 1 (MNIST): clean, l2 PGD robust accuracy at eps 0.5 / 1 / 1.5 / 2 (1000 PGD iterations).
_T1_PAPER = {
    ("mlp", "std"): (98.24, 89.26, 49.23, 15.78, 5.06), ("mlp", "lcr"): (95.99, 91.12, 80.62, 60.56, 34.07),
    ("mlp", "amr"): (96.01, 91.18, 81.01, 62.93, 38.44), ("cnn", "std"): (99.14, 95.95, 90.48, 88.72, 87.52),
    ("cnn", "lcr"): (99.29, 97.21, 87.83, 58.30, 26.96), ("cnn", "amr"): (99.25, 97.90, 97.60, 97.51, 97.33),
}
_T1_EPS = (0.5, 1.0, 1.5, 2.0)
_MASKING = Claim("within", "1000-iteration PGD 'serves as a good approximation of robust accuracy'", "Wu & Yu, sec. 5.3",
                 low=-5.0, high=5.0)


def _run_table1(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    api = _zoo_api()
    entries, which = _table1_entries(api, s)
    cache = ctx.cache("zoo", "models")
    models = api["train_zoo"](entries, cache, executor=ctx.executor, progress=ctx.progress)
    metrics = api["evaluate_zoo"](models, n_points=s["n_points"], eps=_T1_EPS, norm="l2", seed=0, cache_dir=cache,
                                  progress=ctx.progress, detection_eps=1.0, pgd_steps=s["pgd_steps"],
                                  n_resamples=s["resamples"])
    rows = _zoo_rows(metrics)
    for r, (arch, meth) in zip(rows, which):  # evaluate_zoo keeps the order of the entries
        r["arch_key"], r["meth"] = arch, meth
    ms = []

    def ra(arch: str, meth: str, eps: float, which: str = "ra_pgd") -> dict[int, float]:
        return {r["seed"]: 100 * _at(r[which], eps) for r in rows if r["arch_key"] == arch and r["meth"] == meth}

    for arch, epochs in dict(s["archs"]).items():
        setting = (f"cpu-mnist-{arch}-* presets for {epochs} epochs (paper: 200) on {s['dataset']}, {s['n_points']} test "
                   f"points, PGD {s['pgd_steps']} steps (paper: 1000)")
        p = {m: _T1_PAPER[(arch, m)] for m in ("std", "lcr", "amr")}
        for a, b, eps, text in (("amr", "std", 1.0, "AMR above Std"), ("amr", "lcr", 2.0, "AMR above LCR at large eps")):
            ra_a, ra_b = ra(arch, a, eps), ra(arch, b, eps)
            common = sorted(set(ra_a) & set(ra_b))
            m, ci = t_ci([ra_a[sd] - ra_b[sd] for sd in common])
            i = _T1_EPS.index(eps) + 1
            claim = Claim("greater", f"{text}: {p[a][i]} vs {p[b][i]} at eps {eps:g} ({arch.upper()})", "Wu & Yu, Table 1")
            ms.append(measure(f"{arch.upper()}: PGD robust accuracy {a.upper()} minus {b.upper()} at eps {eps:g}", m, ci,
                              claim, ci_kind="paired t over seeds", n=f"{s['n_points']} points", seeds=len(common),
                              setting=setting, unit="points"))
        for meth in ("std", "lcr", "amr"):
            pg, mg = ra(arch, meth, 2.0), ra(arch, meth, 2.0, "ra_margin")
            m, ci = t_ci([pg[sd] - mg[sd] for sd in sorted(pg)])
            ms.append(measure(f"{arch.upper()} {meth.upper()}: PGD minus margin robust accuracy at eps 2 "
                              f"(paper's PGD: {p[meth][4]})", m, ci, _MASKING, ci_kind="t over seeds",
                              n=f"{s['n_points']} points", seeds=len(pg), setting=setting, unit="points"))
    figs = []
    for arch in dict(s["archs"]):
        series: list[dict[str, Any]] = []
        for meth in ("std", "lcr", "amr"):
            series.append({"label": f"{meth.upper()} PGD (ours, mean)", "x": list(_T1_EPS),
                           "y": [float(np.mean(list(ra(arch, meth, e).values()))) for e in _T1_EPS]})
            series.append({"label": f"{meth.upper()} margins (ours, mean)", "x": list(_T1_EPS), "dashed": True,
                           "y": [float(np.mean(list(ra(arch, meth, e, "ra_margin").values()))) for e in _T1_EPS]})
            series.append({"label": f"{meth.upper()} paper", "x": list(_T1_EPS), "y": list(_T1_PAPER[(arch, meth)][1:]),
                           "dotted": True})
        figs.append({"kind": "lines", "name": f"table1-{arch}", "title": f"Table 1, MNIST {arch.upper()}: robust accuracy",
                     "xlabel": "l2 eps", "ylabel": "robust accuracy %", "series": series})
    return _result(s, ms, figs, data={"rows": rows, "paper": {f"{k[0]}-{k[1]}": v for k, v in _T1_PAPER.items()}})


# ---- bounds: the fixed-feature-extractor presets --------------------------------------------------


def _run_bounds(s: Mapping[str, Any], ctx: _Context) -> StudyResult:
    """A bounds preset (:func:`marginkit.pipeline.bounds.run_bounds_preset`), or a miniature preset given as
    data (tiny scale) run through the same trainer; each claim compares two (model, layer) CE bounds."""
    import pandas as pd

    from ..bounds.presets import BoundsPreset, ModelRecipe, run_preset
    from ..data import load_dataset
    from .bounds import preset_trainer, run_bounds_preset

    cache = ctx.cache("zoo", "bounds")
    if "preset" in s:
        name = s["preset"]
        layers = tuple(s["layers"]) if s.get("layers") else None
        run = run_bounds_preset(name, ctx.cache("bounds", name), quick=bool(s["quick"]), executor=ctx.executor,
                                progress=ctx.progress, seed=s["seed"], neighbours=s["neighbours"], cache_dir=cache,
                                layers=layers)
        df, layers_df, settings = run.table, run.layers, dict(run.settings)
        figure = str(settings.get("figure", name))
    else:
        preset = BoundsPreset(s["name"], "miniature (not in the paper)",
                              tuple(ModelRecipe(**{**r, "params": dict(r.get("params", {}))}) for r in s["recipes"]),
                              tuple(s["layers"]), eps=tuple(s["eps"]), classes=tuple(s["classes"]), dataset=s["dataset"],
                              per_class=s["per_class"], quick_per_class=s["per_class"], claim="miniature")
        ds = load_dataset(preset.dataset, classes=preset.classes, seed=s["seed"])
        res = run_preset(preset, str(ctx.cache("bounds", preset.name)),
                         train=preset_trainer(ds, cache, seed=s["seed"], progress=ctx.progress),
                         neighbours=s["neighbours"], seed=s["seed"], progress=ctx.progress,
                         checkpoint_dir=str(ctx.cache("bounds", preset.name, "checkpoints")))
        df = res.to_frame()
        layers_df = pd.DataFrame(res.layers)
        settings = {"points": 2 * preset.per_class, "dataset": preset.dataset}
        figure = preset.figure
    eps_c = float(s["check_eps"])
    pts = settings.get("points", "?")
    searched = "every candidate pair" if s["neighbours"] is None else f"{s['neighbours']} neighbour(s) per point"
    setting = f"{pts} points of {settings.get('dataset', '')}, {searched}"

    def ce(model: str, layer: str) -> float:
        v = df[(df["model"] == model) & (df["layer"] == layer) & (np.isclose(df["eps"], eps_c))]["cross_entropy"]
        return float(v.iloc[0]) if len(v) else float("nan")

    ms = []
    notes = ["Fashion-MNIST is not available offline: mnist5k 3 vs 7 only."] if "preset" in s else []
    done = set(df["layer"])
    for claim_spec in s["claims"]:
        a, b = claim_spec["a"], claim_spec["b"]  # (model, layer) pairs: value = CE(a) - CE(b)
        if a[1] not in done or b[1] not in done:
            notes.append(f"Not run at this scale: '{claim_spec['paper']}' needs layer {a[1] if a[1] not in done else b[1]}.")
            continue
        va, vb = ce(*a), ce(*b)
        v = va - vb
        # Both bounds 0: no collision within eps among these points, so the comparison has no power.
        ci = (v, v) if math.isfinite(v) and (va > 0 or vb > 0) else None
        c = Claim(claim_spec["kind"], claim_spec["paper"], f"Ayyagari et al., {figure}",
                  threshold=claim_spec.get("threshold", 0.0), low=claim_spec.get("low", float("nan")),
                  high=claim_spec.get("high", float("nan")))
        ms.append(measure(f"CE bound {a[0]}/{a[1]} minus {b[0]}/{b[1]} at eps {eps_c:g} ({va:.4f} - {vb:.4f})", v, ci,
                          c, ci_kind="exact on these points (no CI over points)" if ci else "none: both bounds 0",
                          n=f"{pts} points", seeds=1, setting=setting))
    series = []
    for (model, layer), g in df.groupby(["model", "layer"], sort=False):
        g = g.sort_values("eps")
        series.append({"label": f"{model} {layer}", "x": g["eps"].tolist(), "y": g["cross_entropy"].tolist()})
    fig = {"kind": "lines", "name": f"bounds-{s.get('preset', s.get('name'))}",
           "title": f"{figure}: cross-entropy lower bounds", "xlabel": "l2 eps",
           "ylabel": "lower bound on the robust CE loss", "series": series}
    layer_rows = layers_df.drop(columns=["statuses"], errors="ignore").to_dict(orient="records")
    return _result(s, ms, [fig], data={"table": df.to_dict(orient="records"), "layers": layer_rows,
                                       "settings": {k: v for k, v in settings.items() if k != "layer_stats"}},
                   notes=notes)


# ---- the study table ------------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[[Mapping[str, Any], _Context], StudyResult]] = {
    "theorem3": _run_theorem3, "fixedset": _run_fixedset, "ablation": _run_ablation, "fisher": _run_fisher,
    "algorithm1": _run_algorithm1, "zoo": _run_zoo, "bounds": _run_bounds, "table1": _run_table1,
}

_FISHER_LAMS = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)
_FISHER_TAUS = (0.1, 1.0, 5.0, 40.0)
_BOTH_HANDS = ("dominant-0-near-tie", "three-way-near-ties")
_FIG3_CLAIMS = (
    {"a": ("standard", "relu1"), "b": ("standard", "fc1"), "kind": "greater", "threshold": 0.005,
     "paper": "relu1 raises the bound markedly"},
    {"a": ("standard", "fc2"), "b": ("standard", "relu1"), "kind": "within", "low": -0.02, "high": 0.02,
     "paper": "fc2 adds little"},
    {"a": ("standard", "relu2"), "b": ("standard", "fc2"), "kind": "greater", "threshold": 0.005,
     "paper": "relu2 adds a measurable amount"},
)
_FIG2_CLAIMS = tuple(
    {"a": ("standard", "fc1"), "b": (f"pgd-{e}", "fc1"), "kind": "greater", "threshold": 0.005,
     "paper": "standard training is the least robust at the first linear layer"} for e in (1, 2, 3)
)
_FIG2_TINY_CLAIMS = ({**_FIG2_CLAIMS[0], "b": ("pgd-1", "fc1")},)
_MINI_RECIPE = {"label": "standard", "widths": (6, 4), "epochs": 2, "lr": 1e-2}

STUDIES: tuple[Study, ...] = (
    Study("theorem3", "dynamics", "Theorem 3 estimate against its sample count", "Wu & Yu, eq. (16), App. F",
          "distances are estimated by eq. (16) with L_k from 1024 x 50 samples in B(x, 5)",
          "MNIST MLP 784-1024-10, 200 epochs, 51,200 samples per point", "theorem3", {
              "tiny": {"preset": "cpu-mnist-mlp-std", "dataset": "digits", "epochs": 1, "seed": 0, "points": 3,
                       "samples": 64, "radius": 5.0, "engine": "fast"},
              "quick": {"preset": "cpu-mnist-mlp-std", "dataset": "mnist5k", "epochs": 5, "seed": 0, "points": 10,
                        "samples": 2048, "radius": 5.0},
              "full": {"preset": "cpu-mnist-mlp-std", "dataset": "mnist5k", "epochs": 25, "seed": 0, "points": 10,
                       "samples": 51200, "radius": 5.0}}),
    Study("fixedset", "dynamics", "Minimum and average margin during training, on fixed point sets",
          "Wu & Yu, sec. 3, Figs. 1, 2, 6", "the minimum margin keeps rising while the average margin falls",
          "MNIST MLP, 200 epochs, Theorem 3 with 51,200 samples, one run", "fixedset", {
              "tiny": {"preset": "cpu-mnist-mlp-std", "dataset": "digits", "seeds": (0, 1), "points": 30, "samples": 8,
                       "epochs": 2, "every": 1},
              "quick": {"preset": "cpu-mnist-mlp-std", "dataset": "mnist5k", "seeds": (0, 1, 2), "points": 100,
                        "samples": 16, "epochs": 6, "every": 2},
              "full": {"preset": "cpu-mnist-mlp-std", "dataset": "mnist5k", "seeds": (0, 1, 2), "points": 300,
                       "samples": 32, "epochs": 25, "every": 5}}),
    Study("ablation", "dynamics", "Controlled ablation: average margin at a fixed minimum margin",
          "review of Wu & Yu, major comment 1", "robustness follows the average margin",
          "no controlled experiment in the paper (the review asks for one)", "ablation", {
              "tiny": {"seeds": (0, 1), "n": 60, "n_test": 40, "anchors": 5, "gd_steps": 200, "mlp_epochs": 40,
                       "classifiers": ("logreg", "svm")},
              "quick": {"seeds": (0, 1, 2), "n": 200, "n_test": 100, "anchors": 10, "gd_steps": 1000, "mlp_epochs": 150,
                        "classifiers": ("logreg", "svm", "mlp")},
              "full": {"seeds": (0, 1, 2, 3, 4), "n": 400, "n_test": 200, "anchors": 10, "gd_steps": 2000,
                       "mlp_epochs": 300, "classifiers": ("logreg", "svm", "mlp")}}),
    Study("fisher", "dynamics", "Fisher consistency of the multiclass objective eq. (15)", "Wu & Yu, Theorem 2, eq. (15)",
          "the regularised objective remains Fisher-consistent", "binary proof (Theorem 2); multiclass not shown",
          "fisher", {
              "tiny": {"dists": 1, "lams": (0.1, 1.0), "taus": (1.0,), "hand": (), "head_lams": (), "bias_steps": 5},
              "quick": {"dists": 3, "lams": _FISHER_LAMS, "taus": _FISHER_TAUS, "hand": _BOTH_HANDS,
                        "head_lams": (0.1, 1.0), "bias_steps": 11},
              "full": {"dists": 30, "lams": _FISHER_LAMS, "taus": _FISHER_TAUS, "hand": _BOTH_HANDS,
                       "head_lams": (0.1, 1.0), "bias_steps": 21}}),
    Study("algorithm1", "consistency", "Algorithm 1 against the subset-only estimate (paired)",
          "Ngnawe et al., sec. 2.4, Alg. 1, Figs. 5, 10", "a threshold on the logit margin tuned on n attacked points "
          "estimates the robust accuracy of the whole set", "CIFAR10/100 RobustBench models, n = 500 of 10,000, 10 subsets",
          "algorithm1", {
              "tiny": {"dataset": "digits", "seed": 0, "points": 120, "chunk": 60, "sizes": (30,), "eps": (0.3,),
                       "repeats": 20, "model_overrides": {"hidden": 32, "depth": 1, "epochs": 2},
                       "engine": "fast"},
              "quick": {"dataset": "mnist5k", "seed": 0, "points": 1000, "chunk": 250, "sizes": (100, 300),
                        "eps": (0.5, 1.0, 1.5), "repeats": 100},
              "full": {"dataset": "mnist5k", "seed": 0, "points": "all", "chunk": 250, "sizes": (100, 300, 500),
                       "eps": (0.5, 1.0, 1.5, 2.0), "repeats": 200}}),
    Study("zoo", "consistency", "Margin consistency of a trained model zoo (Table 1, Fig. 4, Fig. 8 analogues)",
          "Ngnawe et al., Table 1, Figs. 4, 8; Wu & Yu, Table 1",
          "adversarially trained models are strongly margin-consistent; margins and PGD give the same robust accuracy",
          "RobustBench CIFAR models (linf 8/255); Wu & Yu: MNIST MLP, 200 epochs", "zoo", {
              "tiny": {"zoo_scale": "tiny", "n_points": 40, "eps": (0.25, 0.5), "check_eps": 0.5, "pgd_steps": 10,
                       "resamples": 200, "pseudo": 0, "pseudo_fit": 0},
              "quick": {"zoo_scale": "quick", "n_points": 200, "eps": (0.25, 0.5, 1.0), "check_eps": 0.5,
                        "pgd_steps": 50, "resamples": 1000, "pseudo": 1, "pseudo_fit": 5000},
              "full": {"zoo_scale": "full", "n_points": 1000, "eps": (0.5, 1.0, 1.5, 2.0), "check_eps": 1.0,
                       "pgd_steps": 50, "resamples": 1000, "pseudo": 2, "pseudo_fit": 5000}}),
    Study("table1", "dynamics", "Table 1: AMR vs LCR vs standard training, with seeds, and a gradient-masking check",
          "Wu & Yu, Table 1, sec. 5.3", "AMR is more robust than standard training and than LCR at large eps; "
          "PGD measures robust accuracy", "MNIST MLP and CNN, 200 epochs, PGD with 1000 iterations, one run", "table1", {
              "tiny": {"dataset": "digits", "archs": {"mlp": 1}, "seeds": (0, 1), "n_points": 30, "pgd_steps": 5,
                       "resamples": 100},
              "quick": {"dataset": "mnist5k", "archs": {"mlp": 3, "cnn": 1}, "seeds": (0, 1), "n_points": 100,
                        "pgd_steps": 20, "resamples": 200},
              "full": {"dataset": "mnist5k", "archs": {"mlp": 25, "cnn": 10}, "seeds": (0, 1, 2), "n_points": 1000,
                       "pgd_steps": 100, "resamples": 1000}}),
    Study("bounds-layers", "bounds", "Layer-wise lower bounds, standard FCNN (Fig. 3)",
          "Ayyagari et al., Fig. 3 / Fig. 8", "relu1 raises the bound markedly; fc2 adds little; relu2 adds some",
          "FCNN 300-200 on MNIST / Fashion-MNIST 3 vs 7, 200 points per class, every pair searched", "bounds", {
              "tiny": {"preset": "tiny-synthetic", "quick": True, "seed": 0, "neighbours": None, "check_eps": 0.5,
                       "claims": _FIG3_CLAIMS},
              "quick": {"preset": "fig3-layers-standard", "quick": True, "seed": 0, "neighbours": 1,
                        "layers": ("input", "fc1", "relu1"), "check_eps": 3.0, "claims": _FIG3_CLAIMS},
              "full": {"preset": "fig3-layers-standard", "quick": False, "seed": 0, "neighbours": None,
                       "check_eps": 2.0, "claims": _FIG3_CLAIMS}}),
    Study("bounds-methods", "bounds", "First linear layer by training method (Fig. 2)", "Ayyagari et al., Fig. 2 / Fig. 7",
          "standard training is least robust; robustness grows with eps_train", "FCNN 300-200, PGD eps_train 1-3, TRADES",
          "bounds", {
              "tiny": {"name": "mini-methods", "dataset": "synthetic", "classes": (0, 1),
                       "recipes": (_MINI_RECIPE, {**_MINI_RECIPE, "label": "pgd-1", "method": "pgd",
                                                  "params": {"norm": "l2", "eps": 0.2, "steps": 3}}),
                       "layers": ("input", "fc1"), "eps": (0.05, 0.2, 0.5), "per_class": 5, "seed": 0, "neighbours": None,
                       "check_eps": 0.5, "claims": _FIG2_TINY_CLAIMS},
              "quick": {"preset": "fig2-first-linear", "quick": True, "seed": 0, "neighbours": None, "check_eps": 3.0,
                        "claims": _FIG2_CLAIMS},
              "full": {"preset": "fig2-first-linear", "quick": False, "seed": 0, "neighbours": None, "check_eps": 2.0,
                       "claims": _FIG2_CLAIMS}}),
)


def studies_for(sections: Sequence[str], only: Sequence[str] | None = None) -> list[Study]:
    """The studies of ``sections`` ("all" or names from :data:`SECTIONS`), optionally only those named."""
    secs = list(SECTIONS) if not sections or "all" in sections else list(sections)
    for s in secs:
        if s not in SECTIONS:
            raise ValueError(f"unknown section {s!r}; choose from {', '.join(SECTIONS)} or all")
    chosen = [st for st in STUDIES if st.section in secs]
    if only:
        names = {st.name for st in STUDIES}
        for n in only:
            if n not in names:
                raise ValueError(f"unknown study {n!r}; available: {', '.join(st.name for st in STUDIES)}")
        chosen = [st for st in chosen if st.name in set(only)]
        if not chosen:
            raise ValueError(f"none of {', '.join(only)} belongs to the sections {', '.join(secs)}")
    return chosen


def study_command(study: Study, scale: str, out: str | os.PathLike) -> str:
    """The command that produces ``study`` alone."""
    return f"marginkit reproduce {study.section} --{scale} --only {study.name} --out {os.fspath(out)}"


def _key(obj: Any) -> str:
    from ..results.jsonio import dumps

    return hashlib.sha256(dumps(obj, indent=None, sort_keys=True).encode()).hexdigest()[:12]


def _result(s: Mapping[str, Any], ms: list[Measurement], figs: list[dict[str, Any]], *, data: dict[str, Any],
            notes: Sequence[str] = ()) -> StudyResult:
    """A runner's result; the study fields are filled in by :func:`run_study`."""
    return StudyResult("", "", "", "", "", "", "", dict(s), ms, figs, list(notes), data)


def _table1_entries(api: dict[str, Any], s: Mapping[str, Any]) -> tuple[list[Any], list[tuple[str, str]]]:
    entries, which = [], []
    for arch, epochs in dict(s["archs"]).items():
        for meth in ("std", "lcr", "amr"):
            for sd in s["seeds"]:
                entries.append(api["ZooEntry"].from_preset(f"cpu-mnist-{arch}-{meth}", seed=sd, epochs=epochs,
                                                           dataset=s["dataset"]))
                which.append((arch, meth))
    return entries, which


def _inputs(study: Study, scale: str) -> str:
    """Hash of what a study depends on besides its settings: the model keys of the zoo it trains (the zoo's
    scales are defined in :mod:`marginkit.training.model_zoo`, so they can change without these settings)."""
    s = study.settings(scale)
    if study.runner == "zoo":
        return _key(sorted(e.key() for e in _zoo_api()["zoo_entries"](s["zoo_scale"])))
    if study.runner == "table1":
        return _key(sorted(e.key() for e in _table1_entries(_zoo_api(), s)[0]))
    return ""


def run_study(study: Study, scale: str, out: str | os.PathLike, *, executor: Any = None,
              progress: bool = False) -> StudyResult:
    """Run one study at ``scale`` (no resume check; see :func:`run_reproduction`) and return its result."""
    settings = study.settings(scale)
    ctx = _Context(Path(out), scale, executor, progress)
    t0 = time.perf_counter()
    res = _RUNNERS[study.runner](settings, ctx)
    return replace(res, name=study.name, section=study.section, title=study.title, reference=study.reference,
                   claim=study.claim, paper_setting=study.paper_setting, scale=scale, settings=settings,
                   inputs=_inputs(study, scale),
                   seconds=time.perf_counter() - t0, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   command=study_command(study, scale, out))


# --------------------------------------------------------------------------------------------- runner


@dataclass
class ReproductionRun:
    """The studies of one ``marginkit reproduce`` call: results in study order, what ran and what was
    reused, this sitting's wall time and the total over sittings (``OUT/run.json``)."""

    out: Path
    scale: str
    results: list[StudyResult]
    ran: list[str]
    reused: list[str]
    unavailable: dict[str, str]
    seconds: float
    total_seconds: float
    sittings: list[dict[str, Any]]


def _study_path(out: Path, name: str) -> Path:
    return out / "studies" / f"{name}.json"


def _stored(out: Path, study: Study, scale: str) -> StudyResult | None:
    path = _study_path(out, study.name)
    if not path.exists():
        return None
    d = read_json(path)
    if d.get("scale") != scale:
        raise ValueError(f"{path} holds the {d.get('scale')!r} scale, not {scale!r}: use another --out folder "
                         f"(or --force to replace it)")
    if _key(d.get("settings")) != _key(study.settings(scale)):
        raise ValueError(f"{path} was made with other settings than this version's {scale!r} scale: use another "
                         f"--out folder (or --force to rerun it)")
    try:
        inputs = _inputs(study, scale)
    except StudyUnavailable:
        return None  # reported when the study is run
    if d.get("inputs", "") != inputs:
        raise ValueError(f"{path} was made from other models than this version's {study.name!r} study (the zoo "
                         f"changed): use --force --only {study.name} to rerun it, or another --out folder")
    return StudyResult.from_dict(d)


def run_reproduction(sections: Sequence[str] = ("all",), *, out: str | os.PathLike, scale: str = "quick",
                     only: Sequence[str] | None = None, executor: Any = None, progress: bool = False, force: bool = False,
                     on_study: Callable[[Study, str, StudyResult | None], None] | None = None) -> ReproductionRun:
    """Run the studies of ``sections`` at ``scale`` into ``out``, reusing finished ones.

    Each finished study is written to ``out/studies/<name>.json`` as soon as it ends; a rerun reads it
    instead of running the study again (``force``: run again). A study whose library parts are missing
    (:class:`StudyUnavailable`) is reported in ``unavailable`` and not stored, so a later run tries again.
    ``on_study(study, state, result)`` is called with state ``"start"``, ``"done"``, ``"reused"`` or
    ``"unavailable"`` (the CLI's progress). ``executor`` (:class:`marginkit.parallel.ExecutorConfig`)
    spreads the independent units of a study (zoo models, seeds) over workers.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    studies = studies_for(sections, only)
    outp = Path(out)
    (outp / "studies").mkdir(parents=True, exist_ok=True)
    run_path = outp / "run.json"
    prior = read_json(run_path) if run_path.exists() else {}
    if prior and prior.get("scale") not in (None, scale):
        raise ValueError(f"{outp} holds a {prior.get('scale')!r} run; use another --out folder for the {scale!r} scale")
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: list[StudyResult] = []
    ran: list[str] = []
    reused: list[str] = []
    unavailable: dict[str, str] = {}
    sittings = list(prior.get("sittings", []))

    def record(done_now: bool) -> float:
        sit = {"started": started, "seconds": time.perf_counter() - t0, "ran": list(ran), "reused": list(reused),
               "sections": list(sections), "finished": done_now}
        all_sittings = sittings + [sit]
        total = float(sum(_num(x["seconds"]) for x in all_sittings))
        studies_s = dict(prior.get("study_seconds", {}))
        for r in results:
            if r.name in ran:
                studies_s[r.name] = r.seconds
        write_json(run_path, {"scale": scale, "sittings": all_sittings, "total_seconds": total,
                              "study_seconds": studies_s, "machine": {"platform": platform.platform(),
                                                                      "cpus": os.cpu_count()}})
        return total

    for st in studies:
        stored = None if force else _stored(outp, st, scale)
        if stored is not None:
            results.append(stored)
            reused.append(st.name)
            if on_study:
                on_study(st, "reused", stored)
            continue
        if on_study:
            on_study(st, "start", None)
        try:
            res = run_study(st, scale, outp, executor=executor, progress=progress)
        except StudyUnavailable as exc:
            unavailable[st.name] = str(exc)
            if on_study:
                on_study(st, "unavailable", None)
            continue
        write_json(_study_path(outp, st.name), res.to_dict())
        results.append(res)
        ran.append(st.name)
        record(False)
        if on_study:
            on_study(st, "done", res)
    total = record(True)
    return ReproductionRun(outp, scale, results, ran, reused, unavailable, time.perf_counter() - t0, total,
                           read_json(run_path)["sittings"])


def load_reproduction(out: str | os.PathLike) -> tuple[list[StudyResult], dict[str, Any]]:
    """The stored study results of ``out`` (in the order of :data:`STUDIES`) and ``run.json``."""
    outp = Path(out)
    order = {st.name: i for i, st in enumerate(STUDIES)}
    results = [StudyResult.from_dict(read_json(p)) for p in sorted((outp / "studies").glob("*.json"))]
    results.sort(key=lambda r: order.get(r.name, len(order)))
    run = read_json(outp / "run.json") if (outp / "run.json").exists() else {}
    return results, run

