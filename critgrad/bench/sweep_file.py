"""Sweep files: a protocol over problems, with its settings, in TOML or YAML.

A sweep file looks like::

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
    [hyperparameters]                # extras for "all", a vanilla label (its twin too), a label
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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from critgrad.bench import executors, protocols, sinks, values
from critgrad.bench.sweep import Sweep

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


def parse_config(data: Mapping[str, Any], *, out: str | None = None) -> Sweep:
    """Validate a sweep file's contents: every unknown key, value of the wrong type or out of range
    is a :class:`~critgrad.bench.values.ConfigError` naming it (the problems' own settings are
    checked by :func:`critgrad.bench.preflight.preflight`, against each problem's declarations)."""
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
    executor = executors.check_executor(_table(data, "executor", set(executors.DEFAULT_EXECUTOR)))
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
        submitit=executors.check_submitit(_table(data, "submitit")),
        sinks=_table(data, "sinks"),
    )
    sinks.check_config(sweep.sinks)
    return sweep
