"""The reproduction zoo: entries and their keys, cached and resumable training, per-model metrics."""

import json

import pytest
import torch

import marginkit.pipeline.zoo as zoo
from marginkit.models.checkpoint import load_checkpoint
from marginkit.pipeline.zoo import ZooMetrics, evaluate_zoo, train_zoo
from marginkit.training import available_methods
from marginkit.training.model_zoo import SCALES, ZooEntry, zoo_entries
from marginkit.training.trainer import Trainer

_SMALL = dict(arch="mlp", dataset="digits", epochs=2, spec=(("hidden", 16), ("depth", 1)),
              train=(("lr", 1e-2), ("batch_size", 256)))


def _entries():
    return [ZooEntry("standard", seed=0, **_SMALL), ZooEntry("standard", seed=1, **_SMALL),
            ZooEntry("mma", (("d_max", 0.5), ("steps", 2)), seed=0, **_SMALL)]


def test_entry_keys_are_stable_and_cover_every_setting():
    a = ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, label="x")
    b = ZooEntry("pgd", (("eps", 0.5), ("norm", "l2")), label="another label")
    assert a.key() == b.key() and a == ZooEntry("pgd", {"eps": 0.5, "norm": "l2"}, label="x")
    assert hash(a) == hash(ZooEntry("pgd", {"eps": 0.5, "norm": "l2"}, label="x"))
    others = [ZooEntry("pgd", {"norm": "l2", "eps": 1.0}), ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, seed=1),
              ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, epochs=11), ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, arch="cnn"),
              ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, dataset="digits"),
              ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, train={"lr": 1e-2}),
              ZooEntry("pgd", {"norm": "l2", "eps": 0.5}, spec={"hidden": 8})]
    assert len({e.key() for e in others} | {a.key()}) == len(others) + 1
    assert a.key() == "pgd-" + a.key().split("-")[1] and len(a.key().split("-")[1]) == 16
    with pytest.raises(ValueError):
        ZooEntry("standard", train={"epochs": 3})
    with pytest.raises(ValueError):
        ZooEntry("standard", arch="resnet")


@pytest.mark.parametrize("scale", SCALES)
def test_zoo_entries_are_distinct_and_use_registered_methods(scale):
    entries = zoo_entries(scale)
    assert len({e.key() for e in entries}) == len(entries) > 0
    assert {e.method for e in entries} <= set(available_methods())
    if scale != "tiny":
        assert {e.method for e in entries} == {"standard", "pgd", "trades", "amr", "lcr", "mma"}
        assert {dict(e.params)["norm"] for e in entries if e.method == "pgd"} == {"l2", "linf"}
        assert len({dict(e.params)["d_max"] for e in entries if e.method == "mma"}) >= 2
        assert len({e.seed for e in entries}) >= 2
    for e in entries:
        e.train_config()
        e.model_spec((1, 8, 8) if e.dataset == "digits" else (1, 28, 28), 10)
    with pytest.raises(ValueError):
        zoo_entries("huge")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("zoo")
    return cache, train_zoo(_entries(), cache)


def test_train_zoo_writes_models_and_a_rerun_trains_nothing(trained, monkeypatch):
    cache, models = trained
    assert [m.entry for m in models] == _entries()
    assert not any(m.cached for m in models)
    for m in models:
        assert m.path.exists() and m.path.name == f"{m.entry.key()}.pt" and m.seconds > 0
        model, ck = load_checkpoint(m.path)
        assert ck.metadata["key"] == m.entry.key() and len(ck.metadata["history"]) == 2
        assert not (cache / f"{m.entry.key()}.train" / "last.pt").exists()
    stamps = {m.path: m.path.stat().st_mtime_ns for m in models}

    def boom(*a, **k):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(zoo, "train_model", boom)
    again = train_zoo(_entries(), cache)
    assert all(m.cached for m in again) and [m.path for m in again] == [m.path for m in models]
    assert [m.seconds for m in again] == pytest.approx([m.seconds for m in models])
    assert {m.path: m.path.stat().st_mtime_ns for m in again} == stamps
    with pytest.raises(ValueError):
        train_zoo(_entries()[:1] * 2, cache)


