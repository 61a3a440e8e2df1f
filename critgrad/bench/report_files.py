"""A report on disk: ``report.md``, ``table.csv``, ``results.csv`` and ``plots/`` in one folder.

The tables come from :mod:`critgrad.bench.report`, the figures from :mod:`critgrad.bench.plots`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import plots as plotting
from critgrad.bench.report import Analysis, analyse, markdown, result_rows, table_rows


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, with_plots: bool = True
) -> tuple[Analysis, str, Path]:
    """Write report.md, table.csv, results.csv (and plots/) into ``out_dir`` (default: run_dir)."""
    analysis = analyse(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[str]] = {}
    if with_plots:
        for result in analysis.problems:
            written = plotting.plot_problem(result, analysis.protocol, out / "plots")
            plots[result.problem] = [os.path.relpath(p, out) for p in written]
    text = markdown(analysis, plots)
    (out / "report.md").write_text(text)
    _write_csv(out / "table.csv", table_rows(analysis))
    _write_csv(out / "results.csv", result_rows(analysis))
    return analysis, text, out / "report.md"
