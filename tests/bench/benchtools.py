"""Helpers of the harness tests: a tiny MNIST written in the real idx .gz format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A tiny MNIST: enough images for a 20-image validation split, a few batches, one bright pattern
# per label so that a model can actually learn something in one epoch.
TINY_TRAIN, TINY_TEST = 120, 30
TINY_OVERRIDES = {
    "train_size": 100,
    "valid_size": 20,
    "test_size": 30,
    "batch_size": 25,
    "epochs": 2,
    "eval_batch_size": 16,
}


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """The idx format written by hand (not with the module under test): magic 0 0 type ndim,
    big-endian uint32 sizes, big-endian data, gzip-compressed."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def tiny_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label k lights up row block k of the image; noise on top."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4 : 2 * label + 6, :] = 255
    return images, labels


def write_tiny_mnist(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = tiny_images(TINY_TRAIN, 1)
    test_x, test_y = tiny_images(TINY_TEST, 2)
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", train_x)
    write_idx_gz(folder / "train-labels-idx1-ubyte.gz", train_y)
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", test_y)
    return folder
