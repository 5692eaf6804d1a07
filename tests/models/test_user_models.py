"""Bringing your own model: one-line load errors, factories, TorchScript/export, and validation before work."""

import os
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginkit.checks import FileFormatError, InputError, MarginkitWarning
from marginkit.data import load_dataset, synthetic
from marginkit.models import (ModelSpec, build_model, feature_margin_unavailable, head_split_or_reason, load_model,
                              load_torch_file, split_head, validate_model, validate_model_for_dataset)

root_only = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads every file")


def _linear(n_in=4, n_out=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out)).eval()


# --- the one torch.load wrapper -------------------------------------------------------------------------

def test_load_torch_file_errors_are_one_line_and_name_the_file(tmp_path):
    model = _linear()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    data = (tmp_path / "sd.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save(model, tmp_path / "whole.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert set(load_torch_file(tmp_path / "sd.pt")) == {"1.weight", "1.bias"}
    cases = [
        ("cut.pt", FileFormatError, r"cut.pt is not a readable weights file: .*truncated or corrupt"),
        ("whole.pt", FileFormatError, r"whole.pt holds a pickled Python object .*Sequential.*weights_only=True.*"
                                      r"state_dict\(\).*torch.jit.save"),
        ("empty.pt", FileFormatError, r"empty.pt is empty"),
        ("missing.pt", FileNotFoundError, r"weights file .*missing.pt: no such file"),
        (".", IsADirectoryError, r"is a folder"),
    ]
    for name, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            load_torch_file(tmp_path / name, what="weights file")
        assert "\n" not in str(info.value) and "Errno" not in str(info.value)


@root_only
def test_load_torch_file_unreadable(tmp_path):
    path = tmp_path / "locked.pt"
    torch.save({}, path)
    path.chmod(0)
    with pytest.raises(PermissionError, match="locked.pt: permission denied"):
        load_torch_file(path)


def test_pickled_model_given_as_model_gets_the_hint(tmp_path):
    torch.save(_linear(), tmp_path / "whole.pt")
    with pytest.raises(FileFormatError, match="torch.save\\(model\\).*module:factory"):
        load_model(str(tmp_path / "whole.pt"))


# --- module:factory ---------------------------------------------------------------------------------------

FACTORY = """
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU())
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(self.body(x))

        def marginkit_split(self):
            return self.body, self.head

    def make():
        return Net()
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "mk_user_net.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    yield tmp_path
    sys.modules.pop("mk_user_net", None)


def test_factory_resolves_from_the_working_directory_and_needs_weights(user_dir):
    with pytest.raises(InputError, match="no weights were given.*random_init=True"):
        load_model("mk_user_net:make")
    model, info = load_model("mk_user_net:make", random_init=True)
    assert info.metadata["random_init"] and not model.training
    assert str(user_dir) not in sys.path  # the working directory was on the path only for the import
    torch.save(model.state_dict(), user_dir / "w.pt")
    again, info = load_model("mk_user_net:make", weights="w.pt")
    x = torch.rand(2, 4)
    torch.testing.assert_close(again(x), model(x))
    assert info.metadata["weights"] == str((user_dir / "w.pt").resolve())
    by_file, _ = load_model(str(user_dir / "mk_user_net.py") + ":make", weights="w.pt")
    torch.testing.assert_close(by_file(x), model(x))


def test_factory_errors_say_how(user_dir):
    with pytest.raises(InputError, match="cannot find module 'nope_mod'.*working directory.*PYTHONPATH.*nope_mod.py:make"):
        load_model("nope_mod:make", random_init=True)
    with pytest.raises(InputError, match="has no callable 'build'.*make"):
        load_model("mk_user_net:build", random_init=True)
    with pytest.raises(InputError, match="contradict"):
        load_model("mk_user_net:make", weights="w.pt", random_init=True)
    torch.save({"body.1.weight": torch.zeros(5, 4)}, user_dir / "bad.pt")
    with pytest.raises(InputError, match="bad.pt does not fit .*missing 3 key\\(s\\)"):
        load_model("mk_user_net:make", weights="bad.pt")
    model, _ = load_model("mk_user_net:make", random_init=True)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, user_dir / "ddp.pt")
    loaded, _ = load_model("mk_user_net:make", weights="ddp.pt")  # DataParallel prefix stripped
    x = torch.rand(3, 4)
    torch.testing.assert_close(loaded(x), model(x))


# --- TorchScript and torch.export --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_and_export_load_run_any_batch_and_say_why_no_feature_margin(tmp_path):
    model = _linear()
    x = torch.rand(5, 4)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(model, (x[:2],)), str(tmp_path / "m.pt2"))  # static batch of 2
    for name, kind in (("m.ts", "torchscript"), ("m.pt2", "torch.export")):
        loaded, info = load_model(str(tmp_path / name))
        assert info.metadata["kind"] == kind and not loaded.training
        torch.testing.assert_close(loaded(x), model(x))  # 5 samples through a program exported for 2
        check = validate_model(loaded, x)  # checks a head split numerically where there is one
        assert check.num_outputs == 3
        if kind == "torchscript":  # a scripted Sequential ending in Linear keeps its head
            assert check.feature_margins
            split = split_head(loaded)
            torch.testing.assert_close(split.weight, model[-1].weight)
        else:
            assert "compiled graph" in check.feature_margin_reason
            with pytest.raises(TypeError, match="no linear head: .*compiled"):
                split_head(loaded)
    with pytest.raises(FileFormatError, match="is a torchscript file.*as the model itself"):
        load_torch_file(tmp_path / "m.ts", what="weights file")


def test_tuple_output_is_refused_or_picked_with_logits_key(tmp_path, monkeypatch):
    (tmp_path / "mk_tuple_net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class TwoHeads(nn.Module):
            def __init__(self):
                super().__init__()
                self.f = nn.Linear(4, 3)
            def forward(self, x):
                return {"features": x, "logits": self.f(x)}
        def make():
            torch.manual_seed(0)
            return TwoHeads()
    """))
    monkeypatch.chdir(tmp_path)
    try:
        raw, _ = load_model("mk_tuple_net:make", random_init=True)
        x = torch.rand(4, 4)
        with pytest.raises(InputError, match="returns a dict .*logits_key='features'.*return the logits only"):
            validate_model(raw, x)
        picked, info = load_model("mk_tuple_net:make", random_init=True, logits_key="logits")
        assert validate_model(picked, x).num_outputs == 3 and info.metadata["logits_key"] == "logits"
        assert "several outputs" in feature_margin_unavailable(picked)
        bad, _ = load_model("mk_tuple_net:make", random_init=True, logits_key="probs")
        with pytest.raises(InputError, match="logits_key='probs' is not in"):
            validate_model(bad, x)
    finally:
        sys.modules.pop("mk_tuple_net", None)


