"""Where loaders look for data sets that a user puts on disk, and the one message when they are not.

The roots, in order: the ``data_dir`` passed by the caller (``--data-dir``), then the folder named by
the environment variable ``CRITGRAD_DATA_DIR`` (the same variable the MNIST loader reads). Nothing is
ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from critgrad.bench.contract import DataUnavailable

ENV_VAR = "CRITGRAD_DATA_DIR"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The user's data folders, ``data_dir`` first, without duplicates."""
    roots: list[Path] = []
    for raw in (data_dir, os.environ.get(ENV_VAR)):
        if raw and Path(raw).expanduser() not in roots:
            roots.append(Path(raw).expanduser())
    return roots


def search_folders(data_dir: str | os.PathLike | None, subfolders: Iterable[str]) -> list[Path]:
    """Each root itself (for ``""``) and each of its ``subfolders``, roots in order."""
    subfolders = tuple(subfolders)
    return [root / sub if sub else root for root in data_roots(data_dir) for sub in subfolders]


def unavailable(name: str, expected: str, folders: Iterable[Path], how: str) -> DataUnavailable:
    """The error for a missing data set: what, which files, where we looked, how to get them."""
    searched = ", ".join(str(folder) for folder in folders)
    if not searched:
        searched = f"(no folder given: pass --data-dir or set {ENV_VAR})"
    return DataUnavailable(f"{name} not found: expected {expected} in one of: {searched}; {how}")
