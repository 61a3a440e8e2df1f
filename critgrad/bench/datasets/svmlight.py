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

import dataclasses
import lzma
import math
import os
import zlib
from pathlib import Path

import numpy as np

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable
from critgrad.bench.datasets._integrity import corrupt, file_identity, once, open_stream, read_text

FILES = {
    "covtype": ("covtype.bz2", "covtype", "covtype.scale.bz2", "covtype.scale"),
    "rcv1": ("rcv1_train.binary.bz2", "rcv1_train.binary"),
}
_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/"


# The labels each data set's file uses (covtype: the 7 cover types; rcv1: -1 / +1).
LABELS = {"covtype": frozenset(range(1, 8)), "rcv1": frozenset({-1, 1})}


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
    """(label, feature indices as written, values) of one svmlight row; ValueError saying what is
    wrong with it (the caller adds the file and line)."""
    fields = line.split("#", 1)[0].split()
    if not fields:
        raise ValueError("empty row")
    indices, values = [], []
    for field in fields[1:]:
        key, colon, value = field.partition(":")
        if key == "qid":
            continue
        try:
            index, number = int(key), float(value)
        except ValueError:
            raise ValueError(f"{field!r} is not INDEX:VALUE") from None
        if not colon or index < 0 or not math.isfinite(number):
            raise ValueError(f"{field!r} is not INDEX:VALUE with an index >= 0 and a finite value")
        indices.append(index)
        values.append(number)
    return _label(fields[0]), indices, values


def _label(text: str) -> float:
    try:
        label = float(text)
    except ValueError:
        raise ValueError(f"label {text!r} is not a number") from None
    if not math.isfinite(label):
        raise ValueError(f"label {text!r} is not a finite number")
    return label


def _check_labels(path: Path, labels: set[float], name: str | None) -> None:
    expected = LABELS.get(name) if name else None
    if expected is not None and not labels <= expected:
        stray = sorted(labels - expected)[:5]
        raise corrupt(path, f"labels {stray} are not {name}'s ({sorted(expected)})")


def verify(name: str, data_dir: str | os.PathLike | None = None, lines: int = 100) -> Path:
    """The file of ``name``, its first ``lines`` rows parsed and their labels checked (streamed:
    the whole file is read, and checked, by :func:`sample`)."""
    path = locate(name, data_dir)

    def check() -> bool:
        labels = set()
        try:
            with open_stream(path) as stream:
                for number, raw in zip(range(1, lines + 1), stream):
                    line = raw.decode("utf-8")
                    if line.split("#", 1)[0].strip():
                        try:
                            labels.add(parse_line(line)[0])
                        except ValueError as error:
                            raise corrupt(f"{path}:{number}", str(error)) from None
        except UnicodeDecodeError as error:
            raise corrupt(path, f"not UTF-8 text ({error.reason})") from None
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:
            raise corrupt(path, f"cannot be read ({type(error).__name__}: {error})") from None
        if not labels:
            raise corrupt(path, "no rows")
        _check_labels(path, labels, name)
        return True

    once(("svmlight", *file_identity(path)), check)
    return path


@dataclasses.dataclass(frozen=True)
class SvmlightRows:
    """Dense float32 features (rows, columns kept) and int64 class ids 0..classes-1."""

    features: np.ndarray
    labels: np.ndarray
    classes: int
    source: str


def sample(path: Path, rows: int, seed: int, name: str | None = None) -> SvmlightRows:
    """``rows`` rows drawn uniformly without replacement (all rows if fewer), densified.

    Only the drawn rows are parsed, so a 581k-row file costs one decompression. Class ids come from
    the labels of the whole file, sorted, so they do not depend on the draw. Columns that are zero
    in every drawn row are dropped: after standardisation they would stay 0 and carry nothing (for
    rcv1 this keeps the dense matrix in hundreds of MB instead of 1 GB).
    """
    numbered = [
        (number, line)
        for number, line in enumerate(read_text(path).splitlines(), 1)
        if line.split("#", 1)[0].strip()
    ]
    if not numbered:
        raise corrupt(path, "no rows")
    numbers, lines = zip(*numbered)
    labels = set()
    for number, line in numbered:
        try:
            labels.add(_label(line.split(None, 1)[0]))
        except ValueError as error:
            raise corrupt(f"{path}:{number}", str(error)) from None
    _check_labels(path, labels, name)
    if len(labels) < 2:
        raise corrupt(path, f"a single class ({sorted(labels)}): nothing to classify")
    classes = sorted(labels)
    class_id = {label: i for i, label in enumerate(classes)}
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(lines), size=min(rows, len(lines)), replace=False))
    parsed = []
    for row in chosen:
        try:
            parsed.append(parse_line(lines[row]))
        except ValueError as error:
            raise corrupt(f"{path}:{numbers[row]}", str(error)) from None
    used = sorted({i for _, indices, _ in parsed for i in indices})
    column = {index: position for position, index in enumerate(used)}
    features = np.zeros((len(parsed), len(used)), dtype=np.float32)
    labels = np.empty(len(parsed), dtype=np.int64)
    for r, (label, indices, values) in enumerate(parsed):
        labels[r] = class_id[label]
        features[r, [column[i] for i in indices]] = values
    return SvmlightRows(features, labels, len(classes), str(path))


for _name in FILES:
    register_locator(
        _name,
        lambda data_dir=None, _name=_name: str(locate(_name, data_dir)),
        lambda data_dir=None, _name=_name: verify(_name, data_dir),
    )
