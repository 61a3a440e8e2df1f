"""CIFAR-10 and CIFAR-100, the "python version" pickles, read from a folder the user provides.

Source: https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 python version" and "CIFAR-100
python version"). Either the extracted folder or the downloaded archive itself is accepted::

    DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch   (or cifar-10-python.tar.gz)
    DATA_DIR/cifar-100-python/train, test                                      (or cifar-100-python.tar.gz)

``DATA_DIR`` is ``--data-dir``, then ``$CRITGRAD_DATA_DIR``; a ``cifar`` subfolder of either is also
searched. Each file is a pickle (written by Python 2, so loaded with ``encoding="bytes"``) of a dict
with byte-string keys: ``b"data"``, a uint8 array (N, 3072) whose rows hold a 32x32 image as 1024
red, 1024 green, then 1024 blue values in row-major order; ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` (CIFAR-100, 100 classes), N ints. Unpickling runs code the file names: load only
the files of the official archive.

The loader returns the official train (50,000) and test (10,000) sets; the validation split and the
normalisation are the problem's business (see :mod:`critgrad.bench.problems.vision`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable


@dataclasses.dataclass(frozen=True)
class _Layout:
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    classes: int


LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
    ),
    "cifar100": _Layout(
        "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), b"fine_labels", 100
    ),
}
_DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


@dataclasses.dataclass(frozen=True)
class CifarData:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of the official train and test sets."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: int
    source: str


_CACHE: dict[tuple[str, str], CifarData] = {}


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The extracted folder or the archive holding ``name``; DataUnavailable if neither is found."""
    layout = LAYOUTS[name]
    folders = search_folders(data_dir, ("", "cifar"))
    for folder in folders:
        # The folder itself counts only under its official name: "train" and "test" alone are
        # too common to identify CIFAR-100.
        for extracted in (folder / layout.folder, folder):
            if extracted.name == layout.folder and all(
                (extracted / member).is_file() for member in layout.train + layout.test
            ):
                return extracted
        if (folder / layout.archive).is_file():
            return folder / layout.archive
    files = ", ".join(layout.train + layout.test)
    raise unavailable(
        _DISPLAY[name],
        f"{layout.folder}/ with {files} (or the archive {layout.archive})",
        folders,
        f"download the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        f"and put {layout.folder}/ or {layout.archive} under DATA_DIR (--data-dir or "
        f"$CRITGRAD_DATA_DIR)",
    )


def _read_pickles(source: Path, layout: _Layout, members: tuple[str, ...]) -> list[dict]:
    if source.is_dir():
        blobs = [(source / member).read_bytes() for member in members]
    else:
        with tarfile.open(source, "r:*") as archive:
            blobs = []
            for member in members:
                handle = archive.extractfile(f"{layout.folder}/{member}")
                if handle is None:
                    raise ValueError(f"{source}: {layout.folder}/{member} is not a file")
                blobs.append(handle.read())
    return [pickle.loads(blob, encoding="bytes") for blob in blobs]


def _images_and_labels(batches: list[dict], layout: _Layout, source: Path):
    images, labels = [], []
    for batch in batches:
        # Keys are bytes in the official files; tolerate str keys from a re-pickled copy.
        data = batch.get(b"data", batch.get("data"))
        label = batch.get(layout.label_key, batch.get(layout.label_key.decode()))
        if data is None or label is None:
            raise ValueError(
                f"{source}: a batch lacks the keys b'data' and "
                f"{layout.label_key!r}; keys are {sorted(map(str, batch))}"
            )
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(label):
            raise ValueError(
                f"{source}: data {data.shape} and {len(label)} labels do not "
                f"make (N, 3072) images with N labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(label, dtype=np.int64))
    labels_all = np.concatenate(labels)
    if labels_all.min() < 0 or labels_all.max() >= layout.classes:
        raise ValueError(f"{source}: labels outside 0..{layout.classes - 1}")
    return np.concatenate(images), labels_all


def load(name: str, data_dir: str | os.PathLike | None = None) -> CifarData:
    """The official train and test sets of ``name`` ("cifar10" or "cifar100"), cached per process."""
    if name not in LAYOUTS:
        raise KeyError(f"unknown CIFAR data set {name!r}; known: {sorted(LAYOUTS)}")
    layout = LAYOUTS[name]
    source = locate(name, data_dir)
    key = (name, str(source.resolve()))
    if key not in _CACHE:
        train = _images_and_labels(_read_pickles(source, layout, layout.train), layout, source)
        test = _images_and_labels(_read_pickles(source, layout, layout.test), layout, source)
        _CACHE[key] = CifarData(train[0], train[1], test[0], test[1], layout.classes, str(source))
    return _CACHE[key]


register_locator("cifar10", lambda data_dir=None: str(locate("cifar10", data_dir)))
register_locator("cifar100", lambda data_dir=None: str(locate("cifar100", data_dir)))
