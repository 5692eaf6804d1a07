"""A user's data used as given: npz keys honoured, no silent split, the split recorded; clear file errors."""

import gzip
import struct

import numpy as np
import pytest
import torch

from marginkit.checks import FileFormatError, InputError
from marginkit.data import list_datasets, load_dataset


def _save(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_x_y_is_used_whole_unless_a_split_is_asked(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((10, 3), dtype=np.float32), np.arange(10) % 2
    spec = _save(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(spec)
    assert ds.meta["split"] == "whole"
    np.testing.assert_array_equal(ds.x_test.numpy(), x)  # every sample, in the user's order
    np.testing.assert_array_equal(ds.y_test.numpy(), y)
    assert torch.equal(ds.x_train, ds.x_test)
    assert "no split" in ds.split_description and "no split" in ds.describe()["split"]
    split = load_dataset(spec, test_fraction=0.2, seed=3)
    assert split.meta == {**split.meta, "split": "stratified", "test_fraction": 0.2, "seed": 3}
    assert (split.x_train.shape[0], split.x_test.shape[0]) == (8, 2)
    assert "test_fraction 0.2" in split.split_description


def test_npz_x_test_y_test_are_honoured(tmp_path):
    x, y = np.zeros((5, 2), np.float32), np.array([0, 1, 0, 1, 2])
    xt, yt = np.ones((3, 2), np.float32), np.array([2, 1, 0])
    spec = _save(tmp_path / "t.npz", x=x, y=y, x_test=xt, y_test=yt)
    ds = load_dataset(spec)
    assert ds.meta["split"] == "given"
    np.testing.assert_array_equal(ds.x_train.numpy(), x)
    np.testing.assert_array_equal(ds.x_test.numpy(), xt)
    assert ds.y_test.tolist() == [2, 1, 0] and "x_test/y_test (3)" in ds.split_description
    with pytest.raises(InputError, match="holds its own test set"):
        load_dataset(spec, test_fraction=0.5)
    half = _save(tmp_path / "half.npz", x=x, y=y, x_test=xt)
    with pytest.raises(InputError, match="half.npz.*needs both x_test and y_test"):
        load_dataset(half)


def test_one_sample_npz_loads_and_too_small_split_is_named(tmp_path):
    spec = _save(tmp_path / "one.npz", x=np.full((1, 1, 2, 2), 0.5, np.float32), y=np.array([3]))
    ds = load_dataset(spec)
    assert ds.x_test.shape == (1, 1, 2, 2) and ds.y_test.tolist() == [3] and ds.num_classes == 4
    with pytest.raises(InputError, match="one.npz.*empty test split"):
        load_dataset(spec, test_fraction=0.2)
    flat = _save(tmp_path / "flat.npz", x=np.zeros(4, np.float32), y=np.array([0]))
    with pytest.raises(InputError, match=r"flat.npz\[x\].*batch axis"):
        load_dataset(flat)


def test_npz_class_names_and_column_labels(tmp_path):
    spec = _save(tmp_path / "n.npz", x=np.zeros((4, 2), np.float32), y=np.array([[0], [1], [1], [0]]),
                 class_names=np.array(["cat", "dog", "eel"]))
    ds = load_dataset(spec)
    assert ds.class_names == ["cat", "dog", "eel"] and ds.meta["num_classes_known"]
    assert ds.y_test.tolist() == [0, 1, 1, 0]
    assert load_dataset(spec, classes=("dog", "cat")).y_test.tolist() == [1, 0, 0, 1]


def test_list_datasets_states_keys_shapes_and_ranges():
    desc = list_datasets()
    npz = desc["npz:PATH"]
    for needle in ("x (N, ...)", "y (N,)", "x_test", "y_test", "test_fraction", "[0, 1]", "0..255", "class_names",
                   "used whole"):
        assert needle in npz, needle
    assert "t10k-labels-idx1-ubyte" in desc["idx:DIR"] and "(N, 1, H, W)" in desc["idx:DIR"]
    assert "data_batch_1..5" in desc["cifar10:DIR"] and "(N, 3072)" in desc["cifar10:DIR"]
    assert "fine_labels" in desc["cifar100:DIR"]


def _idx(path, arr, gz=False):
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(2)
    _idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (4, 3, 3)))
    _idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 4))
    _idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 3, 3)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 3))  # one label too many
    with pytest.raises(FileFormatError, match="t10k images hold 2 images but t10k labels 3"):
        load_dataset(f"idx:{tmp_path}")
    with pytest.raises(InputError, match="own train/test split"):
        load_dataset(f"idx:{tmp_path}", test_fraction=0.2)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-5])  # truncated download
    with pytest.raises(FileFormatError, match="train-images-idx3-ubyte: IDX header promises .*truncated"):
        load_dataset(f"idx:{tmp_path}")
    with pytest.raises(InputError, match="say what kind of file"):
        load_dataset(str(tmp_path))
