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
        for key, kind in (("problem", str), ("optimizer", str), ("size", str)):
            if key in data and not isinstance(data[key], kind):
                raise TypeError(f"{key} should be a string, got {data[key]!r}")
        for key in ("hyperparameters", "overrides"):
            if key in data and not isinstance(data[key], Mapping):
                raise TypeError(f"{key} should be a table, got {data[key]!r}")
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
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new, whole.

    The temporary file is named after its writer (host and pid: see
    :func:`critgrad.bench.claims.clean_stale`) and gets the mode the umask gives, as ``open()``
    would (``mkstemp`` alone makes it 0600)."""
    from critgrad.bench import claims

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional_number(value: Any) -> bool:
    return value is None or _is_number(value)


# The fields that selection, the report and the plots read, and what each must hold. Every record
# this code has written has them; a file that lacks one is reported (by name) and run again,
# instead of failing the report with a KeyError.
RECORD_FIELDS: dict[str, tuple[Any, str]] = {
    "metric": (lambda v: isinstance(v, str), "a string"),
    "higher_is_better": (lambda v: isinstance(v, bool), "true or false"),
    "history": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list"),
    "final": (lambda v: isinstance(v, dict), "a table"),
    "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count"),
    "wall_seconds": (_is_number, "a number"),
    "train_seconds": (_is_number, "a number"),
    "optimizer_seconds": (_is_number, "a number"),
}
POINT_FIELDS: dict[str, tuple[Any, str]] = {
    "epoch": (_is_number, "a number"),
    "step": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "train_seconds": (_is_number, "a number"),
    "train_loss": (_optional_number, "a number or null"),
    "valid_loss": (_optional_number, "a number or null"),
    "valid_metric": (_optional_number, "a number or null"),
    "test_loss": (_optional_number, "a number or null"),
    "test_metric": (_optional_number, "a number or null"),
}
FINAL_FIELDS = ("train_loss", "valid_loss", "valid_metric", "test_loss", "test_metric")


def check_record(record: Any) -> str | None:
    """What is wrong with a parsed record (None when nothing): the first missing or bad field."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return f"not a format-{RECORD_FORMAT} run record"
    try:
        RunSpec.from_dict(record["spec"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return f"missing or bad field spec ({type(error).__name__}: {error})"
    for key, (ok, words) in RECORD_FIELDS.items():
        if key not in record:
            return f"missing field {key!r}"
        if not ok(record[key]):
            return f"field {key!r} should be {words}, got {_short(record[key])}"
    for key in FINAL_FIELDS:
        if key not in record["final"]:
            return f"missing field 'final.{key}'"
        if not _optional_number(record["final"][key]):
            return f"field 'final.{key}' should be a number or null"
    for index, point in enumerate(record["history"]):
        if not isinstance(point, dict):
            return f"field 'history[{index}]' should be a table"
        for key, (ok, words) in POINT_FIELDS.items():
            if key not in point:
                return f"missing field 'history[{index}].{key}'"
            if not ok(point[key]):
                return f"field 'history[{index}].{key}' should be {words}, got {_short(point[key])}"
        if point.get("memory") is not None and not isinstance(point["memory"], dict):
            return f"field 'history[{index}].memory' should be a table or null"
    if "diverged" in record and not isinstance(record["diverged"], bool):
        return "field 'diverged' should be true or false"
    if record.get("machine") is not None and not isinstance(record["machine"], dict):
        return "field 'machine' should be a table or null"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


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
