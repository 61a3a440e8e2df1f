"""Sweeps: a protocol over problems, executed in stages, resumable, in one run directory.

For each problem in turn, stage 1 runs every configuration on the protocol's tuning seeds; stage 2
runs each optimizer's selected configuration on the remaining seeds. A run whose record is already in the directory is
skipped (the file name is a hash of the run's spec), so a killed sweep resumes where it stopped;
a record that does not parse is reported and run again. ``sweep.json`` beside the records holds
the protocol and settings, so ``critgrad report`` selects exactly as the sweep did.

Executors: ``inline`` (this process), ``local`` (a process pool; the default for sweeps) and
``submitit`` (SLURM through submitit, as the paper's authors ran; ``cluster = "local"`` or
``"debug"`` runs the same code path on this machine).

A sweep file (TOML or YAML) looks like::

    problems = ["mnist-logreg", "mnist-mlp"]
    optimizers = ["sgd", "sgd_c", "adam", "adam_c"]
    seeds = [0, 1, 2, 3, 4]
    protocol = "fair"                # fair | paper | fixed
    size = "cpu"                     # cpu | full
    evals_per_epoch = 2
    out = "runs/fair-mnist"          # relative to the current folder

    [overrides]                      # problem settings: for all problems, or per problem
    epochs = 2
    [fair]                           # lrs, tune_seeds, memory_search, topCs, decays, memory
    lrs = [0.1, 0.01, 0.001]
    [hyperparameters]                # fixed extras: "all", a vanilla label (its twin too), a label
    adam = { weight_decay = 0.0 }
    [executor]                       # kind = inline | local | submitit; workers; threads
    kind = "local"
    workers = 2
    [submitit]                       # cluster (slurm | local | debug) and submitit parameters
    cluster = "slurm"
    timeout_min = 60
    [sinks]                          # tensorboard / wandb (see critgrad.bench.sinks)
    tensorboard = false
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import optimizer_labels, protocols, records, scoring
from critgrad.bench.protocols import Protocol
from critgrad.bench.records import RunSpec

EXECUTORS = ("inline", "local", "submitit")
# One torch thread per run: MNIST-scale models gain nothing from more, and on a shared machine
# several multi-threaded processes slow each other down by an order of magnitude (measured here).
DEFAULT_EXECUTOR = {"kind": "local", "workers": 2, "threads": 1}
_TOP_LEVEL_KEYS = {
    "problems",
    "optimizers",
    "seeds",
    "protocol",
    "size",
    "evals_per_epoch",
    "out",
    "data_dir",
    "overrides",
    "fair",
    "paper",
    "fixed",
    "hyperparameters",
    "executor",
    "submitit",
    "sinks",
}

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


# ---- configuration files ------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) sweep file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: {error}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: {' '.join(str(error).split())}") from None
    else:
        raise ValueError(f"sweep file must end in .toml, .yaml or .yml: {path}")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the sweep file must be a table/mapping at the top level")
    return data


def _table(data: Mapping[str, Any], key: str, allowed: set[str] | None = None) -> dict[str, Any]:
    value = data.get(key, {}) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"[{key}] must be a table")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown key(s) in [{key}]: {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def parse_config(data: Mapping[str, Any], *, out: str | None = None) -> Sweep:
    """Validate a sweep file's contents (every unknown key or bad value is an error naming it)."""
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) in the sweep file: {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}"
        )
    for key in ("problems", "optimizers"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ValueError(f"{key} must be a non-empty list")
    name = data.get("protocol", "fair")
    if name not in protocols.PROTOCOLS:
        raise ValueError(f"protocol must be one of {protocols.PROTOCOLS}, got {name!r}")
    optimizers = [str(o) for o in data["optimizers"]]
    extra = _table(data, "hyperparameters")
    if name == "fair":
        options = _table(
            data,
            "fair",
            {"lrs", "tune_seeds", "memory_search", "topCs", "decays", "memory", "sample_seed"},
        )
        protocol = protocols.fair(
            optimizers, seeds=data.get("seeds", protocols.FAIR_SEEDS), extra=extra, **options
        )
    elif name == "paper":
        options = _table(data, "paper", {"lrs", "decays", "topCs", "kappa"})
        protocol = protocols.paper(
            optimizers, seeds=data.get("seeds", protocols.PAPER_SEEDS), extra=extra, **options
        )
    else:
        given = _table(data, "fixed", set(optimizers))
        configs = protocols.default_configs(optimizers)
        for label in optimizers:
            configs[label] = {
                **configs[label],
                **protocols.extra_hyperparameters(extra, label),
                **given.get(label, {}),
            }
        protocol = protocols.fixed(configs, seeds=data.get("seeds", protocols.FAIR_SEEDS))
    executor = {**DEFAULT_EXECUTOR, **_table(data, "executor", set(DEFAULT_EXECUTOR))}
    if executor["kind"] not in EXECUTORS:
        raise ValueError(f"executor kind must be one of {EXECUTORS}, got {executor['kind']!r}")
    for key in ("workers", "threads"):
        value = executor[key]
        if not (value is None and key == "threads") and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"executor {key} must be an integer >= 1, got {value!r}")
    evals = data.get("evals_per_epoch", 1)
    if not isinstance(evals, int) or evals < 1:
        raise ValueError(f"evals_per_epoch must be an integer >= 1, got {evals!r}")
    destination = out or data.get("out")
    if not destination:
        raise ValueError("no output folder: set `out` in the sweep file or pass --out")
    sweep = Sweep(
        problems=[str(p) for p in data["problems"]],
        protocol=protocol,
        out=Path(destination),
        size=str(data.get("size", "cpu")),
        overrides=_table(data, "overrides"),
        evals_per_epoch=evals,
        data_dir=data.get("data_dir"),
        executor=executor,
        submitit=_table(data, "submitit"),
        sinks=_table(data, "sinks"),
    )
    from critgrad.bench import sinks as sink_module

    sink_module.check_config(sweep.sinks)
    return sweep


