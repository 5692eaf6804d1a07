import numpy as np
import pytest
import torch

from marginkit.margins import affine_input_margin, is_affine
from marginkit.pipeline import margin_table
from marginkit.models import ModelSpec, build_model
from marginkit.results import ResultsStore


def test_margin_table_rejects_labels_beyond_the_model_outputs():
    model = build_model(ModelSpec("linear", (3,), 2), seed=0)
    with pytest.raises(ValueError, match="only 2 outputs"):
        margin_table(model, torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), "l2")


def test_is_affine():
    assert is_affine(build_model(ModelSpec("linear", (1, 4, 4), 3), seed=0), (1, 4, 4))
    assert not is_affine(build_model(ModelSpec("mlp", (5,), 3, hidden=4), seed=0), (5,))


def test_affine_model_gets_exact_input_margins_in_the_table():
    model = build_model(ModelSpec("linear", (6,), 3), seed=2)
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    df = margin_table(model, x, y, "linf")
    exact = affine_input_margin(model, x, norm="linf").margin.numpy()
    np.testing.assert_allclose(df["input_margin_upper"].to_numpy(), exact)
    np.testing.assert_allclose(df["input_margin_lower"].to_numpy(), exact)
    assert (df["status"] == "exact").all() and (df["label"].to_numpy() == y.numpy()).all()


def test_store_backed_table_resumes_in_chunks(tmp_path):
    model = build_model(ModelSpec("linear", (6,), 3), seed=2)
    x = torch.rand(50, 6, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(50, dtype=torch.long)
    first = ResultsStore(tmp_path, {"k": 1})
    margin_table(model, x[:20], y[:20], "l2", store=first, chunk_size=8)  # an earlier, partial run
    first.close()
    second = ResultsStore(tmp_path, {"k": 1})
    assert second.done == set(range(20))
    df = margin_table(model, x, y, "l2", store=second, chunk_size=8)
    assert df["index"].tolist() == list(range(50))
    full = margin_table(model, x, y, "l2")
    np.testing.assert_allclose(df["input_margin_upper"].to_numpy(), full["input_margin_upper"].to_numpy())


def test_exact_and_certify_on_networks_need_the_verify_package(monkeypatch):
    import sys

    import marginkit
    from marginkit.pipeline import EstimatorUnavailable

    monkeypatch.setitem(sys.modules, "marginkit.verify", None)  # import fails as when the package is absent
    monkeypatch.delattr(marginkit, "verify", raising=False)
    model = build_model(ModelSpec("mlp", (5,), 3, hidden=4), seed=0)
    for mode in ("exact", "certify"):
        with pytest.raises(EstimatorUnavailable, match="verify package"):
            margin_table(model, torch.rand(3, 5), torch.zeros(3, dtype=torch.long), input_margin=mode)


def test_unknown_estimator_names_the_vocabulary():
    model = build_model(ModelSpec("linear", (5,), 3), seed=0)
    with pytest.raises(ValueError, match="auto | exact | attack | certify | none"):
        margin_table(model, torch.rand(3, 5), torch.zeros(3, dtype=torch.long), input_margin="pgd")
