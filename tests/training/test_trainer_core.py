import pytest
import torch

from marginkit.data import load_dataset
from marginkit.models import ModelSpec, build_model
from marginkit.models.checkpoint import model_fingerprint
from marginkit.training import TrainConfig, Trainer, available_methods, demo_model, get_method, train_model


def _tiny():
    ds = load_dataset("synthetic", n=240, dim=4, num_classes=3, seed=0, spread=0.05)
    return ds, ModelSpec("mlp", ds.input_shape, 3, hidden=16, depth=1)


def test_training_learns_and_is_deterministic():
    ds, spec = _tiny()
    cfg = TrainConfig(epochs=15, lr=1e-2, batch_size=32, seed=3)
    a = train_model(build_model(spec, seed=3), ds, cfg)
    b = train_model(build_model(spec, seed=3), ds, cfg)
    assert a.test_accuracy > 0.9
    assert model_fingerprint(a.model) == model_fingerprint(b.model)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert not a.model.training


def test_callbacks_see_every_epoch():
    ds, spec = _tiny()
    seen = []

    class Rec:
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append((epoch, sorted(logs)))

    train_model(build_model(spec, seed=0), ds, TrainConfig(epochs=3, lr=1e-2), callbacks=[Rec()])
    assert [e for e, _ in seen] == [1, 2, 3]
    assert "test_accuracy" in seen[0][1]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    ds, spec = _tiny()
    Trainer(build_model(spec, seed=1), ds, TrainConfig(epochs=3, lr=1e-2, seed=1), checkpoint_dir=tmp_path).fit()
    with pytest.raises(ValueError, match="other training settings"):
        Trainer(build_model(spec, seed=1), ds, TrainConfig(epochs=6, lr=1e-2, seed=1), checkpoint_dir=tmp_path)


def test_resume_continues_from_last_epoch(tmp_path):
    ds, spec = _tiny()
    cfg = TrainConfig(epochs=4, lr=1e-2, seed=2)
    straight = train_model(build_model(spec, seed=2), ds, cfg)

    class Stop(Exception):
        pass

    class Crash:
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                trainer._save()
                raise Stop

    with pytest.raises(Stop):
        Trainer(build_model(spec, seed=2), ds, cfg, callbacks=[Crash()], checkpoint_dir=tmp_path).fit()
    resumed = Trainer(build_model(spec, seed=2), ds, cfg, checkpoint_dir=tmp_path)
    assert resumed.epoch == 2
    result = resumed.fit()
    assert model_fingerprint(result.model) == model_fingerprint(straight.model)
    assert len(result.history) == 4


def test_method_registry_and_config_validation():
    assert "standard" in available_methods()
    with pytest.raises(ValueError, match="unknown training method"):
        get_method("magic")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_nan_loss_is_reported():
    ds, spec = _tiny()

    class Exploding:
        name = "exploding"

        def loss(self, model, x, y):
            return model(x).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_model(build_model(spec, seed=0), ds, TrainConfig(epochs=1), method=Exploding())


def test_demo_model_cache_reuses_and_keys_on_settings(shared_cache):
    m1, c1 = demo_model("linear", "digits", cache_dir=shared_cache, epochs=2)
    m2, c2 = demo_model("linear", "digits", cache_dir=shared_cache, epochs=2)
    m3, c3 = demo_model("linear", "digits", cache_dir=shared_cache, epochs=3)
    assert c1.path == c2.path != c3.path
    assert model_fingerprint(m1) == model_fingerprint(m2)
    assert c1.metadata["test_accuracy"] > 0.8


def test_cosine_schedule_decays_from_lr_to_zero():
    ds, spec = _tiny()
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=30, schedule="cosine")
    t = Trainer(build_model(spec, seed=0), ds, cfg)
    total = 2 * t._steps_per_epoch()
    assert t._lr_at(0) == pytest.approx(0.1)
    assert t._lr_at(total // 2) == pytest.approx(0.05, rel=0.05)
    assert t._lr_at(total) == pytest.approx(0.0, abs=1e-12)
