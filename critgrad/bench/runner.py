"""One run: (problem, optimizer label + hyperparameters, seed) -> one record.

The record holds the learning curve (an evaluation point at step 0 and ``evals_per_epoch`` points
per epoch: mean training loss since the previous point, validation and test loss and metric,
training seconds so far, the optimizer's memory statistics), the final numbers, the step count and
timings: wall time of the whole run, training time (evaluation excluded) and the time spent inside
``optimizer.step()``. Everything but the timings is a function of the spec: torch's generator is
seeded before the problem builds its model, and the batch order comes from a generator seeded with
the same seed.

Divergence is an outcome, not a score. A run diverges when a training loss is not finite (checked at
every step: the loss is already brought to the host for the running mean, so the check costs no
extra synchronisation), or when, at an evaluation point, a parameter, a validation or test loss or a
metric is not finite. The run stops there; its record says ``"diverged": true`` and
``"divergence": {"step", "epoch", "cause"}`` (``step`` is the number of the optimizer step whose loss
was not finite, or the step count at the evaluation point that found it), and its ``final`` numbers
are null: the 10 % that a model with NaN weights scores by predicting one class is not a result.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from critgrad.bench import data_parallel, optimizer_labels
from critgrad.bench.problems import get_problem
from critgrad.bench.record_format import FINAL_FIELDS, RECORD_FORMAT, RunSpec, finite_or_none


def machine_info() -> dict[str, Any]:
    """What the timings were measured on (no host name)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        # Under torchrun: the processes that trained the run data-parallel.
        **({"processes": data_parallel.world()[1]} if data_parallel.world()[1] > 1 else {}),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluation_steps(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Batch counts within an epoch after which to evaluate: evenly spaced, the last at the end."""
    if evals_per_epoch < 1:
        raise ValueError(f"evals_per_epoch must be >= 1, got {evals_per_epoch}")
    count = min(evals_per_epoch, steps_per_epoch)
    return sorted({round(steps_per_epoch * (j + 1) / count) for j in range(count)})


def summarise_memory(stats: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """One dict for all parameter groups of ``optimizer.memory_stats()``.

    Integer counters ("offered", "admitted", "rejected", "nonfinite", ...) are summed, ``max_*``
    values take the maximum, other numbers (``mean_age``, ...) are averaged over the groups that
    have them; ``last_*`` snapshots are dropped, they only make sense per group and step.
    """
    if not stats:
        return None
    summary: dict[str, Any] = {}
    keys = sorted({key for group in stats for key in group})
    for key in keys:
        values = [
            group[key]
            for group in stats
            if isinstance(group.get(key), (int, float)) and not isinstance(group[key], bool)
        ]
        if key.startswith("last_"):
            continue
        if not values:
            summary[key] = None
        elif key.startswith("max_"):
            summary[key] = max(values)
        elif all(isinstance(v, int) for v in values) and not key.startswith("mean_"):
            summary[key] = sum(values)
        else:
            summary[key] = sum(float(v) for v in values) / len(values)
    for key in ("offered", "admitted", "rejected", "nonfinite"):
        summary.setdefault(key, 0)
    summary.setdefault("mean_age", None)
    return summary


def _memory(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    stats = getattr(optimizer, "memory_stats", None)
    return summarise_memory(stats()) if callable(stats) else None


def run(
    spec: RunSpec,
    *,
    data_dir: str | None = None,
    progress: bool = False,
    sink_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``spec`` and return its record (see the module docstring)."""
    from critgrad.bench import sinks  # optional back ends, imported only when a run starts

    started = time.perf_counter()
    # Under torchrun the other processes train it too, with as many threads as this one.
    data_parallel.announce((spec, data_dir, torch.get_num_threads()))
    problem = get_problem(spec.problem)
    seed_everything(spec.seed)
    task = problem.build(spec.size, spec.seed, data_dir, spec.overrides)
    optimizer_name, arguments = optimizer_labels.resolve(spec.optimizer, spec.hyperparameters)
    task, optimizer = optimizer_labels.create_for_task(spec.optimizer, task, spec.hyperparameters)
    generator = torch.Generator().manual_seed(spec.seed)

    steps_per_epoch = task.info.get("steps_per_epoch")
    if steps_per_epoch is None and spec.evals_per_epoch != 1:
        raise ValueError(
            f"problem {spec.problem!r} does not know its steps per epoch; evals_per_epoch must be 1"
        )
    checkpoints = set(
        evaluation_steps(steps_per_epoch, spec.evals_per_epoch) if steps_per_epoch else ()
    )
    parameters = [p for p in task.model.parameters() if p.requires_grad]
    outputs = sinks.open_sinks(sink_config, spec)

    history: list[dict[str, Any]] = []
    clock = {"train": 0.0, "optimizer": 0.0}
    state = {"step": 0, "loss_sum": torch.zeros(()), "loss_count": 0}

    def evaluate_point(epoch: float) -> dict[str, Any]:
        task.model.eval()
        valid = task.evaluate(task.model, "valid")
        test = task.evaluate(task.model, "test")
        task.model.train()
        count = state["loss_count"]
        mean_loss = state["loss_sum"].item() / count if count else None
        state["loss_sum"], state["loss_count"] = torch.zeros(()), 0
        point = {
            "epoch": epoch,
            "step": state["step"],
            "train_seconds": clock["train"],
            "train_loss": mean_loss,
            "valid_loss": float(valid["loss"]),
            "valid_metric": float(valid["metric"]),
            "test_loss": float(test["loss"]),
            "test_metric": float(test["metric"]),
            "memory": _memory(optimizer),
        }
        # Further scores a problem reports (MultiWOZ: perplexity, inform, success).
        for split, scores in (("valid", valid), ("test", test)):
            point.update(
                {f"{split}_{k}": float(v) for k, v in scores.items() if k not in ("loss", "metric")}
            )
        history.append(point)
        for sink in outputs:
            sink.log(point)
        return point

    total_steps = task.epochs * steps_per_epoch if steps_per_epoch else None
    bar = progress_bar(progress, total_steps, f"{spec.problem} {spec.optimizer} seed {spec.seed}")
    divergence: dict[str, Any] | None = None
    try:
        divergence = _point_divergence(evaluate_point(0.0), parameters)
        task.model.train()
        for epoch in range(task.epochs):
            if divergence is not None:
                break
            tick = time.perf_counter()
            for batch_in_epoch, batch in enumerate(task.train_batches(generator), start=1):
                optimizer.zero_grad(set_to_none=True)
                loss = data_parallel.loss(task, batch)  # this process's part under torchrun
                host_loss = data_parallel.batch_loss(loss).float().cpu()
                if not math.isfinite(host_loss.item()):
                    divergence = {
                        "step": state["step"] + 1,
                        "epoch": epoch + (batch_in_epoch - 1) / (steps_per_epoch or 1),
                        "cause": "non-finite training loss",
                    }
                    break
                loss.backward()
                data_parallel.sum_gradients(parameters)
                if task.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, task.grad_clip)
                before_step = time.perf_counter()
                optimizer.step()
                clock["optimizer"] += time.perf_counter() - before_step
                state["loss_sum"] = state["loss_sum"] + host_loss
                state["loss_count"] += 1
                state["step"] += 1
                bar.update(1)
                if batch_in_epoch in checkpoints and batch_in_epoch != steps_per_epoch:
                    clock["train"] += time.perf_counter() - tick
                    point = evaluate_point(epoch + batch_in_epoch / steps_per_epoch)
                    tick = time.perf_counter()
                    divergence = _point_divergence(point, parameters)
                    if divergence is not None:
                        break
            clock["train"] += time.perf_counter() - tick
            if divergence is None:
                divergence = _point_divergence(evaluate_point(float(epoch + 1)), parameters)
    finally:
        bar.close()
        for sink in outputs:
            sink.close()

    last = history[-1]
    return finite_or_none(
        {
            "format": RECORD_FORMAT,
            "key": spec.run_id(),
            "spec": spec.to_dict(),
            "optimizer_name": optimizer_name,
            "optimizer_arguments": arguments,
            "problem_info": dict(task.info),
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "epochs": task.epochs,
            "history": history,
            "final": {key: None if divergence else last[key] for key in FINAL_FIELDS},
            "diverged": divergence is not None,
            "divergence": divergence,
            "steps": state["step"],
            "wall_seconds": time.perf_counter() - started,
            "train_seconds": clock["train"],
            "optimizer_seconds": clock["optimizer"],
            "machine": machine_info(),
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
        }
    )


def _finite(value: Any) -> bool:
    return value is None or math.isfinite(value)


def _point_divergence(
    point: Mapping[str, Any], parameters: Sequence[torch.Tensor]
) -> dict[str, Any] | None:
    """Why the model at this evaluation point has diverged, or None while everything is finite."""
    cause = None
    if parameters and not bool(
        torch.stack([p.detach().isfinite().all() for p in parameters]).all()
    ):
        cause = "non-finite parameters"
    else:
        bad = [key for key in FINAL_FIELDS if not _finite(point[key])]
        if bad:
            cause = f"non-finite {', '.join(key.replace('_', ' ') for key in bad)}"
    if cause is None:
        return None
    return {"step": point["step"], "epoch": point["epoch"], "cause": cause}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int | None, description: str, unit: str = "step"):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True)


TIMING_KEYS = ("wall_seconds", "train_seconds", "optimizer_seconds", "finished_at", "machine")


def without_timings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record minus everything that depends on the clock (for determinism checks)."""
    stripped = {k: v for k, v in record.items() if k not in TIMING_KEYS}
    stripped["history"] = [
        {k: v for k, v in point.items() if k != "train_seconds"} for point in record["history"]
    ]
    return stripped
