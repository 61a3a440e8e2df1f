"""The sweep manifest (``sweep.json``): the plan of a run directory and every session that ran it.

:func:`read_manifest` is what the report reads; :class:`Session` is how a running sweep writes.

A *session* is one ``critgrad sweep`` (or ``run``, ``main``) process working in the directory. The
manifest is shared by every session, concurrent ones included, so it is only ever changed as a
read-merge-write under the directory lock (:func:`critgrad.bench.claims.directory_lock`): no session
is lost when two write at once.

* A session is added when it starts, refreshed after each run it finishes (its wall time so far
  and its counts), and closed when it ends (``finished``, status "finished" or "interrupted"). A
  session killed outright keeps the wall time of its last refresh; the next session to start marks
  it "killed". The manifest's ``wall_seconds`` is the time during which at least one session was
  working: the union of the sessions' intervals (concurrent sessions are not counted twice).
* The plan must stay one plan: a session whose protocol (configurations, tuning seeds, selection
  rules), size, evaluations per epoch, or settings of a problem already in the directory differ
  from the manifest's is refused before anything runs, naming what differs; records of two plans
  would otherwise mix in one table. More seeds and more problems are the same plan extended.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import claims, protocols, records, values
from critgrad.bench.runner import machine_info


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _unix(session: Mapping[str, Any]) -> float | None:
    if isinstance(session.get("started_unix"), (int, float)):
        return float(session["started_unix"])
    try:  # sessions written before started_unix existed
        return datetime.datetime.fromisoformat(session["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def busy_seconds(sessions: Sequence[Mapping[str, Any]]) -> float:
    """The time during which at least one session worked: the union of their intervals."""
    intervals, unplaced = [], 0.0
    for session in sessions:
        wall = session.get("wall_seconds")
        if not isinstance(wall, (int, float)) or wall <= 0:
            continue
        start = _unix(session)
        if start is None:
            unplaced += wall
        else:
            intervals.append((start, start + wall))
    total, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total + unplaced


def plan(sweep, command: str | None) -> dict[str, Any]:
    """The manifest fields that describe ``sweep`` (a :class:`critgrad.bench.sweep.Sweep`; without
    its sessions)."""
    described = {
        "protocol": sweep.protocol.to_dict(),
        "problems": list(sweep.problems),
        "size": sweep.size,
        "overrides": {p: sweep.problem_overrides(p) for p in sweep.problems},
        "evals_per_epoch": sweep.evals_per_epoch,
        "executor": sweep.executor,
        "machine": machine_info(),
        "command": command,
    }
    return json.loads(json.dumps(described))  # as read back from the file: lists, not tuples


def _differences(previous: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """What makes ``new`` another plan than ``previous`` (None when it extends it)."""
    old_protocol, new_protocol = previous["protocol"], new["protocol"]
    if old_protocol.get("configs") != new_protocol["configs"]:
        return "another protocol or grid (other configurations)"
    keys = ["name", "selection_split", "selection_reduce"]
    if new_protocol["name"] != "fixed":  # one configuration each: nothing is selected on them
        keys.append("tune_seeds")
    for key in keys:
        if old_protocol.get(key) != new_protocol[key]:
            return f"another protocol or grid ({key} {old_protocol.get(key)!r} there, " + (
                f"{new_protocol[key]!r} here)"
            )
    for key in ("size", "evals_per_epoch"):
        if previous.get(key) != new[key]:
            return f"runs with {key} {previous.get(key)!r}, not {new[key]!r}"
    for problem, settings in new["overrides"].items():
        if problem in previous["overrides"] and previous["overrides"][problem] != settings:
            return (
                f"{problem} runs with other problem settings ({previous['overrides'][problem]} "
                f"there, {settings} here)"
            )
    return None


def _merge(previous: Mapping[str, Any] | None, new: dict[str, Any], out: Path) -> dict[str, Any]:
    """The manifest after a session of plan ``new`` joins ``previous``; ConfigError when the plans
    differ."""
    if previous is None:
        return {**new, "sessions": []}
    difference = _differences(previous, new)
    if difference is not None:
        raise values.ConfigError(
            f"{out} holds a sweep with {difference}; use a new output folder, or the same settings"
        )
    seeds = list(previous["protocol"]["seeds"])
    seeds += [s for s in new["protocol"]["seeds"] if s not in seeds]
    protocol = dict(new["protocol"])
    if seeds != list(protocol["seeds"]):  # another session asked for other seeds: report all
        protocol["notes"] = protocol["notes"].replace(
            protocols.seed_note(protocol["seeds"]), protocols.seed_note(seeds)
        )
        protocol["seeds"] = seeds
        if protocol["name"] == "fixed":  # its "tuning" seeds are its seeds
            protocol["tune_seeds"] = seeds
    problems = list(previous["problems"]) + [
        p for p in new["problems"] if p not in previous["problems"]
    ]
    return {
        **previous,
        **new,
        "protocol": protocol,
        "problems": problems,
        "overrides": {**previous["overrides"], **new["overrides"]},
        "sessions": list(previous["sessions"]),
    }


def _mark_killed(sessions: list[dict[str, Any]]) -> None:
    """Sessions left "running" by an owner that is gone were killed: say so (their wall time is
    that of their last refresh)."""
    for session in sessions:
        if session.get("status", "running") == "running" and session.get("finished") is None:
            owner = session.get("owner") or {}
            if (owner and not _owner_alive(session)) or not owner:
                session["status"] = "killed"


def _owner_alive(session: Mapping[str, Any]) -> bool:
    owner = session["owner"]
    if owner.get("host") == claims.HOST and isinstance(owner.get("pid"), int):
        return claims.alive(owner["pid"], owner.get("pid_started"))
    updated = session.get("updated_unix")
    return isinstance(updated, (int, float)) and time.time() - updated < claims.STALE_AFTER


class Session:
    """This process's session in a run directory's manifest (see the module docstring)."""

    def __init__(self, sweep, command: str | None = None) -> None:
        self.sweep = sweep
        self.command = command
        self.outcome = None  # the sweep's Outcome, read by the heartbeat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.id = uuid.uuid4().hex[:12]
        self.started_unix = time.time()
        self._clock = time.perf_counter()
        self.entry: dict[str, Any] = {
            "id": self.id,
            "owner": claims.me(),
            "started": _now(),
            "started_unix": self.started_unix,
            "updated_unix": self.started_unix,
            "finished": None,
            "status": "running",
            "wall_seconds": 0.0,
            "ran": 0,
            "skipped": 0,
        }

    @property
    def path(self) -> Path:
        return self.sweep.out / records.MANIFEST_NAME

    def start(self, outcome) -> list[Path]:
        """Join the manifest (refused when the directory holds another plan); clean the leftovers
        of dead writers; refresh the entry every HEARTBEAT seconds from now on, so that a session
        killed outright still counts the time it worked. Returns the files removed."""
        self.outcome = outcome
        with claims.directory_lock(self.sweep.out):
            merged = _merge(
                read_manifest(self.sweep.out), plan(self.sweep, self.command), self.sweep.out
            )
            removed = claims.clean_stale(self.sweep.out)
            _mark_killed(merged["sessions"])
            merged["sessions"].append(self.entry)
            self._write(merged)
        threading.Thread(target=self._beat, daemon=True, name="session").start()
        return removed

    def _beat(self) -> None:
        while not self._stop.wait(claims.HEARTBEAT):
            with contextlib.suppress(Exception):  # a missed refresh costs only accuracy
                self.update(self.outcome)

    def update(self, outcome, *, status: str | None = None) -> None:
        """Refresh this session's entry: wall time so far, counts, and, when ``status`` is given,
        its end."""
        if status is not None:
            self._stop.set()
        with self._lock:
            self._update(outcome, status)

    def _update(self, outcome, status: str | None) -> None:
        if status is None and self.entry["status"] != "running":
            return  # a late heartbeat after the end
        now = time.time()
        self.entry.update(
            wall_seconds=time.perf_counter() - self._clock,
            updated_unix=now,
            ran=outcome.ran,
            skipped=outcome.skipped,
            failed=len(outcome.failed),
            diverged=len(outcome.diverged),
            elsewhere=outcome.elsewhere,
        )
        if status is not None:
            self.entry.update(status=status, finished=_now())
        with claims.directory_lock(self.sweep.out):
            manifest = read_manifest(self.sweep.out) or {
                **plan(self.sweep, self.command),
                "sessions": [],
            }
            sessions = manifest["sessions"]
            mine = [i for i, s in enumerate(sessions) if s.get("id") == self.id]
            if mine:
                sessions[mine[0]] = self.entry
            else:  # the manifest was replaced meanwhile: this session is still one of its own
                sessions.append(self.entry)
            self._write(manifest)

    def _write(self, manifest: dict[str, Any]) -> None:
        manifest["wall_seconds"] = busy_seconds(manifest["sessions"])
        records.atomic_write_json(self.path, manifest)


def write_manifest(sweep, sessions: list[dict[str, Any]], command: str | None) -> None:
    """Write ``sweep``'s manifest with these sessions (replacing the file; sessions of a running
    sweep go through :class:`Session`, which merges under the lock)."""
    manifest = {**plan(sweep, command), "sessions": sessions}
    manifest["wall_seconds"] = busy_seconds(sessions)
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
        protocols.Protocol.from_dict(manifest["protocol"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return f"missing or bad field 'protocol' ({type(error).__name__}: {error})"
    if not all(isinstance(s, dict) for s in manifest["sessions"]):
        return "field 'sessions' should be a list of tables"
    return None
