"""Hooks for the harness's child processes in tests: events to watch them, a place to hold them.

A test starts ``critgrad`` in a real process (and its pool workers, spawned) with ``PYTHONPATH``
pointing at a folder whose ``sitecustomize.py`` imports this module (see :func:`environment`), so
that every process of the tree is hooked, workers included:

* ``CRITGRAD_TEST_EVENTS``: a file to which each process appends ``<pid> start <key>`` when a run
  starts, ``<pid> hold <key>`` when it holds, ``<pid> end <key>`` when the run returns;
* ``CRITGRAD_TEST_HOLD``: a file; the process waits (once, at the place below) until it exists,
  after logging ``hold``: the test knows where the process is, and kills it there or lets it go;
* ``CRITGRAD_TEST_HOLD_AT``: ``step:R:S`` holds right after optimizer step S of the R-th run this
  process starts (in the middle of training); ``write`` holds inside the atomic write of a record,
  its temporary file complete and synced, before it is moved into place;
* ``CRITGRAD_TEST_QUICK``: the claims' heartbeat and the sweep's polling every 0.1 s instead of
  every 30 s / 2 s, so that a killed session's wall time and a waiting sweep show up at once.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

EVENTS = os.environ.get("CRITGRAD_TEST_EVENTS")
HOLD = os.environ.get("CRITGRAD_TEST_HOLD")
HOLD_AT = os.environ.get("CRITGRAD_TEST_HOLD_AT", "")


def environment(folder: Path, events: Path, hold: Path | None = None, at: str = "") -> dict:
    """The environment of a hooked child: writes ``folder/sitecustomize.py``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text("import child_hooks\n")
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(here), str(here.parents[1])])
    env.update(CRITGRAD_TEST_EVENTS=str(events), CRITGRAD_TEST_QUICK="1")
    if hold is not None:
        env.update(CRITGRAD_TEST_HOLD=str(hold), CRITGRAD_TEST_HOLD_AT=at)
    return env


def read_events(path: Path) -> list[tuple[int, str, str]]:
    """(pid, kind, key) of each event so far."""
    if not path.exists():
        return []
    return [
        (int(pid), kind, key)
        for pid, kind, key in (line.split() for line in path.read_text().splitlines())
    ]


def wait_for(condition, timeout: float = 120.0, what: str = "a condition") -> None:
    """Poll ``condition()`` every 50 ms; fail the test (not hang it) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _log(kind: str, key: str) -> None:
    with open(EVENTS, "a") as stream:  # O_APPEND: whole lines from several processes
        stream.write(f"{os.getpid()} {kind} {key}\n")


def _hold(key: str) -> None:
    _log("hold", key)
    while not os.path.exists(HOLD):
        time.sleep(0.02)


def _install() -> None:
    from critgrad.bench import claims, executors, optimizer_labels, runner

    if os.environ.get("CRITGRAD_TEST_QUICK"):
        claims.HEARTBEAT = 0.1
        executors.POLL_SECONDS = 0.1
    real_run, real_create, real_fsync = runner.run, optimizer_labels.create, os.fsync
    current = {"key": "?", "runs": 0}

    def run(spec, **kwargs):
        current["key"] = spec.run_id()
        current["runs"] += 1
        _log("start", spec.run_id())
        record = real_run(spec, **kwargs)
        _log("end", spec.run_id())
        return record

    def create(label, model, hyperparameters):
        optimizer = real_create(label, model, hyperparameters)
        if not (HOLD and HOLD_AT.startswith("step:")):
            return optimizer
        run_number, step_number = map(int, HOLD_AT.split(":")[1:])
        step, count = optimizer.step, [0]

        def held_step(*args, **kwargs):
            result = step(*args, **kwargs)
            count[0] += 1
            if current["runs"] == run_number and count[0] == step_number:
                _hold(current["key"])
            return result

        optimizer.step = held_step
        return optimizer

    def fsync(handle):
        real_fsync(handle)
        with contextlib.suppress(OSError):
            name = os.path.basename(os.readlink(f"/proc/self/fd/{handle}"))
            if name.endswith(".tmp") and "__" in name:  # a record's temporary, not the manifest
                _hold(current["key"])

    runner.run = run
    optimizer_labels.create = create
    if HOLD and HOLD_AT == "write":
        os.fsync = fsync


class _AfterExecutorsImport(importlib.abc.MetaPathFinder):
    """Installs the hooks when ``critgrad.bench.executors`` is first imported: the processes that
    never import it (multiprocessing's resource tracker) do not pay for importing torch."""

    def find_spec(self, name, path, target=None):
        if name != "critgrad.bench.executors":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _install()

        spec.loader.exec_module = exec_module
        return spec


if EVENTS:
    sys.meta_path.insert(0, _AfterExecutorsImport())
