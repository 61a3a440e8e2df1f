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
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import claims, optimizer_labels, protocols, records, scoring, values
from critgrad.bench.protocols import Protocol
from critgrad.bench.record_format import RunSpec

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
    value = values.table(key, data.get(key))
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise values.ConfigError(
                f"unknown key(s) in [{key}]: {unknown}; allowed: {sorted(allowed)}"
            )
    return value


SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


def _check_executor(executor: Mapping[str, Any]) -> dict[str, Any]:
    """kind, workers and threads of ``[executor]``, checked."""
    executor = {**DEFAULT_EXECUTOR, **executor}
    values.string("executor kind", executor["kind"], EXECUTORS)
    values.integer("executor workers", executor["workers"], minimum=1)
    if executor["threads"] is not None:
        values.integer("executor threads", executor["threads"], minimum=1)
    return executor


def _check_submitit(params: Mapping[str, Any]) -> dict[str, Any]:
    params = values.plain(dict(params), "submitit")
    cluster = params.get("cluster")
    if cluster is not None:
        values.string("submitit cluster", cluster, SUBMITIT_CLUSTERS)
    return params


def parse_config(data: Mapping[str, Any], *, out: str | None = None) -> Sweep:
    """Validate a sweep file's contents: every unknown key, value of the wrong type or out of range
    is a :class:`~critgrad.bench.values.ConfigError` naming it (the problems' own settings are
    checked by :func:`preflight`, against each problem's declarations)."""
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise values.ConfigError(
            f"unknown key(s) in the sweep file: {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}"
        )
    for key in ("problems", "optimizers"):
        values.strings(key, data.get(key))
    name = values.string("protocol", data.get("protocol", "fair"), protocols.PROTOCOLS)
    optimizers = list(data["optimizers"])
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
                **values.table(f"fixed.{label}", given.get(label)),
            }
        protocol = protocols.fixed(configs, seeds=data.get("seeds", protocols.FAIR_SEEDS))
    executor = _check_executor(_table(data, "executor", set(DEFAULT_EXECUTOR)))
    evals = values.integer("evals_per_epoch", data.get("evals_per_epoch", 1), minimum=1)
    destination = out if out is not None else data.get("out")
    if destination is None:
        raise values.ConfigError("no output folder: set `out` in the sweep file or pass --out")
    sweep = Sweep(
        problems=list(data["problems"]),
        protocol=protocol,
        out=Path(values.path("out", destination)),
        size=values.string("size", data.get("size", "cpu")),
        overrides=values.plain(_table(data, "overrides"), "overrides"),
        evals_per_epoch=evals,
        data_dir=values.path("data_dir", data.get("data_dir"), optional=True),
        executor=executor,
        submitit=_check_submitit(_table(data, "submitit")),
        sinks=_table(data, "sinks"),
    )
    from critgrad.bench import sinks as sink_module

    sink_module.check_config(sweep.sinks)
    return sweep


# ---- checks before anything runs ----------------------------------------------------------------


