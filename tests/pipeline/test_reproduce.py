"""The reproduction suite: studies as data, verdicts from CIs, resume without duplicate work, and a report
whose HTML is self-contained (every figure embedded as a PNG data URI) and whose Markdown lists every study.

The default tests run the cheap studies at the tiny scale (the score-level Fisher check, the ablation with
linear classifiers) plus the zoo study on a fake zoo; the slow test runs every study at the tiny scale.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from marginkit.pipeline import reproduce as rp
from marginkit.report.reproduce import write_reproduction_report

CHEAP = ["ablation", "fisher", "zoo", "table1"]


# ---------------------------------------------------------------------------------------------- a fake zoo


@dataclass(frozen=True)
class FakeEntry:
    method: str
    seed: int = 0
    epochs: int = 1
    arch: str = "mlp"
    dataset: str = "digits"
    label: str = ""

    def key(self) -> str:
        return f"{self.method}-{self.seed}-{self.arch}-{self.epochs}"

    @classmethod
    def from_preset(cls, name, *, seed=0, epochs=None, dataset="mnist5k"):
        arch, meth = name.split("-")[2:4]
        return cls({"std": "standard"}.get(meth, meth), seed, epochs or 1, arch, dataset, f"{name} ({epochs} ep)")


@dataclass(frozen=True)
class FakeModel:
    entry: FakeEntry
    path: Path
    seconds: float
    cached: bool


@dataclass(frozen=True)
class FakeMetrics:
    entry: FakeEntry
    n: int
    accuracy: float
    robust_acc_margin: dict
    robust_acc_pgd: dict
    tau: float
    tau_ci: tuple
    auroc: float
    eps: float
    extra: dict = field(default_factory=dict)


class FakeZoo:
    """zoo_entries / train_zoo / evaluate_zoo with the interface of the brief, counting the training calls."""

    def __init__(self) -> None:
        self.trained: list[str] = []
        self.pseudo_fits: list[str] = []

    def entries(self, scale: str) -> list[FakeEntry]:
        assert scale in ("tiny", "quick")
        return [FakeEntry(m, s, label=m.upper()) for m in ("standard", "amr", "mma") for s in (0, 1)]

    def train(self, entries, cache_dir, *, executor=None, progress=False):
        out = []
        for e in entries:
            p = Path(cache_dir) / f"{e.key()}.pt"
            cached = p.exists()
            if not cached:
                self.trained.append(e.key())
                p.write_text("model")
            out.append(FakeModel(e, p, 0.1, cached))
        return out

    def evaluate(self, models, *, n_points, eps, norm="l2", seed=0, cache_dir=None, progress=False, detection_eps=None,
                 pgd_steps=50, n_resamples=1000):
        res = []
        for m in models:
            e = m.entry
            base = {"standard": 0.8, "amr": 0.75, "lcr": 0.7, "mma": 0.3}[e.method] + 0.01 * e.seed
            ra = {float(x): max(0.0, 0.9 - 0.3 * x + 0.1 * (e.method == "amr") + 0.02 * e.seed) for x in eps}
            res.append(FakeMetrics(e, n_points, 0.9, ra, {k: v + 0.01 for k, v in ra.items()}, base,
                                   (base - 0.05, base + 0.05), 0.95, float(eps[0])))
        return res

    def pseudo(self, model, *, eps, n_eval, n_fit, seed=0, cache_dir=None, progress=False):
        self.pseudo_fits.append(model.entry.key())
        return FakePseudo({"kendall_tau": 0.3, "tau_ci": [0.2, 0.4]}, {"kendall_tau": 0.6, "tau_ci": [0.5, 0.7]},
                          n_fit, n_eval, {"hidden": [512] * 5})


@dataclass(frozen=True)
class FakePseudo:
    logit: dict
    pseudo: dict
    n_fit: int
    n_eval: int
    config: dict


@pytest.fixture
def fake_zoo(monkeypatch):
    zoo = FakeZoo()
    monkeypatch.setattr(rp, "_zoo_api", lambda: {"ZooEntry": FakeEntry, "zoo_entries": zoo.entries,
                                                 "train_zoo": zoo.train, "evaluate_zoo": zoo.evaluate,
                                                 "pseudo_margin_zoo": zoo.pseudo})
    return zoo


@pytest.fixture
def counted(monkeypatch):
    """Count how often each study runner executes."""
    calls: dict[str, int] = {}
    runners = dict(rp._RUNNERS)

    def wrap(name, fn):
        def run(s, ctx):
            calls[name] = calls.get(name, 0) + 1
            return fn(s, ctx)
        return run

    monkeypatch.setattr(rp, "_RUNNERS", {k: wrap(k, v) for k, v in runners.items()})
    return calls


# ---------------------------------------------------------------------------------------------- verdicts


def test_verdict_rule_from_the_ci():
    gt = rp.Claim("greater", "rises", "paper", threshold=0.0)
    assert rp.verdict(0.5, (0.1, 0.9), gt) == "confirmed"
    assert rp.verdict(-0.5, (-0.9, -0.1), gt) == "contradicted"
    assert rp.verdict(0.0, (0.0, 0.0), gt) == "contradicted"  # exactly no change is not a rise
    assert rp.verdict(0.2, (-0.1, 0.5), gt) == "undetermined"
    assert rp.verdict(0.2, None, gt) == "undetermined"
    lt = rp.Claim("less", "0 counterexamples", "paper", threshold=0.5)
    assert rp.verdict(0, (0, 0), lt) == "confirmed" and rp.verdict(2, (2, 2), lt) == "contradicted"
    rng = rp.Claim("within", "about 1", "paper", low=0.9, high=1.1)
    assert rp.verdict(1.0, (0.95, 1.05), rng) == "confirmed"
    assert rp.verdict(1.5, (1.2, 1.8), rng) == "contradicted"
    assert rp.verdict(1.05, (0.95, 1.2), rng) == "undetermined"
    assert rp.verdict(1.0, (0.0, 2.0), rp.Claim("none", "context", "paper")) == "context"
    with pytest.raises(ValueError, match="claim kind"):
        rp.Claim("bigger", "x", "y")


def test_studies_are_data_with_every_scale():
    names = [s.name for s in rp.STUDIES]
    assert len(names) == len(set(names))
    assert {s.section for s in rp.STUDIES} == set(rp.SECTIONS)
    for st in rp.STUDIES:
        assert st.runner in rp._RUNNERS
        for scale in rp.SCALES:
            json.dumps(rp.Measurement.__name__)  # noqa - the settings below must be JSON-able
            assert rp._key(st.settings(scale))
        assert st.reference and st.claim and st.paper_setting
    assert [s.name for s in rp.studies_for(["bounds"])] == ["bounds-layers", "bounds-methods"]
    with pytest.raises(ValueError, match="unknown section"):
        rp.studies_for(["theory"])
    with pytest.raises(ValueError, match="unknown study"):
        rp.studies_for(["all"], ["nope"])
    with pytest.raises(ValueError, match="unknown scale"):
        rp.STUDIES[0].settings("huge")


# ---------------------------------------------------------------------------------------------- runs


def test_tiny_run_stores_each_study_and_a_rerun_does_no_work(tmp_path, fake_zoo, counted):
    run = rp.run_reproduction(["all"], out=tmp_path, scale="tiny", only=CHEAP)
    assert run.ran == CHEAP and run.reused == [] and not run.unavailable
    assert counted == {"ablation": 1, "fisher": 1, "zoo": 1, "table1": 1}
    assert len(fake_zoo.trained) == 8  # the zoo (6), then the LCR pair of Table 1: the fake keys make std/amr shared
    for name in CHEAP:
        d = json.loads((tmp_path / "studies" / f"{name}.json").read_text())
        assert d["scale"] == "tiny" and d["measurements"] and d["command"].startswith("marginkit reproduce ")
        assert f"--only {name}" in d["command"]
        for m in d["measurements"]:
            assert m["verdict"] in (*rp.VERDICTS, "context")
    by = {r.name: r for r in run.results}
    fisher = by["fisher"].measurements[0]
    assert fisher.value == 0 and fisher.verdict == "confirmed"  # score level: no counterexample (Theorem 2)
    taus = [m for m in by["zoo"].measurements if "Kendall tau" in m.quantity]
    assert [m.verdict for m in taus] == ["confirmed", "confirmed", "context"]  # 0.8 / 0.75 > 0.68; MMA: context
    assert taus[0].seeds == 2 and taus[0].ci_kind == "t over seeds"
    t1 = {m.quantity: m for m in by["table1"].measurements}
    amr = t1["MLP: PGD robust accuracy AMR minus STD at eps 1"]
    assert math.isclose(amr.value, 10.0) and amr.verdict == "confirmed" and amr.seeds == 2
    assert all(m.ci_kind in ("paired t over seeds", "t over seeds") for m in t1.values())
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "studies").glob("*.json")}
    sittings = json.loads((tmp_path / "run.json").read_text())["sittings"]
    assert len(sittings) == 1 and sittings[0]["ran"] == CHEAP

    again = rp.run_reproduction(["all"], out=tmp_path, scale="tiny", only=CHEAP)
    assert again.ran == [] and again.reused == CHEAP
    assert counted == {"ablation": 1, "fisher": 1, "zoo": 1, "table1": 1}  # nothing ran twice
    assert len(fake_zoo.trained) == 8
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "studies").glob("*.json")} == stamps
    info = json.loads((tmp_path / "run.json").read_text())
    assert len(info["sittings"]) == 2 and math.isclose(info["total_seconds"],
                                                       sum(s["seconds"] for s in info["sittings"]))
    # results read back equal what was measured
    back = {r.name: r for r in again.results}
    assert [m.value for m in back["ablation"].measurements] == [m.value for m in by["ablation"].measurements]
    _check_report(tmp_path, CHEAP)  # the report of these studies: self-contained HTML, every study in the Markdown


def test_interrupted_run_resumes_where_it_stopped(tmp_path, fake_zoo, counted, monkeypatch):
    real = rp._RUNNERS["zoo"]

    def boom(s, ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(rp._RUNNERS, "zoo", boom)
    with pytest.raises(KeyboardInterrupt):
        rp.run_reproduction(["all"], out=tmp_path, scale="tiny", only=CHEAP)
    assert sorted(p.stem for p in (tmp_path / "studies").glob("*.json")) == ["ablation", "fisher"]
    monkeypatch.setitem(rp._RUNNERS, "zoo", real)
    run = rp.run_reproduction(["all"], out=tmp_path, scale="tiny", only=CHEAP)
    assert run.ran == ["zoo", "table1"] and run.reused == ["ablation", "fisher"]
    assert counted["ablation"] == 1 and counted["fisher"] == 1
    # force reruns
    forced = rp.run_reproduction(["dynamics"], out=tmp_path, scale="tiny", only=["fisher"], force=True)
    assert forced.ran == ["fisher"] and counted["fisher"] == 2


def test_quick_zoo_fits_the_pseudo_margin_on_the_least_consistent_model(tmp_path, fake_zoo):
    st = next(s for s in rp.STUDIES if s.name == "zoo")
    res = rp.run_study(st, "quick", tmp_path)
    assert len(fake_zoo.pseudo_fits) == 1 and fake_zoo.pseudo_fits[0].startswith("mma-0")
    (t2,) = [m for m in res.measurements if "Table 2" in m.quantity]
    assert math.isclose(t2.value, 0.3) and t2.ci == pytest.approx((0.1, 0.5)) and t2.verdict == "confirmed"
    fig8 = [m for m in res.measurements if "Fig. 8" in m.quantity]
    assert len(fig8) == 3 and all(math.isclose(m.value, 1.0) and m.verdict == "confirmed" for m in fig8)


def test_a_folder_of_another_scale_or_settings_is_refused(tmp_path, fake_zoo):
    rp.run_reproduction(["dynamics"], out=tmp_path, scale="tiny", only=["fisher"])
    with pytest.raises(ValueError, match="'tiny' run"):
        rp.run_reproduction(["dynamics"], out=tmp_path, scale="quick", only=["fisher"])
    path = tmp_path / "studies" / "fisher.json"
    d = json.loads(path.read_text())
    d["settings"]["dists"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="other settings"):
        rp.run_reproduction(["dynamics"], out=tmp_path, scale="tiny", only=["fisher"])


def test_a_changed_zoo_makes_the_stored_study_stale(tmp_path, fake_zoo, monkeypatch):
    rp.run_reproduction(["consistency"], out=tmp_path, scale="tiny", only=["zoo"])
    assert rp.run_reproduction(["consistency"], out=tmp_path, scale="tiny", only=["zoo"]).reused == ["zoo"]
    monkeypatch.setattr(fake_zoo, "entries", lambda scale: [FakeEntry("standard", s) for s in (0, 1, 2)])
    with pytest.raises(ValueError, match="the zoo changed"):
        rp.run_reproduction(["consistency"], out=tmp_path, scale="tiny", only=["zoo"])
    assert rp.run_reproduction(["consistency"], out=tmp_path, scale="tiny", only=["zoo"], force=True).ran == ["zoo"]


def test_missing_zoo_is_reported_not_stored(tmp_path, monkeypatch):
    def missing():
        raise rp.StudyUnavailable("the model zoo is not available in this installation (test)")

    monkeypatch.setattr(rp, "_zoo_api", missing)
    run = rp.run_reproduction(["consistency"], out=tmp_path, scale="tiny", only=["zoo"])
    assert run.ran == [] and "zoo" in run.unavailable
    assert not (tmp_path / "studies" / "zoo.json").exists()
    files = write_reproduction_report(tmp_path, unavailable=run.unavailable)
    assert "not run: the model zoo is not available" in files.markdown.read_text()


# ---------------------------------------------------------------------------------------------- report


def _check_report(out: Path, names: list[str]) -> None:
    results, _ = rp.load_reproduction(out)
    files = write_reproduction_report(out)
    md = files.markdown.read_text()
    page = files.html.read_text()
    for name in names:
        assert f"## {name}: " in md  # every study has its section
        assert f"--only {name}" in md
    n_figs = sum(len(r.figures) for r in results)
    assert n_figs >= 1 and len(files.figures) == n_figs
    for f in files.figures:  # Markdown links every figure, next to it
        assert f.exists() and f"]({f.relative_to(out).as_posix()})" in md
    # self-contained HTML: no external reference of any kind
    low = page.lower()
    for bad in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert bad not in low, bad
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    hrefs = re.findall(r'\bhref="([^"]*)"', page)
    assert hrefs == []
    assert len(srcs) == n_figs == len(re.findall(r"<img ", page))
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        raw = base64.b64decode(s.split(",", 1)[1], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 1000
    for r in results:
        for m in r.measurements:
            assert m.verdict in page
    assert "Verdict rule" in md and "Verdict rule" in page


@pytest.mark.slow
def test_every_study_at_the_tiny_scale(tmp_path, fake_zoo):
    names = [s.name for s in rp.STUDIES]
    run = rp.run_reproduction(["all"], out=tmp_path, scale="tiny")
    assert run.ran == names and not run.unavailable
    for r in run.results:
        assert r.measurements, r.name
        assert all(math.isfinite(m.value) for m in r.measurements), r.name
    _check_report(tmp_path, names)
    again = rp.run_reproduction(["all"], out=tmp_path, scale="tiny")
    assert again.ran == [] and again.reused == names
