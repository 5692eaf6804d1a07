import sys
import textwrap

import pytest
import torch
from torch import nn

from marginkit.models import ModelSpec, build_model, list_layers, split_head, truncate
from marginkit.models.checkpoint import load_checkpoint, load_model, model_fingerprint, save_checkpoint


@pytest.mark.parametrize("arch,shape", [("linear", (1, 8, 8)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("mlp", (5,))])
def test_split_head_reassembles_the_model(arch, shape):
    model = build_model(ModelSpec(arch, shape, 4, hidden=12, depth=2, channels=(3,)), seed=0)
    x = torch.rand(6, *shape)
    split = split_head(model)
    with torch.no_grad():
        torch.testing.assert_close(split.head(split.features(x).flatten(1)), model(x))
    assert split.weight.shape[0] == 4 and split.bias.shape == (4,)


def test_split_head_hook_and_clear_error():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.out = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.body(x)))

        def marginkit_split(self):
            return nn.Sequential(self.body, nn.Tanh()), self.out

    split = split_head(Custom())
    assert split.head.out_features == 2

    class NoHead(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="marginkit_split"):
        split_head(NoHead())


def test_truncate_by_name_and_index():
    model = build_model(ModelSpec("mlp", (6,), 3, hidden=4, depth=2), seed=0)
    assert list_layers(model) == ["flatten", "fc1", "relu1", "fc2", "relu2", "head"]
    cut = truncate(model, "relu1")
    x = torch.rand(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(cut(x), torch.relu(model.fc1(x)))
    assert len(truncate(model, -2)) == 5
    with pytest.raises(KeyError, match="no layer named 'relu9'"):
        truncate(model, "relu9")


def test_seeded_build_is_deterministic_and_leaves_global_rng_alone():
    spec = ModelSpec("mlp", (4,), 3, hidden=5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(spec, seed=7)
    after = torch.rand(1)
    assert model_fingerprint(a) == model_fingerprint(build_model(spec, seed=7))
    assert torch.equal(before, after)


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelSpec("resnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="image inputs"):
        ModelSpec("cnn", (64,), 10)


def test_checkpoint_reloads_by_path_alone(tmp_path):
    spec = ModelSpec("cnn", (1, 8, 8), 3, hidden=8, channels=(2, 4))
    model = build_model(spec, seed=1)
    path = save_checkpoint(tmp_path / "m.pt", model, spec, {"note": "x"})
    loaded, info = load_checkpoint(path)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert info.spec == spec and info.metadata["note"] == "x" and "torch" in info.metadata["versions"]
    assert not loaded.training


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript is deprecated in torch 2.13 but still what users bring
def test_load_model_torchscript_and_factory(tmp_path, monkeypatch):
    model = build_model(ModelSpec("mlp", (4,), 2, hidden=3), seed=0)
    ts = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(model), str(ts))
    loaded, info = load_model(str(ts))
    x = torch.rand(2, 4)
    torch.testing.assert_close(loaded(x), model(x))
    assert info.metadata["kind"] == "torchscript"

    (tmp_path / "usermodels.py").write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w.pt"
    ref = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    torch.save(ref.state_dict(), weights)
    loaded, _ = load_model("usermodels:make", weights=str(weights))
    torch.testing.assert_close(loaded(x), ref(x))
    assert not loaded.training
    sys.modules.pop("usermodels", None)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a 'module:factory'"):
        load_model("nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(str(bad))
    with pytest.raises(ValueError, match="cannot find module 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:make", random_init=True)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="is a state dict .*module:factory"):
        load_checkpoint(tmp_path / "plain.pt")


def test_load_model_torch_export_program(tmp_path):
    model = build_model(ModelSpec("mlp", (4,), 2, hidden=3), seed=0)
    x = torch.rand(2, 4)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded, info = load_model(str(path))
    torch.testing.assert_close(loaded(x), model(x))
    assert info.metadata["kind"] == "torch.export"