def preflight(sweep: Sweep) -> None:
    """Every check that can fail before the first run, cheapest first, nothing written until all
    passed: problem names, sizes and settings (against each problem's declarations), the
    optimizers' hyperparameters (an optimizer built and stepped once on a probe), the executor,
    then the data (present and intact), and last the output folder (created, and written to once).
    Values are normalised in place (numpy scalars become Python numbers)."""
    from critgrad.bench.datasets import verify
    from critgrad.bench.problems import get_problem

    values.strings("problems", sweep.problems)
    out = os.fspath(sweep.out) if isinstance(sweep.out, os.PathLike) else sweep.out
    sweep.out = Path(values.path("out", out))
    sweep.overrides = values.plain(values.table("overrides", sweep.overrides), "overrides")
    stray = sorted(
        key
        for key, value in sweep.overrides.items()
        if isinstance(value, Mapping) and key not in sweep.problems
    )
    if stray:
        raise values.ConfigError(
            f"overrides for {stray}, which the sweep does not run; its problems: "
            f"{', '.join(sweep.problems)}"
        )
    specs = []
    for name in sweep.problems:
        spec = get_problem(name)
        if sweep.size not in spec.sizes:
            raise values.ConfigError(
                f"size must be one of {sorted(spec.sizes)} for {name}, got {sweep.size!r}"
            )
        spec.settings(sweep.size, sweep.problem_overrides(name))
        for label in sweep.protocol.configs:  # e.g. saga, only on finite-sum problems
            optimizer_labels.check_problem(label, name)
        specs.append(spec)
    sweep.evals_per_epoch = values.integer("evals_per_epoch", sweep.evals_per_epoch, minimum=1)
    checked = {
        label: [optimizer_labels.check_hyperparameters(label, config) for config in configs]
        for label, configs in sweep.protocol.configs.items()
    }
    sweep.protocol = dataclasses.replace(sweep.protocol, configs=checked)
    sweep.executor = _check_executor(sweep.executor)
    sweep.submitit = _check_submitit(sweep.submitit)
    from critgrad.bench import sinks as sink_module

    sink_module.check_config(sweep.sinks)
    values.path("data_dir", sweep.data_dir, optional=True)
    for dataset in dict.fromkeys(spec.dataset for spec in specs):
        with contextlib.suppress(KeyError):  # a loader without a locator reports missing data
            verify(dataset, sweep.data_dir)  # missing or corrupt: once here, not in every run
    writable_folder(sweep.out)


def writable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and write a file into it once; ConfigError naming the folder and
    the reason (a file in the way, no permission, a read-only file system) otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".critgrad-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise values.ConfigError(f"{what} {folder} cannot be written: {reason}") from None
    return folder


# ---- execution ----------------------------------------------------------------------------------


