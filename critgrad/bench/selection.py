"""Selection: which configuration of each optimizer label goes on, from one problem's records.

The sweep's second stage and the report select with these same functions and the protocol's rules
(:func:`critgrad.bench.scoring.select`), so a report made at any time picks what the sweep picked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from critgrad.bench import scoring
from critgrad.bench.protocols import Protocol


def matching_records(
    all_records: Sequence[Mapping[str, Any]],
    problem: str,
    size: str,
    overrides: Mapping[str, Any],
    evals_per_epoch: int,
) -> list[Mapping]:
    """The records of ``problem`` run at this size, with these overrides and evaluation count."""
    return [
        r
        for r in all_records
        if r["spec"]["problem"] == problem
        and r["spec"]["size"] == size
        and r["spec"]["overrides"] == dict(overrides)
        and r["spec"]["evals_per_epoch"] == evals_per_epoch
    ]


def group_by_config(
    problem_records: Sequence[Mapping[str, Any]], label: str, configs: Sequence[Mapping[str, Any]]
) -> dict[str, list[Mapping]]:
    """The records of ``label``, grouped by configuration, in the protocol's configuration order."""
    groups: dict[str, list[Mapping]] = {scoring.config_id(c): [] for c in configs}
    for record in problem_records:
        if record["spec"]["optimizer"] == label:
            config = scoring.config_id(record["spec"]["hyperparameters"])
            if config in groups:
                groups[config].append(record)
    for runs in groups.values():
        runs.sort(key=lambda r: r["spec"]["seed"])
    return groups


def selected_configs(
    problem_records: Sequence[Mapping[str, Any]], protocol: Protocol
) -> dict[str, str | None]:
    """Each optimizer label's selected configuration id (None when nothing has run)."""
    if not problem_records:
        return dict.fromkeys(protocol.configs)
    higher = problem_records[0]["higher_is_better"]
    return {
        label: scoring.select(
            group_by_config(problem_records, label, configs),
            split=protocol.selection_split,
            reduce=protocol.selection_reduce,
            higher_is_better=higher,
            seeds=protocol.tune_seeds,
        )
        for label, configs in protocol.configs.items()
    }
