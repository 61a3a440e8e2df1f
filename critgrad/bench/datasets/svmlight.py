"""covtype and rcv1 in svmlight / libsvm text format, from a folder the user provides.

Source: the LIBSVM data sets page, https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/ ,
the files the paper's authors used:

* covtype (multiclass, 581,012 rows, 54 features, labels 1..7): ``covtype.bz2`` (or ``covtype``,
  ``covtype.scale.bz2``, ``covtype.scale``);
* rcv1 (binary, 20,242 rows, 47,236 features, labels -1/+1): ``rcv1_train.binary.bz2`` (or
  ``rcv1_train.binary``).

Looked for in ``--data-dir`` / ``$CRITGRAD_DATA_DIR`` and their ``libsvm`` subfolder; ``.bz2``,
``.gz`` and plain files are read as they are. Format: one row per line, ``LABEL INDEX:VALUE ...``
(indices 1-based in LIBSVM files; they only line up columns here, so 0-based files read the same),
absent features are 0, an optional ``qid:N`` and a ``# comment`` are ignored.

:func:`sample` draws the paper's 5,000 random rows. Rows are drawn without replacement and the
features and labels of a row are taken with the SAME index (the authors' script drew two
independent index sets, so its labels did not belong to its rows).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable

FILES = {
    "covtype": ("covtype.bz2", "covtype", "covtype.scale.bz2", "covtype.scale"),
    "rcv1": ("rcv1_train.binary.bz2", "rcv1_train.binary"),
}
_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/"


def _open(path: Path):
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The first of the accepted file names found; DataUnavailable otherwise."""
    if name not in FILES:
        raise KeyError(f"unknown svmlight data set {name!r}; known: {sorted(FILES)}")
    folders = search_folders(data_dir, ("", "libsvm"))
    for folder in folders:
        for file_name in FILES[name]:
            if (folder / file_name).is_file():
                return folder / file_name
    kind = "multiclass" if name == "covtype" else "binary"
    raise unavailable(
        name,
        " or ".join(FILES[name]),
        folders,
        f"download {FILES[name][0]} from the LIBSVM data sets page ({_URL}, "
        f"{kind} section) into DATA_DIR (--data-dir or $CRITGRAD_DATA_DIR)",
    )


def parse_line(line: str) -> tuple[float, list[int], list[float]]:
    """(label, feature indices as written, values) of one svmlight row."""
    fields = line.split("#", 1)[0].split()
    if not fields:
        raise ValueError("empty row")
    indices, values = [], []
    for field in fields[1:]:
        key, _, value = field.partition(":")
        if key == "qid":
            continue
        indices.append(int(key))
        values.append(float(value))
    return float(fields[0]), indices, values


@dataclasses.dataclass(frozen=True)
class SvmlightRows:
    """Dense float32 features (rows, columns kept) and int64 class ids 0..classes-1."""

    features: np.ndarray
    labels: np.ndarray
    classes: int
    source: str


def sample(path: Path, rows: int, seed: int) -> SvmlightRows:
    """``rows`` rows drawn uniformly without replacement (all rows if fewer), densified.

    Only the drawn rows are parsed, so a 581k-row file costs one decompression. Class ids come from
    the labels of the whole file, sorted, so they do not depend on the draw. Columns that are zero
    in every drawn row are dropped: after standardisation they would stay 0 and carry nothing (for
    rcv1 this keeps the dense matrix in hundreds of MB instead of 1 GB).
    """
    with _open(path) as handle:
        lines = [
            line
            for line in handle.read().decode("utf-8").splitlines()
            if line.split("#", 1)[0].strip()
        ]
    if not lines:
        raise ValueError(f"{path}: no rows")
    classes = sorted({float(line.split(None, 1)[0]) for line in lines})
    class_id = {label: i for i, label in enumerate(classes)}
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(lines), size=min(rows, len(lines)), replace=False))
    parsed = []
    for row in chosen:
        try:
            parsed.append(parse_line(lines[row]))
        except ValueError as error:
            raise ValueError(f"{path}: row {row + 1}: {error}") from None
    used = sorted({i for _, indices, _ in parsed for i in indices})
    column = {index: position for position, index in enumerate(used)}
    features = np.zeros((len(parsed), len(used)), dtype=np.float32)
    labels = np.empty(len(parsed), dtype=np.int64)
    for r, (label, indices, values) in enumerate(parsed):
        labels[r] = class_id[label]
        features[r, [column[i] for i in indices]] = values
    return SvmlightRows(features, labels, len(classes), str(path))


register_locator("covtype", lambda data_dir=None: str(locate("covtype", data_dir)))
register_locator("rcv1", lambda data_dir=None: str(locate("rcv1", data_dir)))
