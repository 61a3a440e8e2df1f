"""Sweeps: a protocol over problems, executed in stages, resumable, in one run directory.

For each problem in turn, stage 1 runs every configuration on the protocol's tuning seeds; stage 2
runs each optimizer's selected configuration on the remaining seeds. ``sweep.json`` beside the
records holds the protocol and settings (:mod:`critgrad.bench.manifest`), so ``critgrad report``
selects exactly as the sweep did.

Where the parts are: the sweep file's format in :mod:`critgrad.bench.sweep_file`, the checks before
the first run in :mod:`critgrad.bench.preflight`, running specs in :mod:`critgrad.bench.executors`,
selection in :mod:`critgrad.bench.selection`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import executors, protocols, records
from critgrad.bench.executors import DEFAULT_EXECUTOR, Log, Outcome
from critgrad.bench.manifest import Session
from critgrad.bench.preflight import preflight
from critgrad.bench.protocols import Protocol
from critgrad.bench.record_format import RunSpec
from critgrad.bench.selection import matching_records, selected_configs


@dataclasses.dataclass
class Sweep:
    """A parsed sweep: protocol, problems and how to execute them."""

    problems: list[str]
    protocol: Protocol
    out: Path
    size: str = "cpu"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    evals_per_epoch: int = 1
    data_dir: str | None = None
    executor: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_EXECUTOR))
    submitit: dict[str, Any] = dataclasses.field(default_factory=dict)
    sinks: dict[str, Any] = dataclasses.field(default_factory=dict)

    def problem_overrides(self, problem: str) -> dict[str, Any]:
        """Overrides for all problems, then the table named after ``problem``."""
        common = {k: v for k, v in self.overrides.items() if not isinstance(v, Mapping)}
        return {**common, **self.overrides.get(problem, {})}


def fixed_protocol_sweep(
    problems: Sequence[str],
    optimizers: Sequence[str],
    *,
    seeds: Sequence[int],
    hyperparameters: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
    size: str = "cpu",
    evals_per_epoch: int = 1,
    out: str | Path | None = None,
    data_dir: str | None = None,
    workers: int = 1,
    tensorboard: bool = False,
) -> Sweep:
    """``critgrad run``'s sweep: the fixed protocol, each label at its default configuration
    (:func:`critgrad.bench.protocols.default_configs`) with ``hyperparameters`` on top ("all" or a
    label -> settings, as a sweep file's ``[hyperparameters]``), in ``out`` (default
    ``runs/PROBLEM[+PROBLEM...]``)."""
    configs = protocols.default_configs(optimizers)
    for label in optimizers:
        configs[label].update(protocols.extra_hyperparameters(hyperparameters, label))
    protocol = protocols.fixed(configs, seeds=seeds)
    out = Path(out or Path("runs") / "+".join(problems))
    return Sweep(
        problems=list(problems),
        protocol=protocol,
        out=out,
        size=size,
        overrides=dict(overrides or {}),
        evals_per_epoch=evals_per_epoch,
        data_dir=data_dir,
        executor={"kind": "local", "workers": workers, "threads": 1},
        sinks={"tensorboard": True, "dir": str(out / "logs")} if tensorboard else {},
    )


def final_specs(sweep: Sweep, problem: str, problem_records: Sequence[Mapping]) -> list[RunSpec]:
    """Stage 2: each label's selected configuration on every reported seed."""
    specs = []
    overrides = sweep.problem_overrides(problem)
    for label, chosen in selected_configs(problem_records, sweep.protocol).items():
        if chosen is None:
            continue
        for seed in sweep.protocol.seeds:
            specs.append(
                RunSpec(
                    problem=problem,
                    optimizer=label,
                    hyperparameters=json.loads(chosen),
                    seed=seed,
                    size=sweep.size,
                    overrides=overrides,
                    evals_per_epoch=sweep.evals_per_epoch,
                )
            )
    return specs


def run_sweep(
    sweep: Sweep,
    *,
    progress: bool = True,
    command: str | None = None,
    log: Log = executors.log_to_stderr,
) -> Outcome:
    """Both stages for every problem; resumable; safe to run several times at once in one
    directory (see :mod:`critgrad.bench.claims`); the manifest keeps each session's wall time."""
    preflight(sweep)
    session = Session(sweep, command)
    outcome = Outcome()
    for path in session.start(outcome):
        log(f"removed a leftover of a process that is gone: {path.name}")
    settings = dict(
        kind=sweep.executor["kind"],
        workers=sweep.executor["workers"],
        threads=sweep.executor["threads"],
        data_dir=sweep.data_dir,
        sink_config=sweep.sinks,
        submitit_params=sweep.submitit,
        progress=progress,
        log=log,
        on_result=lambda: session.update(outcome),
    )
    status = "interrupted"
    try:
        # Problem by problem, both stages each: a sweep stopped early leaves whole problems done.
        for problem in sweep.problems:
            overrides = sweep.problem_overrides(problem)
            tuning = sweep.protocol.tuning_specs(
                problem, sweep.size, overrides, sweep.evals_per_epoch
            )
            executors.execute(tuning, sweep.out, outcome=outcome, **settings)
            stored, _ = records.read_records(sweep.out)
            mine = matching_records(stored, problem, sweep.size, overrides, sweep.evals_per_epoch)
            planned = {spec.run_id() for spec in tuning}
            final = [
                spec for spec in final_specs(sweep, problem, mine) if spec.run_id() not in planned
            ]  # counted once, in stage 1
            executors.execute(final, sweep.out, outcome=outcome, **settings)
        status = "finished"
    finally:
        session.update(outcome, status=status)
    return outcome
