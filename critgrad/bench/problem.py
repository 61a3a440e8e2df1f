"""What a benchmark problem is: the contract between problems, the runner and the report.

A *problem* is a named recipe (data, model, loss, metric, batch size, epochs) with two sizes: ``cpu``
(the default, minutes on a laptop CPU) and ``full`` (the paper's setting). ``ProblemSpec.build``
turns a recipe into a ready-to-train :class:`Task` for one seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

Batch = Any
"""Whatever the task's loaders yield; only the task's own ``loss`` and ``evaluate`` look inside."""


class DataUnavailable(RuntimeError):
    """A data set is not on this machine. The message names the files expected and where."""


@dataclasses.dataclass
class Task:
    """One problem, built for one seed: everything the runner needs to train and score."""

    model: nn.Module
    # A callable returning a fresh iterable over the training batches for one epoch; the runner
    # passes a torch.Generator so that the shuffle order is a function of the seed.
    train_batches: Callable[[torch.Generator], Iterable[Batch]]
    # Mean loss of the model on one batch (the runner calls backward on it).
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    # Scores the model on a split ("valid" or "test"): returns {"loss": float, "metric": float}.
    evaluate: Callable[[nn.Module, str], Mapping[str, float]]
    metric: str  # e.g. "accuracy", "perplexity", "train_loss"
    higher_is_better: bool
    epochs: int
    grad_clip: float | None = None  # max L2 norm of all gradients, None for no clipping
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # sizes, for the record
    # The objective as a sum over training rows, for per-row methods (SAGA): a
    # critgrad.bench.finite_sum.LinearFiniteSum, or None where the problem has none.
    finite_sum: Any = None


@dataclasses.dataclass(frozen=True)
class ProblemSpec:
    """A named problem. ``sizes`` maps "cpu"/"full" to settings passed to ``builder``."""

    name: str
    description: str
    dataset: str  # the data set's name as :func:`critgrad.bench.data` knows it
    metric: str
    higher_is_better: bool
    sizes: Mapping[str, Mapping[str, Any]]
    builder: Callable[..., Task]  # builder(settings: dict, seed: int, data_dir: str | None) -> Task

    def build(
        self,
        size: str = "cpu",
        seed: int = 0,
        data_dir: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Task:
        if size not in self.sizes:
            raise ValueError(f"size must be one of {sorted(self.sizes)}, got {size!r}")
        settings = {**self.sizes[size], **(overrides or {})}
        return self.builder(settings, seed, data_dir)


def shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(x, y)`` minibatches in an order drawn from ``generator`` (last may be short)."""
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def classification_task(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    model: nn.Module,
    settings: dict[str, Any],
    info: dict[str, Any],
) -> Task:
    """A cross-entropy / accuracy :class:`Task` over in-memory tensors per split."""
    train_x, train_y = data["train"]
    batch_size, eval_batch_size = settings["batch_size"], settings["eval_batch_size"]

    def train_batches(generator: torch.Generator):
        return shuffled_batches(train_x, train_y, batch_size, generator)

    def loss(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        x, y = data[split]
        total_loss, correct = 0.0, 0
        was_training = model.training
        model.eval()  # batch norm and dropout in inference mode, whatever the caller left
        try:
            with torch.no_grad():
                for start in range(0, len(x), eval_batch_size):
                    logits = model(x[start : start + eval_batch_size])
                    target = y[start : start + eval_batch_size]
                    total_loss += F.cross_entropy(logits, target, reduction="sum").item()
                    correct += int((logits.argmax(dim=1) == target).sum())
        finally:
            model.train(was_training)
        return {"loss": total_loss / len(x), "metric": correct / len(x)}

    return Task(
        model=model,
        train_batches=train_batches,
        loss=loss,
        evaluate=evaluate,
        metric="accuracy",
        higher_is_better=True,
        epochs=settings["epochs"],
        grad_clip=settings["grad_clip"],
        info={
            **info,
            "train_size": len(train_x),
            "valid_size": len(data["valid"][0]),
            "test_size": len(data["test"][0]),
            "batch_size": batch_size,
            "steps_per_epoch": -(-len(train_x) // batch_size),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
