"""Executors: run a list of specs into a run directory, each exactly once, with the chosen back end.

``inline`` (this process), ``local`` (a process pool; the default for sweeps) and ``submitit``
(SLURM through submitit, as the paper's authors ran; ``cluster = "local"`` or ``"debug"`` runs the
same code path on this machine). A spec whose record is already in the directory is skipped (the
file name is the spec's run id), so a killed sweep resumes where it stopped; a record that does not
parse is reported and run again. Every run is claimed first (:mod:`critgrad.bench.claims`), so that
sweeps sharing a directory train each run once and wait for each other's records.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import claims, records, runner, values
from critgrad.bench.record_format import RunSpec

EXECUTORS = ("inline", "local", "submitit")
# One torch thread per run: MNIST-scale models gain nothing from more, and on a shared machine
# several multi-threaded processes slow each other down by an order of magnitude (measured here).
DEFAULT_EXECUTOR = {"kind": "local", "workers": 2, "threads": 1}

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


def check_executor(executor: Mapping[str, Any]) -> dict[str, Any]:
    """kind, workers and threads of ``[executor]``, checked."""
    executor = {**DEFAULT_EXECUTOR, **executor}
    values.string("executor kind", executor["kind"], EXECUTORS)
    values.integer("executor workers", executor["workers"], minimum=1)
    if executor["threads"] is not None:
        values.integer("executor threads", executor["threads"], minimum=1)
    return executor


def check_submitit(params: Mapping[str, Any]) -> dict[str, Any]:
    params = values.plain(dict(params), "submitit")
    cluster = params.get("cluster")
    if cluster is not None:
        values.string("submitit cluster", cluster, SUBMITIT_CLUSTERS)
    return params


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

    spec = RunSpec.from_dict(spec_data)
    path = records.record_path(run_dir, spec)
    claimed, owner = claims.claim(path, lambda: records.finished(run_dir, spec)[0])
    if not claimed:
        if owner is None:
            return {"run_id": spec.run_id(), "done_elsewhere": True}
        return {"run_id": spec.run_id(), "claimed_by": claims.describe(owner)}
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
        "run_id": spec.run_id(),
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
            "run_id": RunSpec.from_dict(args[0]).run_id(),
            "error": f"{type(error).__name__}: {' '.join(str(error).split())}",
        }


@dataclasses.dataclass
class Outcome:
    """What :func:`execute` did, counted as runs finish."""

    ran: int = 0  # runs that finished here, diverged ones included
    skipped: int = 0  # runs whose record was there before
    failed: list[str] = dataclasses.field(default_factory=list)
    diverged: list[str] = dataclasses.field(default_factory=list)  # one line per diverged run
    elsewhere: int = 0  # runs another sweep in the same directory finished while this one waited

    def summary(self, run_dir: str | os.PathLike) -> str:
        """The counts in one line."""
        diverged = f" ({len(self.diverged)} diverged)" if self.diverged else ""
        elsewhere = f", {self.elsewhere} done by another sweep" if self.elsewhere else ""
        return (
            f"{self.ran} run(s) done{diverged}, {self.skipped} already finished{elsewhere}, "
            f"{len(self.failed)} failed; records in {run_dir}"
        )


# Seconds between looks at runs that another sweep has claimed (their records, their claims).
POLL_SECONDS = 2.0


def pending(
    specs: Sequence[RunSpec], run_dir: str | os.PathLike, log: Log = log_to_stderr
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
    log: Log = log_to_stderr,
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
                waiting.append(next(s for s in mine if s.run_id() == summary["run_id"]))
            elif summary.get("done_elsewhere"):
                outcome.elsewhere += 1
            elif "error" in summary:
                outcome.failed.append(f"{summary['run_id']}: {summary['error']}")
                log(f"run failed: {summary['run_id']}: {summary['error']}")
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
                    "run_id": RunSpec.from_dict(args[0]).run_id(),
                    "error": f"job {job.job_id}: {type(error).__name__}: "
                    f"{' '.join(str(error).split())[:300]}",
                }
            )
    return summaries


def _bar(enabled: bool, total: int, description: str):
    return runner.progress_bar(enabled, total, description, unit="run")