def test_interrupted_run_resumes_without_duplicates(tmp_path, monkeypatch):
    entries = _entries()[:2]
    saves: list[int] = []
    original = Trainer._save

    def save_then_die(self):
        original(self)
        saves.append(self.epoch)
        if len(saves) == 3:  # first model done (2 epochs), second interrupted after its first epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_zoo(entries, tmp_path)
    assert (tmp_path / f"{entries[0].key()}.pt").exists() and not (tmp_path / f"{entries[1].key()}.pt").exists()
    assert (tmp_path / f"{entries[1].key()}.train" / "last.pt").exists()
    models = train_zoo(entries, tmp_path)
    assert saves == [1, 2, 1, 2]  # the second model resumed at epoch 2; nothing was trained twice
    assert [m.cached for m in models] == [True, False]
    _, ck = load_checkpoint(models[1].path)
    assert [h["epoch"] for h in ck.metadata["history"]] == [1, 2]
    # The resumed model equals one trained in one go.
    fresh = train_zoo(entries[1:], tmp_path / "fresh")[0]
    a, _ = load_checkpoint(models[1].path)
    b, _ = load_checkpoint(fresh.path)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_evaluate_zoo_numbers_are_consistent_and_cached(trained, monkeypatch):
    cache, models = trained
    eps = [0.0, 0.2, 0.5, 1.0]
    mets = evaluate_zoo(models, n_points=40, eps=eps, n_resamples=100, pgd_steps=10)
    for m in mets:
        assert isinstance(m, ZooMetrics) and m.n == 40 and m.key == m.entry.key()
        assert 0.3 < m.accuracy <= 1.0
        # eps 0: robust accuracy is accuracy, under both readings
        assert m.robust_acc_margin[0.0] == pytest.approx(m.accuracy)
        assert m.robust_acc_pgd[0.0] == pytest.approx(m.accuracy)
        curve = [m.robust_acc_margin[e] for e in eps]
        assert curve == sorted(curve, reverse=True)
        assert m.n_correct == round(m.accuracy * m.n)
        assert m.tau is not None and -1 <= m.tau <= 1
        assert m.tau_ci[0] <= m.tau <= m.tau_ci[1]
        assert m.eps == 0.5 and m.median_margin > 0 and m.seconds > 0
        for e in eps:
            assert m.pgd_excess[e] == pytest.approx(m.robust_acc_pgd[e] - m.robust_acc_margin[e])
        json.dumps(m.to_dict())
    assert len({m.entry.key() for m in mets}) == 3
    stored = sorted(cache.glob("*.eval-*.json"))
    assert len(stored) == 3

    def boom(*a, **k):
        raise AssertionError("cached metrics were recomputed")

    monkeypatch.setattr(zoo, "_evaluate_one", boom)
    again = evaluate_zoo(models, n_points=40, eps=eps, n_resamples=100, pgd_steps=10)
    for a, b in zip(mets, again):
        assert a.to_dict() == b.to_dict()
    with pytest.raises(AssertionError):  # other settings are another evaluation
        evaluate_zoo(models, n_points=41, eps=eps, n_resamples=100, pgd_steps=10)


def test_test_points_are_shared_by_all_models():
    a, b = _entries()[0], _entries()[2]
    xa, ya = zoo.zoo_test_points(a, 30, seed=3)
    xb, yb = zoo.zoo_test_points(b, 30, seed=3)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[0] == 30
    xc, _ = zoo.zoo_test_points(a, 30, seed=4)
    assert not torch.equal(xa, xc)