# ---- checks before anything runs ----------------------------------------------------------------


def preflight(sweep: Sweep) -> None:
    """Fail before the first run: unknown problem or size, missing data, bad hyperparameters."""
    import torch

    from critgrad.bench.datasets import locate
    from critgrad.bench.problems import get_problem

    stray = sorted(
        key
        for key, value in sweep.overrides.items()
        if isinstance(value, Mapping) and key not in sweep.problems
    )
    if stray:
        raise ValueError(
            f"overrides for {stray}, which the sweep does not run; its problems: "
            f"{', '.join(sweep.problems)}"
        )
    for name in sweep.problems:
        spec = get_problem(name)
        if sweep.size not in spec.sizes:
            raise ValueError(
                f"size must be one of {sorted(spec.sizes)} for {name}, got {sweep.size!r}"
            )
        unknown = sorted(set(sweep.problem_overrides(name)) - set(spec.sizes[sweep.size]))
        if unknown:  # a typo would otherwise be ignored silently
            raise ValueError(
                f"unknown setting(s) {unknown} for problem {name}; its settings: "
                f"{', '.join(sorted(spec.sizes[sweep.size]))}"
            )
        with contextlib.suppress(
            KeyError
        ):  # a loader without a locator reports missing data itself
            locate(spec.dataset, sweep.data_dir)
        for label in sweep.protocol.configs:  # e.g. saga, only on finite-sum problems
            optimizer_labels.check_problem(label, name)
    probe = [torch.nn.Parameter(torch.zeros(2))]
    for label, configs in sweep.protocol.configs.items():
        for config in configs:
            try:
                optimizer_labels.create(label, probe, config)
            except (TypeError, ValueError) as error:
                raise ValueError(f"optimizer {label} with {dict(config)}: {error}") from None


# ---- execution ----------------------------------------------------------------------------------


