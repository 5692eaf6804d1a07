"""The paper's experiments as presets: every preset builds, names layers the analysis can cut at, and a
miniature run writes its tables."""

import json

import numpy as np
import pytest
import torch

from marginkit.bounds import feature_chain
from marginkit.bounds.presets import PRESETS, BoundsPreset, ModelRecipe, build_extractor, get_preset, run_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_its_layers_are_analysable(name):
    p = PRESETS[name]
    assert len({r.label for r in p.models}) == len(p.models)
    assert p.layers[0] == "input" and list(p.eps) == sorted(p.eps)
    assert p.quick().per_class < p.per_class
    for r in p.models:
        model = build_extractor(r, (1, 28, 28), len(p.classes)).eval()
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, len(p.classes))
        for layer in p.layers[1:]:
            feature_chain(model, layer, (1, 28, 28))  # raises if the collision search cannot handle it


def test_paper_architectures():
    fc = build_extractor(ModelRecipe("x"), (1, 28, 28), 2)
    assert [m.out_features for m in fc if isinstance(m, torch.nn.Linear)] == [300, 200, 2]
    narrow = build_extractor(ModelRecipe("x", widths=(75, 50)), (1, 28, 28), 2)
    assert [m.out_features for m in narrow if isinstance(m, torch.nn.Linear)] == [75, 50, 2]
    cnn = build_extractor(ModelRecipe("x", arch="cnn4"), (1, 28, 28), 2)
    assert cnn.conv1.out_channels == 20 and cnn.conv2.out_channels == 50 and cnn.fc1.out_features == 500
    with pytest.raises(ValueError, match="unknown bounds preset"):
        get_preset("fig99")
    with pytest.raises(ValueError, match="architecture"):
        build_extractor(ModelRecipe("x", arch="vit"), (1, 28, 28), 2)


@pytest.mark.slow
def test_run_preset_miniature(tmp_path):
    p = BoundsPreset("mini", "test", (ModelRecipe("a", widths=(6, 4)), ModelRecipe("b", widths=(5, 4))),
                     ("input", "fc1"), eps=(2.0, 4.0, 6.0), per_class=4, quick_per_class=3)
    trained = []

    def train(recipe):
        trained.append(recipe.label)
        return build_extractor(recipe, (1, 28, 28), 2, seed=1)

    res = run_preset(p, str(tmp_path), train=train, quick=True)
    assert trained == ["a", "b"]
    df = res.to_frame()
    assert set(df["model"]) == {"a", "b"} and set(df["layer"]) == {"input", "fc1"}
    assert np.all((df["zero_one"] >= 0) & (df["zero_one"] <= 0.5 + 1e-12))
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["quick"] and settings["points"] == 6 and settings["preset"] == "mini"
    assert (tmp_path / "bounds.csv").exists() and (tmp_path / "layers.csv").exists()
