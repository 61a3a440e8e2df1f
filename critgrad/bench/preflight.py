"""Every check that can fail before a sweep's first run, so that a mistake costs seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from critgrad.bench import executors, optimizer_labels, sinks, values
from critgrad.bench.datasets import verify
from critgrad.bench.problems import get_problem


def preflight(sweep) -> None:
    """Every check of ``sweep`` (a :class:`critgrad.bench.sweep.Sweep`) that can fail before the
    first run, cheapest first, nothing written until all passed: problem names, sizes and settings
    (against each problem's declarations), the optimizers' hyperparameters (an optimizer built and
    stepped once on a probe), the executor, then the data (present and intact), and last the
    output folder (created, and written to once). Values are normalised in place (numpy scalars
    become Python numbers)."""
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
    sweep.executor = executors.check_executor(sweep.executor)
    sweep.submitit = executors.check_submitit(sweep.submitit)
    sinks.check_config(sweep.sinks)
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
