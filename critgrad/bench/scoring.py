"""The arithmetic of the comparison, as pure functions over records.

* A run *diverged* when its record says so, or (records written before the runner checked every
  step) when one of its final losses or metrics is missing: null stands for a non-finite number.
* A run's *score* on a split is its final metric (``reduce="final"``) or the best value over its
  evaluation points (``reduce="best"``, what the paper's scripts did with the test split).
  A diverged run, and a missing or non-finite value, scores as the worst possible.
* A configuration's selection score is the mean score over the selection seeds; ties go to the
  configuration listed first, so selection is deterministic. A configuration with a diverged run
  on the selection seeds is never selected; when every configuration diverged, none is.
* Summaries are the mean and the sample standard deviation (``ddof=1``) over seeds.
* Time-to-target: the target of a pair is the worse of its two selected configurations' mean final
  validation metric; each optimizer's time is the first evaluation point at which its
  seed-averaged validation curve reaches the target (steps, and seed-averaged training seconds
  with evaluation excluded). Both members of a pair reach it by construction, at the latest at
  their final point, so the comparison never has to invent a time for "not reached".
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Record = Mapping[str, Any]


def config_id(hyperparameters: Mapping[str, Any]) -> str:
    """A canonical string for a configuration (dict order does not matter)."""
    return json.dumps(dict(hyperparameters), sort_keys=True)


def _worst(higher_is_better: bool) -> float:
    return -math.inf if higher_is_better else math.inf


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


FINAL_KEYS = ("valid_loss", "valid_metric", "test_loss", "test_metric")


def diverged(record: Record) -> bool:
    """Whether the run diverged (see the module docstring)."""
    if record.get("diverged"):
        return True
    final = record["final"]
    keys = FINAL_KEYS + (("train_loss",) if record.get("steps") else ())
    return any(key in final and not _finite(final[key]) for key in keys)


def run_score(record: Record, split: str = "valid", reduce: str = "final") -> float:
    """The run's metric on ``split`` ("valid"/"test"): final, or best over its evaluation points;
    the worst possible for a diverged run."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    higher = record["higher_is_better"]
    key = f"{split}_metric"
    if diverged(record):
        return _worst(higher)
    if reduce == "final":
        value = record["final"][key]
        return float(value) if _finite(value) else _worst(higher)
    if reduce == "best":
        values = [p[key] for p in record["history"] if _finite(p[key])]
        if not values:
            return _worst(higher)
        return float(max(values) if higher else min(values))
    raise ValueError(f"reduce must be 'final' or 'best', got {reduce!r}")


def better(a: float, b: float, higher_is_better: bool) -> bool:
    """Strictly better (a NaN is never better)."""
    return a > b if higher_is_better else a < b


def select(
    runs_by_config: Mapping[str, Sequence[Record]],
    *,
    split: str,
    reduce: str,
    higher_is_better: bool,
    seeds: Sequence[int] | None = None,
) -> str | None:
    """The configuration with the best mean score over ``seeds`` (all seeds when None).

    ``runs_by_config`` is ordered: on a tie the first configuration wins. Configurations without
    any run on the selection seeds are not candidates, nor are those with a diverged run or a
    non-finite score there; None when no configuration is.
    """
    chosen, chosen_score = None, None
    for config, runs in runs_by_config.items():
        scored = [
            run_score(r, split, reduce) for r in runs if seeds is None or r["spec"]["seed"] in seeds
        ]
        if not scored:
            continue
        score = sum(scored) / len(scored)
        if not math.isfinite(score):
            continue
        if chosen is None or better(score, chosen_score, higher_is_better):
            chosen, chosen_score = config, score
    return chosen


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for fewer than two values) and count; NaN for both
    when a value is not finite (statistics.stdev raises on NaN instead)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan, 0
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan, len(values)
    mean = math.fsum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std, len(values)


def diverged_count(records: Sequence[Record]) -> int:
    return sum(diverged(r) for r in records)


def metric_values(records: Sequence[Record], split: str, reduce: str) -> list[float]:
    """Per-run scores as numbers (diverged and non-finite ones as NaN, so a summary shows the
    damage)."""
    values = []
    for record in records:
        score = run_score(record, split, reduce)
        values.append(score if math.isfinite(score) else math.nan)
    return values


def mean_curve(records: Sequence[Record], key: str) -> list[tuple[int, float, float]]:
    """(step, mean seconds, mean value) at each evaluation point that every run reached."""
    if not records:
        return []
    length = min(len(r["history"]) for r in records)
    curve = []
    for index in range(length):
        points = [r["history"][index] for r in records]
        values = [p[key] if _finite(p[key]) else math.nan for p in points]
        seconds = math.fsum(p["train_seconds"] for p in points) / len(points)
        curve.append((points[0]["step"], seconds, math.fsum(values) / len(values)))
    return curve


def pair_target(final_valid_means: Sequence[float], higher_is_better: bool) -> float:
    """The worse of the pair's selected mean final validation metrics."""
    finite = [v for v in final_valid_means if math.isfinite(v)]
    if len(finite) < len(final_valid_means) or not finite:
        return math.nan
    return min(finite) if higher_is_better else max(finite)


def time_to_target(
    records: Sequence[Record], target: float, higher_is_better: bool
) -> tuple[int, float] | None:
    """(steps, seconds) at which the seed-averaged validation curve first reaches ``target``."""
    if not math.isfinite(target):
        return None
    for step, seconds, value in mean_curve(records, "valid_metric"):
        if value == target or better(value, target, higher_is_better):
            return step, seconds
    return None


def per_step_ms(records: Sequence[Record]) -> tuple[float, float]:
    """Median over runs of (optimizer.step() ms, whole training step ms) per step."""
    rows = [
        (1e3 * r["optimizer_seconds"] / r["steps"], 1e3 * r["train_seconds"] / r["steps"])
        for r in records
        if r.get("steps")
    ]
    if not rows:
        return math.nan, math.nan
    return (statistics.median(row[0] for row in rows), statistics.median(row[1] for row in rows))


def admitted_fraction(records: Sequence[Record]) -> float:
    """Admitted / offered gradients at the end of the runs (all runs pooled); NaN without memory."""
    offered = admitted = 0
    for record in records:
        memory = record["history"][-1].get("memory")
        if memory:
            offered += memory.get("offered", 0)
            admitted += memory.get("admitted", 0)
    return admitted / offered if offered else math.nan
