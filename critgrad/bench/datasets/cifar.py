"""CIFAR-10 and CIFAR-100, the "python version" pickles, read from a folder the user provides.

Source: https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 python version" and "CIFAR-100
python version"). Either the extracted folder or the downloaded archive itself is accepted::

    DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch   (or cifar-10-python.tar.gz)
    DATA_DIR/cifar-100-python/train, test                                      (or cifar-100-python.tar.gz)

``DATA_DIR`` is ``--data-dir``, then ``$CRITGRAD_DATA_DIR``; a ``cifar`` subfolder of either is also
searched. Each file is a pickle (written by Python 2, so loaded with ``encoding="bytes"``) of a dict
with byte-string keys: ``b"data"``, a uint8 array (N, 3072) whose rows hold a 32x32 image as 1024
red, 1024 green, then 1024 blue values in row-major order; ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` (CIFAR-100, 100 classes), N ints. Plain ``pickle.loads`` would run whatever code
a file names; these files are read with an unpickler that builds only what the official files hold
(dicts, lists, strings, bytes, numbers, numpy arrays of plain types) and refuses anything else
(:mod:`critgrad.bench.datasets._integrity`). Each batch is checked: a dict with the data and label
keys, (N, 3072) uint8 data, N integer labels in range; a bad file is a CorruptData naming it.

The loader returns the official train (50,000) and test (10,000) sets; the validation split and the
normalisation are the problem's business (see :mod:`critgrad.bench.problems.vision`).
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable
from critgrad.bench.datasets._integrity import corrupt, file_identity, load_pickle, once, read_bytes


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


# The largest official file is CIFAR-100's train pickle, 150 MB; a member claiming far more is not
# one of them.
MEMBER_LIMIT = 512 << 20


def _read_pickles(source: Path, layout: _Layout, members: tuple[str, ...]) -> list[tuple]:
    """(where, batch) for each member: read whole, unpickled safely, named for messages."""
    blobs = []
    if source.is_dir():
        for member in members:
            blobs.append((source / member, read_bytes(source / member, MEMBER_LIMIT)))
    else:
        try:
            with tarfile.open(source, "r:*") as archive:
                for member in members:
                    where = f"{source}:{layout.folder}/{member}"
                    try:
                        info = archive.getmember(f"{layout.folder}/{member}")
                    except KeyError:
                        raise corrupt(where, "missing from the archive") from None
                    if not info.isfile() or info.size > MEMBER_LIMIT:
                        raise corrupt(where, "not a file of the size of a CIFAR batch")
                    handle = archive.extractfile(info)
                    blobs.append((where, handle.read() if handle else b""))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise corrupt(
                source, f"not a readable archive ({type(error).__name__}: {error})"
            ) from None
    for where, blob in blobs:
        if not blob:
            raise corrupt(where, "empty file")
    return [(where, load_pickle(blob, where)) for where, blob in blobs]


def _images_and_labels(batches: list[tuple], layout: _Layout):
    images, labels = [], []
    for where, batch in batches:
        if not isinstance(batch, dict):
            raise corrupt(where, f"holds a {type(batch).__name__}, a CIFAR batch is a dict")
        # Keys are bytes in the official files; tolerate str keys from a re-pickled copy.
        data = batch.get(b"data", batch.get("data"))
        label = batch.get(layout.label_key, batch.get(layout.label_key.decode()))
        if data is None or label is None:
            raise corrupt(
                where,
                f"lacks the keys b'data' and {layout.label_key!r}; keys are "
                f"{sorted(map(str, batch))}",
            )
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise corrupt(where, "b'data' is not a uint8 array")
        if data.ndim != 2 or data.shape[1] != 3072:
            raise corrupt(where, f"data of shape {data.shape}, expected (N, 3072)")
        if not isinstance(label, (list, np.ndarray)) or len(label) != len(data):
            raise corrupt(where, f"{len(data)} images and {_length(label)} labels")
        label = np.asarray(label)
        if label.dtype.kind not in "iu":
            raise corrupt(where, f"labels of type {label.dtype}, expected integers")
        if len(label) and (label.min() < 0 or label.max() >= layout.classes):
            raise corrupt(where, f"labels outside 0..{layout.classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _length(value) -> str:
    try:
        return str(len(value))
    except TypeError:
        return "no"


def load(name: str, data_dir: str | os.PathLike | None = None) -> CifarData:
    """The official train and test sets of ``name`` ("cifar10" or "cifar100"), cached per process."""
    if name not in LAYOUTS:
        raise KeyError(f"unknown CIFAR data set {name!r}; known: {sorted(LAYOUTS)}")
    layout = LAYOUTS[name]
    source = locate(name, data_dir)
    key = (name, str(source.resolve()))
    if key not in _CACHE:
        train = _images_and_labels(_read_pickles(source, layout, layout.train), layout)
        test = _images_and_labels(_read_pickles(source, layout, layout.test), layout)
        _CACHE[key] = CifarData(train[0], train[1], test[0], test[1], layout.classes, str(source))
    return _CACHE[key]


def verify(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where ``name`` is, after reading and checking every batch (remembered per process while the
    files do not change); CorruptData names a bad file."""
    source = locate(name, data_dir)
    layout = LAYOUTS[name]
    paths = [source / m for m in layout.train + layout.test] if source.is_dir() else [source]
    once(("cifar", name, *file_identity(*paths)), lambda: load(name, data_dir) and True)
    return source


for _name in LAYOUTS:
    register_locator(
        _name,
        lambda data_dir=None, _name=_name: str(locate(_name, data_dir)),
        lambda data_dir=None, _name=_name: verify(_name, data_dir),
    )