def execute_one(
    spec_data: Mapping[str, Any],
    run_dir: str,
    data_dir: str | None = None,
    sink_config: Mapping[str, Any] | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Claim one spec, run it and write its record; returns a short summary. Runs in workers and
    submitit jobs too. A spec whose record exists meanwhile, or that another live process has
    claimed, is not run: the summary says ``done_elsewhere`` or ``claimed_by``."""
    import torch

    from critgrad.bench import runner

    spec = RunSpec.from_dict(spec_data)
    path = records.record_path(run_dir, spec)
    claimed, owner = claims.claim(path, lambda: records.finished(run_dir, spec)[0])
    if not claimed:
        if owner is None:
            return {"key": spec.run_id(), "done_elsewhere": True}
        return {"key": spec.run_id(), "claimed_by": claims.describe(owner)}
    previous_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        try:
            record = runner.run(spec, data_dir=data_dir, progress=progress, sink_config=sink_config)
        finally:  # inline runs share the caller's process: leave its setting as it was
            torch.set_num_threads(previous_threads)
        path = records.write_record(run_dir, record)
    finally:
        claims.release(path)
    return {
        "key": spec.run_id(),
        "path": str(path),
        "wall_seconds": record["wall_seconds"],
        "diverged": _divergence_words(spec, record),
    }


def _divergence_words(spec: RunSpec, record: Mapping[str, Any]) -> str | None:
    """A line for the log when the run diverged, else None."""
    if not record.get("diverged"):
        return None
    where = record.get("divergence") or {}
    return (
        f"{spec.problem} {spec.optimizer} {dict(spec.hyperparameters)} seed {spec.seed} "
        f"diverged at step {where.get('step', '?')} ({where.get('cause', 'non-finite values')})"
    )


def _safe_execute_one(*args) -> dict[str, Any]:
    """execute_one that reports an error instead of raising (one bad run must not stop a pool)."""
    try:
        return execute_one(*args)
    except Exception as error:
        return {
            "key": RunSpec.from_dict(args[0]).run_id(),
            "error": f"{type(error).__name__}: {' '.join(str(error).split())}",
        }


@dataclasses.dataclass
class Outcome:
    ran: int = 0  # runs that finished here, diverged ones included
    skipped: int = 0  # runs whose record was there before
    failed: list[str] = dataclasses.field(default_factory=list)
    diverged: list[str] = dataclasses.field(default_factory=list)  # one line per diverged run
    elsewhere: int = 0  # runs another sweep in the same directory finished while this one waited


# Seconds between looks at runs that another sweep has claimed (their records, their claims).
POLL_SECONDS = 2.0


def pending(
    specs: Sequence[RunSpec], run_dir: str | os.PathLike, log: Log = _stderr
) -> tuple[list[RunSpec], int]:
    """Specs without a finished record (broken records are reported and counted as pending)."""
    todo, skipped, seen = [], 0, set()
    for spec in specs:
        if spec.run_id() in seen:
            continue
        seen.add(spec.run_id())
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
    on_result: Callable[[], None] | None = None,
) -> Outcome:
    """Run the specs that have no record yet, with the chosen executor, each exactly once across
    every sweep working in ``run_dir``: a spec another live process has claimed is left to it, and
    this call returns when its record is there (or runs it, when its owner died without one).

    Counts go into ``outcome`` (a new one by default) as runs finish, so that a caller still has
    them when the sweep is interrupted; ``on_result`` is called after each.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")
    run_dir = str(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    todo, skipped = pending(specs, run_dir, log)
    outcome = outcome if outcome is not None else Outcome()
    outcome.skipped += skipped
    waited: set[str] = set()
    while todo:
        waiting = [spec for spec in todo if _held_elsewhere(run_dir, spec)]
        mine = [spec for spec in todo if spec not in waiting]
        for summary in _dispatch(
            mine,
            run_dir,
            kind=kind,
            workers=workers,
            threads=threads,
            data_dir=data_dir,
            sink_config=sink_config,
            submitit_params=submitit_params,
            progress=progress,
            description=f"runs ({outcome.skipped} already done)",
        ):
            if "claimed_by" in summary:
                waiting.append(next(s for s in mine if s.run_id() == summary["key"]))
            elif summary.get("done_elsewhere"):
                outcome.elsewhere += 1
            elif "error" in summary:
                outcome.failed.append(f"{summary['key']}: {summary['error']}")
                log(f"run failed: {summary['key']}: {summary['error']}")
            else:
                outcome.ran += 1
                if summary.get("diverged"):
                    outcome.diverged.append(summary["diverged"])
                    log(f"run diverged: {summary['diverged']}")
            if on_result is not None:
                on_result()
        if not waiting:
            break
        fresh = [spec for spec in waiting if spec.run_id() not in waited]
        if fresh:
            owners = sorted(
                {claims.describe(o) for o in map(_holder, [run_dir] * len(fresh), fresh) if o}
            )
            by = f" ({', '.join(owners)})" if owners else ""
            log(f"{len(fresh)} run(s) claimed by another sweep{by}; waiting for their records")
            waited.update(spec.run_id() for spec in fresh)
        todo = _wait_for(waiting, run_dir, outcome, on_result)
    return outcome


def _holder(run_dir: str, spec: RunSpec) -> dict[str, Any] | None:
    return claims.holder(records.record_path(run_dir, spec))


def _held_elsewhere(run_dir: str, spec: RunSpec) -> bool:
    owner = _holder(run_dir, spec)
    return owner is not None and not (
        owner.get("host") == claims.HOST and owner.get("pid") == os.getpid()
    )


def _wait_for(
    waiting: list[RunSpec],
    run_dir: str,
    outcome: Outcome,
    on_result: Callable[[], None] | None,
) -> list[RunSpec]:
    """Wait until each spec has its record (counted as done elsewhere) or no live owner (returned,
    to be run here)."""
    retry: list[RunSpec] = []
    while waiting:
        still = []
        for spec in waiting:
            if records.finished(run_dir, spec)[0]:
                outcome.elsewhere += 1
                if on_result is not None:
                    on_result()
            elif _holder(run_dir, spec) is None:
                retry.append(spec)  # its owner ended without a record: failed, or killed
            else:
                still.append(spec)
        waiting = still
        if waiting:
            time.sleep(POLL_SECONDS)
    return retry


def _dispatch(
    specs: list[RunSpec],
    run_dir: str,
    *,
    kind: str,
    workers: int,
    threads: int | None,
    data_dir: str | None,
    sink_config: Mapping[str, Any] | None,
    submitit_params: Mapping[str, Any] | None,
    progress: bool,
    description: str,
):
    """Yield each spec's summary as the executor finishes it."""
    if not specs:
        return
    arguments = [
        (spec.to_dict(), run_dir, data_dir, dict(sink_config or {}), threads) for spec in specs
    ]
    bar = _bar(progress and len(specs) > 1, len(specs), description)
    try:
        if kind == "inline" or (kind == "local" and (workers or 1) <= 1):
            for args in arguments:
                # In this process a second bar can show each run's steps (tqdm nests them).
                yield _safe_execute_one(*args, progress)
                bar.update(1)
        elif kind == "local":
            for summary in _pool_run(arguments, workers):
                yield summary
                bar.update(1)
        else:
            for summary in _submitit_run(arguments, run_dir, submitit_params or {}):
                yield summary
                bar.update(1)
    finally:
        bar.close()


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
                    "key": RunSpec.from_dict(args[0]).run_id(),
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


def write_manifest(sweep: Sweep, sessions: list[dict[str, Any]], command: str | None) -> None:
    """Write ``sweep``'s manifest with these sessions (replacing the file; sessions of a running
    sweep go through :class:`critgrad.bench.sessions.Session`, which merges under the lock)."""
    from critgrad.bench import sessions as session_module

    manifest = {**session_module.plan(sweep, command), "sessions": sessions}
    manifest["wall_seconds"] = session_module.busy_seconds(sessions)
    records.atomic_write_json(sweep.out / records.MANIFEST_NAME, manifest)


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The sweep manifest of ``run_dir`` (None when there is none); a ValueError naming the file
    when it does not parse or lacks what the report and the sweep read."""
    path = Path(run_dir) / records.MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        problem = _manifest_problem(manifest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        problem = " ".join(str(error).split())
    if problem is not None:
        raise ValueError(f"{path} is broken ({problem}); move it away to report without it")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return "not a table"
    for key, kind in (
        ("protocol", dict),
        ("problems", list),
        ("size", str),
        ("overrides", dict),
        ("evals_per_epoch", int),
        ("sessions", list),
    ):
        if not isinstance(manifest.get(key), kind):
            return f"missing or bad field {key!r}"
    try:
        Protocol.from_dict(manifest["protocol"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return f"missing or bad field 'protocol' ({type(error).__name__}: {error})"
    if not all(isinstance(s, dict) for s in manifest["sessions"]):
        return "field 'sessions' should be a list of tables"
    return None


def run_sweep(
    sweep: Sweep, *, progress: bool = True, command: str | None = None, log: Log = _stderr
) -> Outcome:
    """Both stages for every problem; resumable; safe to run several times at once in one
    directory (see :mod:`critgrad.bench.claims`); the manifest keeps each session's wall time."""
    from critgrad.bench.sessions import Session

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
            execute(tuning, sweep.out, outcome=outcome, **settings)
            stored, _ = records.read_records(sweep.out)
            mine = matching_records(stored, problem, sweep.size, overrides, sweep.evals_per_epoch)
            planned = {spec.run_id() for spec in tuning}
            final = [
                spec for spec in final_specs(sweep, problem, mine) if spec.run_id() not in planned
            ]  # counted once, in stage 1
            execute(final, sweep.out, outcome=outcome, **settings)
        status = "finished"
    finally:
        session.update(outcome, status=status)
    return outcome
