"""Studies whose units are harness runs: a unit's configuration is a run spec, its result the
record condensed to what the studies read (final numbers, the curve, the memory's probe).

A configuration holds ``problem``, ``size``, ``overrides``, ``optimizer`` (a label of
:mod:`critgrad.bench.optimizer_labels`), ``hyperparameters``, ``seed`` and ``evals_per_epoch``:
exactly a :class:`~critgrad.bench.record_format.RunSpec`, so a unit's result is a function of it
(the harness's runs are deterministic but for their timings).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from critgrad.bench import optimizer_labels
from critgrad.bench.record_format import RunSpec

NORM_POINTS = 64  # norm samples kept per unit (evenly thinned) for the figures


def spec_config(
    problem: str,
    optimizer: str,
    hyperparameters: Mapping[str, Any],
    seed: int,
    overrides: Mapping[str, Any],
    size: str = "cpu",
    evals_per_epoch: int = 1,
) -> dict[str, Any]:
    """A unit configuration; the label and hyperparameters are checked now, before any run."""
    optimizer_labels.check_hyperparameters(optimizer, hyperparameters)
    return RunSpec(
        problem, optimizer, dict(hyperparameters), seed, size, dict(overrides), evals_per_epoch
    ).to_dict()


def run_config(config: Mapping[str, Any], data_dir: str | None) -> dict[str, Any]:
    """Run the configuration's spec through the harness runner and condense its record."""
    from critgrad.bench import runner

    record = runner.run(RunSpec.from_dict(config), data_dir=data_dir)
    return condense(record)


def condense(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the studies keep of a record (see the module docstring)."""
    history = record["history"]
    result: dict[str, Any] = {
        "metric": record["metric"],
        "higher_is_better": record["higher_is_better"],
        "diverged": bool(record.get("diverged")),
        "final": dict(record["final"]),
        "steps": record["steps"],
        "curve": [
            {
                "epoch": p["epoch"],
                "step": p["step"],
                "train_loss": p["train_loss"],
                "valid_metric": p["valid_metric"],
                "test_metric": p["test_metric"],
            }
            for p in history
        ],
        "train_seconds": record["train_seconds"],
    }
    memory = history[-1].get("memory")
    if memory:
        result["memory"] = {
            k: memory.get(k) for k in ("offered", "admitted", "rejected", "evicted", "mean_age")
        }
    probes = [p["probe"] for p in history if p.get("probe")]
    if probes:
        offered = sum(p["offered_when_full"] for p in probes)
        admitted = sum(
            round(p["admitted_when_full"] * p["offered_when_full"])
            for p in probes
            if p["admitted_when_full"] is not None
        )
        result["probe"] = {
            "admitted_when_full": admitted / offered if offered else None,
            "offered_when_full": offered,
            "admitted_when_full_per_point": [p["admitted_when_full"] for p in probes[1:]],
            "held_ages": probes[-1]["held_ages"],
            "evicted_ages": [sum(column) for column in zip(*(p["evicted_ages"] for p in probes))],
            "age_edges": record["probe"]["age_edges"],
            "norms": _norms(record["probe"]["norms"]),
        }
    return result


def _norms(norms: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Medians of |m|/|g| and |d|/|g|, the mean cosine, and the samples thinned for figures."""
    rows = [
        (s, g, m, d, c)
        for s, g, m, d, c in zip(
            norms["step"], norms["grad"], norms["stored_mean"], norms["direction"], norms["cosine"]
        )
        if g is not None and g > 0 and m is not None and d is not None
    ]
    kept = rows[:: max(1, -(-len(rows) // NORM_POINTS))]
    cosines = [c for *_, c in rows if c is not None]
    return {
        "samples": len(rows),
        "median_stored_over_grad": _median([m / g for _, g, m, _, _ in rows]),
        "median_direction_over_grad": _median([d / g for _, g, _, d, _ in rows]),
        "mean_cosine": statistics.fmean(cosines) if cosines else None,
        "thinned": {
            "step": [r[0] for r in kept],
            "grad": [r[1] for r in kept],
            "stored_mean": [r[2] for r in kept],
            "direction": [r[3] for r in kept],
            "cosine": [r[4] for r in kept],
        },
    }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def score(result: Mapping[str, Any], split: str = "test") -> float | None:
    """The final metric of a unit (None when it diverged)."""
    if result["diverged"]:
        return None
    return result["final"][f"{split}_metric"]


def mean_over_seeds(results: Sequence[Mapping[str, Any]], split: str = "test") -> dict[str, Any]:
    """Mean and sample std of the final metric over the finite seeds, and how many diverged."""
    values = [score(r, split) for r in results]
    finite = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else None),
        "seeds": len(values),
        "diverged": len(values) - len(finite),
    }


def better_than(value: float | None, reference: float | None, higher_is_better: bool) -> float:
    """How much better ``value`` is than ``reference``, in % of the reference (negative: worse).
    NaN when either is missing."""
    if value is None or reference is None or reference == 0:
        return float("nan")
    change = (value - reference) / abs(reference) * 100.0
    return change if higher_is_better else -change


def metric_words(metric: str) -> str:
    """'test accuracy' / 'test perplexity' for titles."""
    return f"test {metric}"


def display(label: str) -> str:
    return optimizer_labels.display_name(label)