def test_zoo_margins_resume_by_chunk(trained, tmp_path, monkeypatch):
    _, models = trained
    whole = zoo.zoo_margins(models[0], split="train", n_points=30, cache_dir=tmp_path / "a", chunk=30)
    calls = []
    import marginkit.attacks as attacks

    real = attacks.input_margin

    def counting(*a, **k):
        calls.append(a[1].shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(attacks, "input_margin", counting)
    with pytest.raises(KeyboardInterrupt):
        zoo.zoo_margins(models[0], split="train", n_points=30, cache_dir=tmp_path / "b", chunk=12)
    monkeypatch.setattr(attacks, "input_margin", real)
    resumed = zoo.zoo_margins(models[0], split="train", n_points=30, cache_dir=tmp_path / "b", chunk=12)
    assert calls == [12, 12]
    assert resumed.indices == whole.indices and len(resumed.margin) == 30
    assert resumed.margin == pytest.approx(whole.margin, rel=1e-9)
    assert resumed.logit_margin == pytest.approx(whole.logit_margin)
    assert ((resumed.margin == 0) == ~resumed.correct).all()


def test_pseudo_margin_zoo_table2_row(trained):
    from marginkit.consistency import PseudoMarginConfig

    _, models = trained
    cfg = PseudoMarginConfig(hidden=(16, 16), epochs=20, patience=5, seed=0)
    row = zoo.pseudo_margin_zoo(models[2], eps=0.3, n_eval=40, n_fit=120, config=cfg, n_resamples=50)
    assert row.n_fit <= 120 and row.n_eval <= 40 and row.fit["n_val"] == round(0.2 * row.n_fit)
    for part in (row.logit, row.pseudo):
        assert -1 <= part["kendall_tau"] <= 1 and part["n"] == row.n_eval
    assert row.tau_gain == pytest.approx(row.pseudo["kendall_tau"] - row.logit["kendall_tau"])
    assert row.tau_gain_ci[0] <= row.tau_gain <= row.tau_gain_ci[1]
    again = zoo.pseudo_margin_zoo(models[2], eps=0.3, n_eval=40, n_fit=120, config=cfg, n_resamples=50)
    assert again == row
    # The logit-margin row uses the same points and margins as evaluate_zoo's tau.
    met = evaluate_zoo(models[2:], n_points=40, eps=[0.3], n_resamples=50, pgd_steps=5)[0]
    assert row.logit["kendall_tau"] == pytest.approx(met.tau)


def test_entry_from_preset_matches_the_preset():
    from marginkit.training.presets import get_preset

    e = ZooEntry.from_preset("cpu-mnist-cnn-amr", seed=2, epochs=3)
    p = get_preset("cpu-mnist-cnn-amr")
    assert e.method == "amr" and dict(e.params) == p.method_params and e.arch == "cnn" and e.seed == 2
    cfg = e.train_config()
    assert (cfg.optimizer, cfg.lr, cfg.nesterov, cfg.batch_size, cfg.epochs) == ("sgd", 0.01, True, 128, 3)
    spec = e.model_spec((1, 28, 28), 10)
    assert spec.channels == (16, 32) and spec.hidden == 128
    assert ZooEntry.from_preset("cpu-mnist-cnn-amr").epochs == 10
    assert e.key() != ZooEntry.from_preset("cpu-mnist-cnn-amr", seed=2).key()


def test_train_tasks_are_picklable_for_ray(tmp_path):
    import pickle

    task = zoo._TrainTask(_entries()[2], str(tmp_path))
    back = pickle.loads(pickle.dumps(task))
    assert back == task and back.entry.key() == task.entry.key()


@pytest.mark.slow
def test_train_zoo_on_ray_equals_local(tmp_path):
    pytest.importorskip("ray")
    from marginkit.parallel import ExecutorConfig

    import os
    import sys

    entries = _entries()[:2]
    local = train_zoo(entries, tmp_path / "local")
    # Workers import marginkit from this test's sys.path (a worktree may differ from the installed copy).
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    remote = train_zoo(entries, tmp_path / "ray", executor=ExecutorConfig(workers=2, threads=1, runtime_env=env))
    for a, b in zip(local, remote):
        ma, _ = load_checkpoint(a.path)
        mb, _ = load_checkpoint(b.path)
        for pa, pb in zip(ma.state_dict().values(), mb.state_dict().values()):
            assert torch.equal(pa, pb)
    assert all(m.cached for m in train_zoo(entries, tmp_path / "ray", executor=ExecutorConfig(workers=2, runtime_env=env)))
