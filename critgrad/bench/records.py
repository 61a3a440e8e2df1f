"""Run records on disk: one JSON file per finished run, written atomically, named by a stable hash.

A run is identified by its :class:`RunSpec` (problem, size, problem overrides, optimizer label,
hyperparameters, seed, evaluations per epoch). The file name is
``<problem>__<optimizer>__<hash>.json`` where the hash is a SHA-256 of the spec's canonical JSON,
so re-planning the same sweep finds the same files and skips them. A record is written to a
temporary file in the same folder and moved into place with ``os.replace``: a killed process leaves
either the old state or the whole new record, never half of one. Non-finite numbers are stored as
``null`` so that every record is standard JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD_FORMAT = 1
MANIFEST_NAME = "sweep.json"  # the sweep's plan and protocol, beside its records


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers (timings aside)."""

    problem: str
    optimizer: str  # a harness label: a registry name, or an alias such as "sgdm"
    hyperparameters: Mapping[str, Any]
    seed: int
    size: str = "cpu"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    evals_per_epoch: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "size": self.size,
            "overrides": dict(self.overrides),
            "optimizer": self.optimizer,
            "hyperparameters": dict(self.hyperparameters),
            "seed": self.seed,
            "evals_per_epoch": self.evals_per_epoch,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        return cls(
            problem=data["problem"],
            optimizer=data["optimizer"],
            hyperparameters=dict(data["hyperparameters"]),
            seed=int(data["seed"]),
            size=data.get("size", "cpu"),
            overrides=dict(data.get("overrides", {})),
            evals_per_epoch=int(data.get("evals_per_epoch", 1)),
        )

    def key(self) -> str:
        """A stable 16-hex-digit hash of the spec (independent of dict order)."""
        canonical = json.dumps(
            {"format": RECORD_FORMAT, **self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def file_name(self) -> str:
        return f"{_safe(self.problem)}__{_safe(self.optimizer)}__{self.key()}.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def finite_or_none(value: Any) -> Any:
    """Replace NaN and infinities, anywhere in nested lists and dicts, by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
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
    """Parse and check one record file; :class:`BrokenRecord` says what is wrong with it."""
    try:
        with open(path) as stream:
            record = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BrokenRecord(f"{path}: {error}") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise BrokenRecord(f"{path}: not a format-{RECORD_FORMAT} run record")
    try:
        spec = RunSpec.from_dict(record["spec"])
        record["history"], record["final"]
    except (KeyError, TypeError, ValueError) as error:
        raise BrokenRecord(f"{path}: missing or bad field {error}") from None
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
