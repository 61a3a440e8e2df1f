"""What a run is and what its record holds: the contract between the runner, records on disk,
selection and the report.

A run is identified by its :class:`RunSpec` (problem, size, problem overrides, optimizer label,
hyperparameters, seed, evaluations per epoch); :meth:`RunSpec.run_id` is a SHA-256 of the spec's
canonical JSON, so re-planning the same sweep finds the same runs. A record is the JSON that the
runner returns for a spec (see :mod:`critgrad.bench.runner`); :data:`RECORD_FIELDS`,
:data:`POINT_FIELDS` and :data:`FINAL_FIELDS` are what selection, the report and the plots read,
and :func:`check_record` says which is missing or bad. Non-finite numbers are stored as ``null``
(:func:`finite_or_none`) so that every record is standard JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

RECORD_FORMAT = 1


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

    def run_id(self) -> str:
        """The run's identity: a stable 16-hex-digit hash of the spec (independent of dict order).
        Records store it under ``"key"``, the field's name since the first format."""
        canonical = json.dumps(
            {"format": RECORD_FORMAT, **self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def file_name(self) -> str:
        return f"{_safe(self.problem)}__{_safe(self.optimizer)}__{self.run_id()}.json"


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
