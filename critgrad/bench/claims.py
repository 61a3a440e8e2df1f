"""Who is running what in a run directory: a short lock, per-run claims, stale leftovers.

Several sweeps may work in one run directory at once: two ``critgrad sweep`` commands on one
machine, or sweeps split across SLURM jobs on a shared file system. Each run is trained once:

* **The directory lock** (:func:`directory_lock`) is an exclusive ``flock`` on ``.critgrad.lock``,
  held for milliseconds around every read-modify-write of shared state (claims, the manifest). The
  kernel releases it when its holder dies, however it dies.
* **A claim** is a file ``.<record name>.claim`` created with ``O_CREAT | O_EXCL`` (under the lock)
  by the process that is about to train the run, holding its host, pid, the pid's start time and
  the time of the claim; it is removed when the record is written or the run fails. A process
  that finds a live claim leaves the run to its owner and waits for the record.
* **A stale claim** is one whose owner is gone: on the same host, its pid is not running (or is a
  zombie, or is another process that reused the pid: the start time differs); on another host,
  the file has not been touched for :data:`STALE_AFTER` seconds, the owner refreshing it every
  :data:`HEARTBEAT` seconds while it trains. Anyone may take a stale claim over (under the lock).
  A file that does not parse is stale: a live owner writes it whole under the lock.
* **Temporary files** (``.<name>.<host>.<pid>.<random>.tmp``) of atomic writes whose writer is gone
  are removed when a sweep starts: by pid on this host, by age elsewhere.

Every file is created with the mode the umask gives (``0o666 & ~umask``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".critgrad.lock"
CLAIM_SUFFIX = ".claim"
TMP_SUFFIX = ".tmp"
HEARTBEAT = 30.0  # seconds between refreshes of a live claim
STALE_AFTER = 600.0  # seconds without a refresh after which another host's claim is stale
HOST = socket.gethostname() or "localhost"
_HOST_TAG = HOST.replace(".", "_")  # the host in file names, where dots separate fields


def umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # elsewhere: set and restore (not atomic; no files made meanwhile)
    os.umask(current)
    return current


def file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~umask()


# ---- the directory lock -------------------------------------------------------------------------


@contextlib.contextmanager
def directory_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory's exclusive lock (blocking) for the ``with`` block."""
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    handle = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:  # e.g. ENOLCK: a network file system mounted without locking
            raise OSError(
                error.errno,
                f"cannot lock {path} ({error.strerror}); this file system does not support "
                "file locks: run sweeps in a folder on one that does",
            ) from None
        yield
    finally:
        os.close(handle)  # closing releases the lock


# ---- processes ----------------------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and is the one that started at ``started``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    if _state(pid) in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    if started is not None:
        now = process_start(pid)
        if now is not None and now != started:
            return False  # the pid was reused
    return True


def me() -> dict[str, Any]:
    """This process as an owner: host, pid, the pid's start time."""
    return {"host": HOST, "pid": os.getpid(), "pid_started": process_start(os.getpid())}


def owner_alive(owner: dict[str, Any], path: Path | None = None) -> bool:
    """Whether the owner described by ``owner`` (see :func:`me`) still runs; on another host,
    whether ``path`` was touched within :data:`STALE_AFTER` seconds."""
    if owner.get("host") == HOST and isinstance(owner.get("pid"), int):
        return alive(owner["pid"], owner.get("pid_started"))
    if path is None:
        return True  # another host, nothing to date it by: assume it lives
    try:
        return time.time() - path.stat().st_mtime < STALE_AFTER
    except OSError:
        return False


def describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"


# ---- claims -------------------------------------------------------------------------------------


def claim_path(record_path: Path) -> Path:
    return record_path.with_name(f".{record_path.name}{CLAIM_SUFFIX}")


def read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's owner; None when there is no claim; ``{}`` when it does not parse."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _stale(owner: dict[str, Any], path: Path) -> bool:
    return not owner or not owner_alive(owner, path)


class Heartbeat:
    """Touches this process's live claims every :data:`HEARTBEAT` seconds (a daemon thread)."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            self.paths.add(path)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="claims")
                self._thread.start()

    def discard(self, path: Path) -> None:
        with self._lock:
            self.paths.discard(path)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT)
            with self._lock:
                paths = list(self.paths)
            for path in paths:
                with contextlib.suppress(OSError):
                    os.utime(path)


_HEARTBEAT = Heartbeat()


def claim(
    record_path: Path, done: Callable[[], bool] | None = None
) -> tuple[bool, dict[str, Any] | None]:
    """Try to claim the run whose record is ``record_path``; ``done()`` says whether its record is
    finished (default: the file exists; a broken record is not finished).

    Returns ``(True, None)`` when this process now owns the run; ``(False, None)`` when its record
    is finished (nothing to do); ``(False, owner)`` when a live owner holds it.
    """
    path = claim_path(record_path)
    with directory_lock(record_path.parent):
        if done() if done is not None else record_path.exists():
            return False, None
        owner = read_claim(path)
        if owner is not None:
            if not _stale(owner, path):
                return False, owner
            path.unlink(missing_ok=True)
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
        with os.fdopen(handle, "w") as stream:
            json.dump({**me(), "claimed": _now()}, stream)
    _HEARTBEAT.add(path)
    return True, None


def release(record_path: Path) -> None:
    """Give up this process's claim on the run of ``record_path`` (if it still holds it)."""
    path = claim_path(record_path)
    _HEARTBEAT.discard(path)
    with directory_lock(record_path.parent):
        owner = read_claim(path)
        if owner and owner.get("host") == HOST and owner.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def holder(record_path: Path) -> dict[str, Any] | None:
    """The live owner of the run's claim, or None (no claim, or a stale one)."""
    path = claim_path(record_path)
    owner = read_claim(path)
    if owner is None or _stale(owner, path):
        return None
    return owner


# ---- leftovers ----------------------------------------------------------------------------------


def temporary_name(target: Path) -> str:
    """The prefix of a temporary file for ``target``: it names the writer."""
    return f".{target.name}.{_HOST_TAG}.{os.getpid()}."


def clean_stale(run_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary files and claims whose writer is gone (call under the lock); returns them."""
    removed = []
    for path in Path(run_dir).iterdir():
        name = path.name
        if not name.startswith("."):
            continue
        if name.endswith(TMP_SUFFIX):
            stale = _stale_temporary(path)
        elif name.endswith(CLAIM_SUFFIX):
            owner = read_claim(path)
            stale = owner is not None and _stale(owner, path)
        else:
            continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _stale_temporary(path: Path) -> bool:
    parts = path.name[: -len(TMP_SUFFIX)].rsplit(".", 3)  # .<target>.<host>.<pid>.<random>
    if len(parts) == 4 and parts[1] == _HOST_TAG and parts[2].isdigit():
        return not alive(int(parts[2]))
    try:  # another host's, or an older naming: by age (a write takes milliseconds)
        return time.time() - path.stat().st_mtime > STALE_AFTER
    except OSError:
        return False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
