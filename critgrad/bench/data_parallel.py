"""Harness runs trained data-parallel over the processes of ``torchrun``.

``torchrun --standalone --nproc_per_node N -m critgrad.bench.cli run PROBLEM ...`` starts N
processes of the same command. Process 0 (rank 0) runs the command as one process would, with
every run in its own process (no pool of workers), and is the only one that reads or writes
anything in the run folder: the records, the manifest, the report. The others follow: for each run
that rank 0 starts, rank 0 sends them its spec, and they train it too, then drop their copy of
the record. A run is the same run on every process:

- every process builds the same model (the same seed) and draws the same batches (the same
  generator); each trains on its contiguous share of every batch (``torch.tensor_split``: sizes
  differ by at most one row);
- each process's loss is its share's mean loss weighted by its share of the rows (n_r / n), so
  that the sum over processes is the batch's mean loss; one all-reduce of that one number per
  step gives every process the batch's loss (the training curve, the divergence check);
- after ``backward``, one all-reduce of every gradient (flattened into one float64 buffer) gives
  every process the gradient of the batch's mean loss, before clipping and the optimizer's step;
  so every process holds the same parameters and the same optimizer state, bit for bit;
- evaluation is not split: every process evaluates the whole validation and test sets.

The record equals one process's up to the order of rounding in the gradients (a sum of shares
against one mean). Two things differ by more than rounding and are not split here: batch norm
computes its statistics over each process's share, and dropout draws its masks for the share
(like DistributedDataParallel). The batches must be tuples or lists of tensors with the rows in
dimension 0 (every classification problem); other batches are refused at the first step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch

# A collective that waits for a process that failed gives up after this long (gloo: 30 min).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def launched_world_size() -> int:
    """The number of processes torchrun (or any ``env://`` launcher) started; 1 without one."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {text!r}") from None


def start() -> int:
    """Join the launcher's process group (gloo: the harness trains on the CPU); this rank."""
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={launched_world_size()}: this torch has no torch.distributed, so the "
            "harness cannot train data-parallel; run it as one process"
        )
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return dist.get_rank()


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of this process's group, (0, 1) when it trains alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def announce(message: Any) -> None:
    """Rank 0 tells the followers what to do next: a run's arguments, or None (nothing more)."""
    import torch.distributed as dist

    rank, size = world()
    if size > 1 and rank == 0:
        dist.broadcast_object_list([message], src=0)


def follow(run: Any) -> None:
    """A follower's life: train each run that rank 0 announces (``run(spec, data_dir=...)``) until
    rank 0 says it is done. A run that fails fails on rank 0 the same way (the same code on the
    same data), which records the failure; the follower goes on to the next."""
    import torch.distributed as dist

    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is None:
            return
        spec, data_dir, threads = message[0]
        torch.set_num_threads(threads)  # as rank 0 trains it: the same arithmetic
        with contextlib.suppress(Exception):  # rank 0 has the same error and records it
            run(spec, data_dir=data_dir)


def share(batch: Any) -> tuple[Any, float]:
    """This process's rows of ``batch`` and their fraction of the batch's rows."""
    rank, size = world()
    if size == 1:
        return batch, 1.0
    if type(batch) not in (tuple, list) or not all(torch.is_tensor(t) for t in batch):
        raise ValueError(
            f"data-parallel runs split batches that are tuples of tensors (rows in dimension 0); "
            f"this problem's batches are {type(batch).__name__}: run it as one process"
        )
    rows = {len(t) for t in batch}
    if len(rows) != 1:
        raise ValueError(f"the tensors of a batch hold different numbers of rows: {sorted(rows)}")
    (n,) = rows
    parts = [torch.tensor_split(t, size)[rank] for t in batch]
    return type(batch)(parts), len(parts[0]) / n


def loss(task: Any, batch: Any) -> torch.Tensor:
    """This process's part of the batch's mean loss: its rows' mean loss times their fraction
    (the parts sum to the batch's mean loss); ``task.loss`` itself in one process."""
    part, fraction = share(batch)
    if fraction == 1.0:
        return task.loss(task.model, part)
    if fraction == 0.0:  # more processes than rows: this one contributes no gradient
        return torch.zeros((), requires_grad=True)
    return task.loss(task.model, part) * fraction


def batch_loss(loss: torch.Tensor) -> torch.Tensor:
    """The batch's mean loss (detached) from each process's part: one all-reduce of one number."""
    import torch.distributed as dist

    loss = loss.detach()
    if world()[1] == 1:
        return loss
    total = loss.to(torch.float64).clone()
    dist.all_reduce(total)
    return total.to(loss.dtype)


def sum_gradients(parameters: Sequence[torch.Tensor]) -> None:
    """Every process's gradients summed (each is its part of the batch's mean loss): one
    all-reduce of one float64 buffer, which holds the gradients and whether each process had
    one. A parameter gets a gradient when some process gave it one, as in one process."""
    import torch.distributed as dist

    if world()[1] == 1:
        return
    grads = [p.grad for p in parameters]
    if any(g is not None and (g.is_sparse or g.layout != torch.strided) for g in grads):
        raise ValueError("data-parallel runs need dense gradients")
    pieces = [torch.tensor([float(g is not None) for g in grads], dtype=torch.float64)]
    pieces += [
        (g if g is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
        for p, g in zip(parameters, grads)
    ]
    buffer = torch.cat(pieces)
    dist.all_reduce(buffer)
    present, offset = buffer[: len(grads)].tolist(), len(grads)
    for p, flag in zip(parameters, present):
        values = buffer[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
        if flag:
            p.grad = values.to(p.dtype).clone() if p.grad is None else p.grad.copy_(values)
