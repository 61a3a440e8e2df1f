"""Optional live logging of runs to TensorBoard or Weights & Biases (offline by default).

The JSON records are the source of truth; these sinks only mirror each evaluation point for users
who watch runs there. A sink configuration is a plain dict, so it travels to worker processes::

    {"tensorboard": True, "wandb": False, "dir": "runs/x/logs", "wandb_project": "critgrad",
     "wandb_mode": "offline"}

``tensorboard`` needs the ``tensorboard`` package, ``wandb`` the ``wandb`` package; asking for one
that is not installed is an error with the install command, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

DEFAULTS = {
    "tensorboard": False,
    "wandb": False,
    "dir": "logs",
    "wandb_project": "critgrad",
    "wandb_mode": "offline",
}
SCALARS = ("train_loss", "valid_loss", "valid_metric", "test_loss", "test_metric")


class Sink(Protocol):
    def log(self, point: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def run_name(spec) -> str:
    """problem/optimizer/seed-run id: the run id tells configurations apart (the record has the
    spec)."""
    return f"{spec.problem}/{spec.optimizer}/seed{spec.seed}-{spec.run_id()}"


WANDB_MODES = ("online", "offline", "disabled")


def check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full configuration; unknown keys and values of the wrong kind are an error naming
    them."""
    from critgrad.bench import values

    config = values.table("sinks", config)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise values.ConfigError(f"unknown sink settings {unknown}; allowed: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **config}
    values.boolean("sinks tensorboard", config["tensorboard"])
    values.boolean("sinks wandb", config["wandb"])
    values.path("sinks dir", config["dir"])
    values.string("sinks wandb_project", config["wandb_project"])
    values.string("sinks wandb_mode", config["wandb_mode"], WANDB_MODES)
    return config


class TensorBoardSink:
    """One event file folder per run, scalars keyed by evaluation step."""

    def __init__(self, directory: Path, name: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError(
                "TensorBoard logging needs `pip install tensorboard` (or critgrad[logging])"
            ) from None
        self._writer = SummaryWriter(log_dir=str(directory / "tensorboard" / name))

    def log(self, point: Mapping[str, Any]) -> None:
        for key in SCALARS:
            if point.get(key) is not None:
                self._writer.add_scalar(key.replace("_", "/", 1), point[key], point["step"])
        memory = point.get("memory")
        if memory and memory.get("offered"):
            self._writer.add_scalar(
                "memory/admitted_fraction", memory["admitted"] / memory["offered"], point["step"]
            )

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """A W&B run per training run; ``mode="offline"`` writes locally and syncs never by itself."""

    def __init__(self, directory: Path, name: str, project: str, mode: str, spec):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("W&B logging needs `pip install wandb`") from None
        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            name=name,
            dir=str(directory),
            mode=mode,
            config=spec.to_dict(),
            reinit=True,
        )

    def log(self, point: Mapping[str, Any]) -> None:
        values = {key: point[key] for key in SCALARS if point.get(key) is not None}
        values["epoch"] = point["epoch"]
        self._run.log(values, step=point["step"])

    def close(self) -> None:
        self._run.finish()


def open_sinks(config: Mapping[str, Any] | None, spec) -> list[Sink]:
    """The sinks ``config`` asks for, opened for the run ``spec``."""
    config = check_config(config)
    directory, name = Path(config["dir"]), run_name(spec)
    sinks: list[Sink] = []
    if config["tensorboard"]:
        sinks.append(TensorBoardSink(directory, name))
    if config["wandb"]:
        sinks.append(
            WandbSink(directory, name, config["wandb_project"], config["wandb_mode"], spec)
        )
    return sinks
