"""A toy study for the runner's tests: units that add numbers, a log of every unit that ran, and
an optional stop (an exception, or SIGKILL of the whole process) when a chosen unit starts."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from critgrad.bench.studies.contract import Options, Study, Summary, Unit


def toy_study(log: Path, stop_at: str | None = None, how: str = "interrupt") -> Study:
    """Units a0..a4 (plus one per seed beyond seed 0); ``log`` gets one line per unit run."""

    def plan(options: Options) -> list[Unit]:
        names = [f"a{i}" for i in range(5)] + [f"seed{s}" for s in options.seeds if s]
        return [Unit("toy", name, {"value": i, "name": name}) for i, name in enumerate(names)]

    def run_unit(config, options):
        if config["name"] == stop_at:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt  # what Ctrl-C raises between two statements
        with open(log, "a") as stream:
            stream.write(config["name"] + "\n")
        return {"square": config["value"] ** 2}

    def summarize(options, finished):
        total = sum(f.result["square"] for f in finished)
        return Summary(
            table=f"| units | total |\n|---|---|\n| {len(finished)} | {total} |",
            data={"total": total, "units": [f.unit.name for f in finished]},
        )

    def figures(options, finished, summary, folder):
        path = folder / "toy.png"
        path.write_bytes(b"not really a png")
        return [path]

    return Study("toy", "a toy", (0,), plan, run_unit, summarize, figures)


def ran(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def unit_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "units").glob("*.json"))}


def load(path: Path):
    return json.loads(Path(path).read_text())
