"""Run records on disk: one JSON file per finished run, written atomically, named by its run id.

The file name is ``<problem>__<optimizer>__<run id>.json`` (:meth:`RunSpec.file_name`; what a
record holds is :mod:`critgrad.bench.record_format`), so re-planning the same sweep finds the same
files and skips them. A record is written to a temporary file in the same folder and moved into
place with ``os.replace``: a killed process leaves either the old state or the whole new record,
never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from critgrad.bench import claims
from critgrad.bench.record_format import RunSpec, check_record, finite_or_none

MANIFEST_NAME = "sweep.json"  # the sweep's plan and protocol, beside its records


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new, whole.

    The temporary file is named after its writer (host and pid: see
    :func:`critgrad.bench.claims.clean_stale`) and gets the mode the umask gives, as ``open()``
    would (``mkstemp`` alone makes it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=claims.temporary_name(path), suffix=claims.TMP_SUFFIX, dir=path.parent
    )
    try:
        os.fchmod(handle, claims.file_mode())
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(finite_or_none(data), stream, indent=1, allow_nan=False)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def record_path(run_dir: str | os.PathLike, spec: RunSpec) -> Path:
    return Path(run_dir) / spec.file_name()


def write_record(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Store a finished run's record under its spec's file name; returns the path."""
    path = record_path(run_dir, RunSpec.from_dict(record["spec"]))
    atomic_write_json(path, record)
    return path


class BrokenRecord(ValueError):
    """A record file that cannot be parsed or does not look like a record."""


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check one record file; :class:`BrokenRecord` names the file and says what is
    wrong with it."""
    try:
        with open(path, encoding="utf-8") as stream:
            record = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BrokenRecord(f"{path}: {' '.join(str(error).split())}") from None
    problem = check_record(record)
    if problem is not None:
        raise BrokenRecord(f"{path}: {problem}")
    spec = RunSpec.from_dict(record["spec"])
    if Path(path).name != spec.file_name():
        raise BrokenRecord(f"{path}: file name does not match its spec ({spec.file_name()})")
    return record


def read_records(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """All records in ``run_dir`` (sorted by file name) and one message per broken file."""
    records, broken = [], []
    for path in sorted(Path(run_dir).glob("*.json")):
        if path.name == MANIFEST_NAME:
            continue
        try:
            records.append(load_record(path))
        except BrokenRecord as error:
            broken.append(str(error))
    return records, broken


def finished(run_dir: str | os.PathLike, spec: RunSpec) -> tuple[bool, str | None]:
    """Whether ``spec``'s record exists and parses; the second item explains a broken one."""
    path = record_path(run_dir, spec)
    if not path.exists():
        return False, None
    try:
        load_record(path)
    except BrokenRecord as error:
        return False, str(error)
    return True, None