def execute_one(
    spec_data: Mapping[str, Any],
    run_dir: str,
    data_dir: str | None = None,
    sink_config: Mapping[str, Any] | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run one spec and write its record; returns a short summary. Runs in workers too."""
    import torch

    from critgrad.bench import runner

    spec = RunSpec.from_dict(spec_data)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        record = runner.run(spec, data_dir=data_dir, progress=progress, sink_config=sink_config)
    finally:  # inline runs share the caller's process: leave its setting as it was
        torch.set_num_threads(previous_threads)
    path = records.write_record(run_dir, record)
    return {"key": spec.key(), "path": str(path), "wall_seconds": record["wall_seconds"]}


def _safe_execute_one(*args) -> dict[str, Any]:
    """execute_one that reports an error instead of raising (one bad run must not stop a pool)."""
    try:
        return execute_one(*args)
    except Exception as error:
        return {
            "key": RunSpec.from_dict(args[0]).key(),
            "error": f"{type(error).__name__}: {' '.join(str(error).split())}",
        }


@dataclasses.dataclass
class Outcome:
    ran: int = 0
    skipped: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)


def pending(
    specs: Sequence[RunSpec], run_dir: str | os.PathLike, log: Log = _stderr
) -> tuple[list[RunSpec], int]:
    """Specs without a finished record (broken records are reported and counted as pending)."""
    todo, skipped, seen = [], 0, set()
    for spec in specs:
        if spec.key() in seen:
            continue
        seen.add(spec.key())
        done, broken = records.finished(run_dir, spec)
        if done:
            skipped += 1
        else:
            if broken:
                log(f"broken record, running it again: {broken}")
            todo.append(spec)
    return todo, skipped


def execute(
    specs: Sequence[RunSpec],
    run_dir: str | os.PathLike,
    *,
    kind: str = "inline",
    workers: int = 1,
    threads: int | None = 1,
    data_dir: str | None = None,
    sink_config: Mapping[str, Any] | None = None,
    submitit_params: Mapping[str, Any] | None = None,
    progress: bool = False,
    log: Log = _stderr,
    outcome: Outcome | None = None,
) -> Outcome:
    """Run the specs that have no record yet, with the chosen executor.

    Counts go into ``outcome`` (a new one by default) as runs finish, so that a caller still has
    them when the sweep is interrupted.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")
    run_dir = str(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    todo, skipped = pending(specs, run_dir, log)
    outcome = outcome if outcome is not None else Outcome()
    outcome.skipped += skipped
    if not todo:
        return outcome
    arguments = [
        (spec.to_dict(), run_dir, data_dir, dict(sink_config or {}), threads) for spec in todo
    ]
    bar = _bar(progress and len(todo) > 1, len(todo), f"runs ({skipped} already done)")

    def collect(summary: Mapping[str, Any]) -> None:
        if "error" in summary:
            outcome.failed.append(f"{summary['key']}: {summary['error']}")
            log(f"run failed: {summary['key']}: {summary['error']}")
        else:
            outcome.ran += 1
        bar.update(1)

    try:
        if kind == "inline" or (kind == "local" and (workers or 1) <= 1):
            for args in arguments:
                # In this process a second bar can show each run's steps (tqdm nests them).
                collect(_safe_execute_one(*args, progress))
        elif kind == "local":
            for summary in _pool_run(arguments, workers):
                collect(summary)
        else:
            for summary in _submitit_run(arguments, run_dir, submitit_params or {}):
                collect(summary)
    finally:
        bar.close()
    return outcome


def _ignore_interrupts() -> None:
    # Workers leave Ctrl-C to the parent, which stops them all (see _pool_run).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _execute_packed(args: tuple) -> dict[str, Any]:
    return _safe_execute_one(*args)


def _pool_run(arguments: list[tuple], workers: int):
    """Yield run summaries as worker processes finish them; Ctrl-C stops the workers at once
    (a run in progress is lost, its record never half-written) and re-raises."""
    context = multiprocessing.get_context("spawn")  # fork after torch threads can hang
    pool = context.Pool(workers, initializer=_ignore_interrupts)
    try:
        yield from pool.imap_unordered(_execute_packed, arguments, chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _submitit_run(
    arguments: list[tuple], run_dir: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    try:
        import submitit
    except ImportError:
        raise RuntimeError(
            "the submitit executor needs `pip install submitit` (or critgrad[cluster])"
        ) from None
    params = dict(params)
    cluster = params.pop("cluster", None)  # None: SLURM when available
    executor = submitit.AutoExecutor(folder=str(Path(run_dir) / "submitit" / "%j"), cluster=cluster)
    if params:
        executor.update_parameters(**params)
    columns = list(zip(*arguments))
    jobs = executor.map_array(_safe_execute_one, *columns)
    summaries = []
    for job, args in zip(jobs, arguments):
        try:
            summaries.append(job.result())
        except Exception as error:
            summaries.append(
                {
                    "key": RunSpec.from_dict(args[0]).key(),
                    "error": f"job {job.job_id}: {type(error).__name__}: "
                    f"{' '.join(str(error).split())[:300]}",
                }
            )
    return summaries


def _bar(enabled: bool, total: int, description: str):
    from critgrad.bench.runner import _progress_bar

    return _progress_bar(enabled, total, description, unit="run")


# ---- the staged sweep ---------------------------------------------------------------------------


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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_manifest(sweep: Sweep, sessions: list[dict[str, Any]], command: str | None) -> None:
    from critgrad.bench.runner import machine_info

    records.atomic_write_json(
        sweep.out / records.MANIFEST_NAME,
        {
            "protocol": sweep.protocol.to_dict(),
            "problems": sweep.problems,
            "size": sweep.size,
            "overrides": {p: sweep.problem_overrides(p) for p in sweep.problems},
            "evals_per_epoch": sweep.evals_per_epoch,
            "executor": sweep.executor,
            "machine": machine_info(),
            "command": command,
            "sessions": sessions,
            "wall_seconds": sum(s.get("wall_seconds") or 0.0 for s in sessions),
        },
    )


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(run_dir) / records.MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is broken ({error}); move it away to report without it") from None


def run_sweep(
    sweep: Sweep, *, progress: bool = True, command: str | None = None, log: Log = _stderr
) -> Outcome:
    """Both stages for every problem; resumable; the manifest records each session's wall time."""
    preflight(sweep)
    previous = read_manifest(sweep.out) if (sweep.out / records.MANIFEST_NAME).exists() else None
    sessions = list(previous["sessions"]) if previous else []
    if previous and previous["protocol"]["configs"] != sweep.protocol.to_dict()["configs"]:
        raise ValueError(
            f"{sweep.out} holds a sweep with another protocol or grid; use a new output folder"
        )
    session = {"started": _now(), "finished": None, "wall_seconds": None, "ran": 0, "skipped": 0}
    sessions.append(session)
    write_manifest(sweep, sessions, command)
    started = time.perf_counter()
    outcome = Outcome()
    settings = dict(
        kind=sweep.executor["kind"],
        workers=sweep.executor["workers"],
        threads=sweep.executor["threads"],
        data_dir=sweep.data_dir,
        sink_config=sweep.sinks,
        submitit_params=sweep.submitit,
        progress=progress,
        log=log,
    )
    try:
        # Problem by problem, both stages each: a sweep stopped early leaves whole problems done.
        for problem in sweep.problems:
            overrides = sweep.problem_overrides(problem)
            tuning = sweep.protocol.tuning_specs(
                problem, sweep.size, overrides, sweep.evals_per_epoch
            )
            execute(tuning, sweep.out, outcome=outcome, **settings)
            stored, _ = records.read_records(sweep.out)
            mine = matching_records(stored, problem, sweep.size, overrides, sweep.evals_per_epoch)
            planned = {spec.key() for spec in tuning}
            final = [
                spec for spec in final_specs(sweep, problem, mine) if spec.key() not in planned
            ]  # counted once, in stage 1
            execute(final, sweep.out, outcome=outcome, **settings)
    finally:
        session.update(
            finished=_now(),
            wall_seconds=time.perf_counter() - started,
            ran=outcome.ran,
            skipped=outcome.skipped,
            failed=len(outcome.failed),
        )
        write_manifest(sweep, sessions, command)
    return outcome
