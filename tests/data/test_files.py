import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from marginkit.data import load_dataset
from marginkit.data.files import read_idx


def test_npz_round_trip_with_split_and_uint8_scaling(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 1, 4, 4), dtype=np.uint8)
    y = np.arange(60) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(f"npz:{path}", seed=1, test_fraction=0.2)
    assert ds.num_classes == 3 and ds.input_shape == (1, 4, 4) and ds.meta["split"] == "stratified"
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 60
    back = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()])
    assert np.allclose(np.sort((back * 255).round().reshape(-1)), np.sort(x.reshape(-1).astype(float)))
    assert load_dataset(str(path), seed=1, test_fraction=0.2).fingerprint() == ds.fingerprint()  # bare .npz path works too


def test_npz_with_explicit_splits(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, x_train=np.zeros((4, 3), np.float32), y_train=[0, 1, 0, 1],
             x_test=np.ones((2, 3), np.float32), y_test=[1, 0])
    ds = load_dataset(f"npz:{path}")
    assert ds.x_test.shape == (2, 3) and ds.y_test.tolist() == [1, 0]


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.full((4, 2), 2.0), "y": [0, 1, 0, 1]}, "must lie in \\[0, 1\\]"),
    ({"x": np.zeros((4, 2)), "y": [0, 1, 0]}, "length 4"),
    ({"x": np.full((4, 2), np.nan), "y": [0, 1, 0, 1]}, "NaN"),
    ({"inputs": np.zeros((4, 2))}, "expected arrays x and y"),
    ({"x": np.zeros((4, 2)), "y": [0, 1, -1, 1]}, ">= 0"),
])
def test_npz_bad_content_names_file_and_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(f"npz:{path}")
    assert "bad.npz" in str(info.value)


def test_npz_unreadable_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz.*not a readable"):
        load_dataset(f"npz:{path}")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    xtr, ytr = rng.integers(0, 256, (12, 5, 5)), rng.integers(0, 10, 12)
    xte, yte = rng.integers(0, 256, (4, 5, 5)), rng.integers(0, 10, 4)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", xtr, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", ytr, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", xte, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", yte, gz)
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.x_train.shape == (12, 1, 5, 5)
    np.testing.assert_allclose(ds.x_test.numpy()[:, 0] * 255, xte, atol=1e-4)
    assert ds.y_train.tolist() == ytr.tolist()


def test_idx_truncated_and_bad_magic(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="x.idx.*promises"):
        read_idx(str(p))
    p.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(str(p))


def test_cifar10_pickles_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    batches = []
    for i in (1, 2):
        data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, 6))
        batches.append((data, labels))
        with open(tmp_path / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": batches[0][0][:3], b"labels": batches[0][1][:3]}, fh)
    with open(tmp_path / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)]}, fh)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.x_train.shape == (12, 3, 32, 32) and ds.class_names[3] == "c3"
    np.testing.assert_allclose(ds.x_train[0].numpy().reshape(-1) * 255, batches[0][0][0], atol=1e-4)


def test_cifar100_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR file .*train: no such file"):
        load_dataset(f"cifar100:{tmp_path}")
    (tmp_path / "train").write_bytes(b"garbage")
    (tmp_path / "test").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="train: not a readable CIFAR pickle"):
        load_dataset(f"cifar100:{tmp_path}")
