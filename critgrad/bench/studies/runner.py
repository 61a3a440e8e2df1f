"""Running a study: the missing units, one at a time, then the summary, the table and the figures.

Layout of a study folder ``DIR``::

    DIR/study.json        the plan: study, options, unit ids (rewritten at each start)
    DIR/units/<id>.json   one finished unit: its configuration, result and wall time
    DIR/summary.json      the summary's data, the options, the machine and the total unit time
    DIR/table.md          the summary's Markdown table
    DIR/*.png             the figures

Each unit file is written atomically (a temporary file moved into place), so a study killed at any
moment leaves only whole unit files; the next start skips every unit whose file is there and
matches (same study, id and configuration) and runs the others. A file that does not parse or
does not match is reported and its unit run again.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from critgrad.bench.records import atomic_write_json
from critgrad.bench.studies.contract import (
    UNIT_FORMAT,
    Finished,
    Options,
    Study,
    Summary,
    Unit,
    canonical_json,
)


def machine() -> dict[str, Any]:
    """What the study ran on (no host name)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def unit_path(out: Path, unit: Unit) -> Path:
    return out / "units" / f"{unit.id}.json"


def load_finished(out: Path, unit: Unit) -> tuple[Finished | None, str | None]:
    """The unit's stored result if its file is there and matches; else None and why not."""
    path = unit_path(out, unit)
    if not path.exists():
        return None, None
    try:
        with open(path, encoding="utf-8") as stream:
            stored = json.load(stream)
        matches = (
            stored["format"] == UNIT_FORMAT
            and stored["study"] == unit.study
            and stored["id"] == unit.id
            and canonical_json(stored["config"]) == canonical_json(dict(unit.config))
        )
        result, seconds = stored["result"], float(stored["seconds"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        return None, f"{path}: unreadable ({error}); the unit runs again"
    if not matches or not isinstance(result, dict):
        return None, f"{path}: not this unit's result; the unit runs again"
    return Finished(unit, result, seconds), None


def write_finished(out: Path, finished: Finished) -> Path:
    path = unit_path(out, finished.unit)
    atomic_write_json(
        path,
        {
            "format": UNIT_FORMAT,
            "study": finished.unit.study,
            "id": finished.unit.id,
            "config": dict(finished.unit.config),
            "result": finished.result,
            "seconds": finished.seconds,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return path


def _bar(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="unit", disable=not enabled, dynamic_ncols=True)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


class StudyOutcome:
    """What a call of :func:`run_study` did."""

    def __init__(self, ran: int, skipped: int, summary: Summary, files: list[Path]):
        self.ran, self.skipped, self.summary, self.files = ran, skipped, summary, files


def run_study(
    study: Study,
    options: Options,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] = _log,
    command: str | None = None,
    threads: int | None = 1,
) -> StudyOutcome:
    """Run the units of ``study`` that ``out`` lacks, then summarise and draw (see the module).

    ``threads``: torch's intra-op threads while the study runs (None: leave them). One by default:
    the units are small, and on a busy machine a second thread makes small operations several
    times slower instead of faster."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(study, options, Path(out), progress, log, command)
    finally:
        torch.set_num_threads(previous)


def _run(study, options, out, progress, log, command) -> StudyOutcome:
    units = study.units(options)
    atomic_write_json(
        out / "study.json",
        {
            "study": study.name,
            "description": study.description,
            "options": _options_dict(options),
            "command": command,
            "units": [unit.id for unit in units],
        },
    )
    finished: dict[str, Finished] = {}
    missing: list[Unit] = []
    for unit in units:
        done, problem = load_finished(out, unit)
        if problem:
            log(problem)
        if done is None:
            missing.append(unit)
        else:
            finished[unit.id] = done
    skipped = len(finished)
    if missing:
        log(f"{study.name}: {len(missing)} unit(s) to run, {skipped} already finished -> {out}")
    with _bar(len(missing), study.name, progress) as bar:
        for unit in missing:
            bar.set_postfix_str(unit.name, refresh=False)
            started = time.perf_counter()
            try:
                result = study.run_unit(unit.config, options)
            except BaseException:
                log(f"{study.name}: unit {unit.id} did not finish; finished units are kept")
                raise
            done = Finished(unit, result, time.perf_counter() - started)
            write_finished(out, done)
            finished[unit.id] = done
            bar.update()
    ordered = [finished[unit.id] for unit in units]
    summary = study.summarize(options, ordered)
    figures = study.figures(options, ordered, summary, out)
    atomic_write_json(
        out / "summary.json",
        {
            "study": study.name,
            "description": study.description,
            "options": _options_dict(options),
            "command": command,
            "machine": machine(),
            "units": len(units),
            "unit_seconds": sum(f.seconds for f in ordered),
            "figures": [path.name for path in figures],
            "summary": dict(summary.data),
        },
    )
    _write_text(out / "table.md", summary.table)
    return StudyOutcome(len(missing), skipped, summary, [out / "summary.json", *figures])


def _options_dict(options: Options) -> dict[str, Any]:
    return {"quick": options.quick, "seeds": list(options.seeds)}


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    os.replace(temporary, path)


def finished_results(study: Study, options: Options, out: str | os.PathLike) -> list[Finished]:
    """The finished units of the plan found in ``out`` (for notebooks and tests)."""
    found = [load_finished(Path(out), unit)[0] for unit in study.units(options)]
    return [f for f in found if f is not None]


__all__ = ["StudyOutcome", "finished_results", "load_finished", "machine", "run_study"]