# --- validate_model ---------------------------------------------------------------------------------------

class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.5))  # training=True by default: random even in eval mode


def test_stochastic_model_is_refused_unless_allowed():
    torch.manual_seed(0)
    model = FunctionalDropout().eval()
    x = torch.rand(6, 4)
    with pytest.raises(InputError, match="stochastic.*F.dropout.*allow_stochastic=True"):
        validate_model(model, x)
    assert not validate_model(model, x, allow_stochastic=True).deterministic


def test_shape_mismatch_names_both_shapes():
    mnist = build_model(ModelSpec("mlp", (1, 28, 28), 10, hidden=8), seed=0)
    cifar_like = torch.rand(2, 3, 32, 32)
    with pytest.raises(InputError, match="shape 3x32x32 \\(3072 values per sample\\).*fc1 \\(Linear\\) takes 784"):
        validate_model(mnist, cifar_like)
    with pytest.raises(InputError, match="3x32x32 but the model was built for 1x28x28"):
        validate_model(mnist, cifar_like, expected_input_shape=(1, 28, 28))


def test_class_mismatch_with_selected_classes_is_an_error():
    ds = synthetic(n=60, dim=4, num_classes=10, seed=0)
    ten = build_model(ModelSpec("linear", (4,), 10), seed=0)
    assert validate_model_for_dataset(ten, ds).num_outputs == 10
    with pytest.raises(InputError, match="10 outputs but the data were cut to 2 classes \\(3, 7\\).*drop the class "
                                         "selection"):
        validate_model_for_dataset(ten, load_dataset("synthetic", classes=(3, 7), n=60, dim=4, num_classes=10))
    with pytest.raises(InputError, match="3 outputs but the data have 10 classes"):
        validate_model_for_dataset(build_model(ModelSpec("linear", (4,), 3), seed=0), ds)
    x, y = ds.split("test")
    with pytest.raises(InputError, match="labels go up to 9 but the model has only 3 outputs"):
        validate_model(build_model(ModelSpec("linear", (4,), 3), seed=0), x, y)


def test_npz_without_class_names_accepts_a_model_with_more_classes(tmp_path):
    np.savez(tmp_path / "few.npz", x=np.random.default_rng(0).random((6, 4), dtype=np.float32), y=[0, 1, 2, 0, 1, 2])
    ds = load_dataset(f"npz:{tmp_path / 'few.npz'}")
    assert ds.num_classes == 3
    assert validate_model_for_dataset(build_model(ModelSpec("linear", (4,), 10), seed=0), ds).num_outputs == 10


def test_batch_dependence_no_gradients_bad_hook_and_softmax():
    x = torch.rand(6, 4)
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(InputError, match="fails on a single one.*batch norm in train mode"):
        validate_model(bn, x)
    with pytest.raises(InputError, match="fails on a batch of 1 .*train mode: call model.eval"):
        validate_model(bn, x[:1])
    class CentreOnBatch(nn.Module):
        def forward(self, x):
            return x[:, :3] - x[:, :3].mean(0)

    with pytest.raises(InputError, match="depends on the other samples in its batch"):
        validate_model(CentreOnBatch(), x, check_gradients=False)

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).detach()

    with pytest.raises(InputError, match="do not depend differentiably"):
        validate_model(Detached().eval(), x)

    class WrongHook(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

        def marginkit_split(self):
            return self.body, self.head  # forgets the ReLU

    torch.manual_seed(1)
    with pytest.raises(InputError, match="does not reproduce the model's logits"):
        validate_model(WrongHook().eval(), x)

    soft = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)).eval()
    with pytest.warns(MarginkitWarning, match="probabilities"):
        check = validate_model(soft, x)
    assert "ending in Softmax" in check.feature_margin_reason


def test_head_split_reasons():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    split, reason = head_split_or_reason(Plain())
    assert split is None and "no marginkit_split() method" in reason
    assert head_split_or_reason(_linear())[1] is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_sequential_keeps_its_feature_margins(tmp_path):
    from marginkit.margins import output_margins

    model = build_model(ModelSpec("mlp", (1, 4, 4), 3, hidden=6), seed=3)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.jit.save(torch.jit.trace(model, x[:2]), str(tmp_path / "traced.pt"))
    loaded, _ = load_model(str(tmp_path / "traced.pt"))
    assert validate_model(loaded, x).feature_margins
    ours, theirs = output_margins(loaded, x), output_margins(model, x)
    torch.testing.assert_close(ours.feature_margin, theirs.feature_margin)
