"""Classification tasks over in-memory tensors, shared by the image and convex problems."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from critgrad.bench.contract import Task


def shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(x, y)`` minibatches in an order drawn from ``generator`` (last may be short)."""
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def loss_and_accuracy(
    model: nn.Module, batches: Iterable[tuple[tuple[torch.Tensor, ...], torch.Tensor]], count: int
) -> dict[str, float]:
    """Mean cross-entropy ("loss") and accuracy ("metric") of ``model`` over ``batches`` of
    (inputs, labels) holding ``count`` examples, in inference mode (batch norm and dropout),
    whatever mode the caller left the model in."""
    total_loss, correct = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, target in batches:
                logits = model(*inputs)
                total_loss += F.cross_entropy(logits, target, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == target).sum())
    finally:
        model.train(was_training)
    return {"loss": total_loss / count, "metric": correct / count}


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
        batches = (
            ((x[start : start + eval_batch_size],), y[start : start + eval_batch_size])
            for start in range(0, len(x), eval_batch_size)
        )
        return loss_and_accuracy(model, batches, len(x))

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
