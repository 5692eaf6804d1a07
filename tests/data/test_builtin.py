import numpy as np
import pytest
import torch

from marginkit.data import list_datasets, load_dataset, select_classes


def test_mnist5k_is_real_mnist_split_4000_1000_in_unit_box():
    ds = load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert torch.bincount(ds.y_test).tolist() == [100] * 10  # stratified
    assert ds.num_classes == 10 and ds.x_train.dtype == torch.float32


def test_splits_are_deterministic_and_seed_dependent():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.input_shape == (1, 8, 8) and float(a.x_train.max()) <= 1.0
    # no sample in both splits
    tr = {tuple(r) for r in a.x_train.reshape(len(a.x_train), -1).numpy().round(4)}
    te = [tuple(r) for r in a.x_test.reshape(len(a.x_test), -1).numpy().round(4)]
    assert sum(t in tr for t in te) <= 5  # the digits set itself holds a few exact duplicates


def test_first_test_samples_mix_classes():
    ds = load_dataset("mnist5k")
    assert len(torch.unique(ds.y_test[:50])) >= 8


def test_class_selection_relabels_in_given_order():
    ds = load_dataset("mnist5k", classes=(7, 3))
    assert ds.class_names == ["7", "3"] and ds.num_classes == 2
    full = load_dataset("mnist5k")
    assert int((full.y_train == 7).sum()) == int((ds.y_train == 0).sum())
    with pytest.raises(ValueError, match="no class '11'"):
        select_classes(full, (3, 11))
    with pytest.raises(ValueError, match="at least 2"):
        select_classes(full, (3,))


def test_synthetic_shapes_and_errors():
    ds = load_dataset("synthetic", n=90, dim=5, num_classes=3, seed=4)
    assert ds.input_shape == (5,) and ds.x_train.shape[0] + ds.x_test.shape[0] == 90
    assert float(ds.x_train.min()) >= 0 and float(ds.x_train.max()) <= 1
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("synthetic", n=3, num_classes=2)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="mnist5k"):
        load_dataset("imagenet")
    assert "mnist5k" in list_datasets() and "npz:PATH" in list_datasets()
