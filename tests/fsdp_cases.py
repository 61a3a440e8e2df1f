"""What the multi-process tests share: a 2-layer model and its batches, the gradient that data
parallelism gives (computed in one process, for the references), and processes that the tests
start themselves and that never outlive them.

The ranks meet through a FileStore in the test's own temporary folder (no TCP port to pick and
race for), and every process runs torch with one thread. Each rank trains on its half of every
batch; the one-process references compute the two half-batch gradients and add them as the
ranks' reduction does (each divided by the world size, then summed), so that the only
difference left between a reference and the ranks is the one under test.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
BATCH = 8
# The workers' own deadline; the tests' pytest-timeout is above it, so that a test kills its
# workers itself and reports, rather than being stopped with workers still running.
WORKER_DEADLINE_S = 150
# A collective that waits for a rank that failed gives up after this long (gloo's default: 30 min).
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def make_model(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Every dimension that FSDP2 shards (each tensor's first) is even: each of 2 ranks holds
    exactly half of every tensor."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def batches(steps: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, BATCH, 6, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(steps, BATCH, 2, generator=gen, dtype=torch.float64).to(dtype)
    return x, y


def half(rank: int) -> slice:
    size = BATCH // WORLD
    return slice(rank * size, (rank + 1) * size)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Two groups (weights, biases): two keys per step, so two all-reduces."""
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")]},
        {"params": [p for n, p in named if n.endswith("bias")]},
    ]


def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compute_dtype=None) -> torch.Tensor:
    """Mean squared error; the inputs in ``compute_dtype`` (as FSDP2's mixed precision casts them)
    and the output compared in ``y``'s dtype."""
    if compute_dtype is not None:
        x = x.to(compute_dtype)
    return nn.functional.mse_loss(model(x).to(y.dtype), y)


def set_data_parallel_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, compute_dtype=None
) -> None:
    """Give ``model``'s parameters the gradient of WORLD ranks, each with its half of the batch:
    each half's gradient divided by WORLD, summed (what FSDP2's reduce-scatter and DDP's
    all-reduce compute). With ``compute_dtype`` the halves run in a copy of the model in that
    dtype, their gradients summed in the parameters' dtype (FSDP2's MixedPrecisionPolicy with
    param_dtype=compute_dtype and reduce_dtype the parameters' dtype)."""
    compute = model if compute_dtype is None else copy.deepcopy(model).to(compute_dtype)
    total = None
    for rank in range(WORLD):
        for p in compute.parameters():
            p.grad = None
        loss(compute, x[half(rank)], y[half(rank)], compute_dtype).backward()
        part = [
            p.grad.to(q.dtype) / WORLD for p, q in zip(compute.parameters(), model.parameters())
        ]
        total = part if total is None else [a + b for a, b in zip(total, part)]
    for p, g in zip(model.parameters(), total):
        p.grad = g


def init_process_group(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(folder, "store"), WORLD)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=WORLD, timeout=COLLECTIVE_TIMEOUT
    )


def run_workers(worker: Callable[..., None], folder: str) -> list[Any]:
    """Run ``worker(rank, folder)`` in WORLD new processes; each saves ``folder/rank{r}.pt``."""
    context = mp.start_processes(
        worker, args=(folder,), nprocs=WORLD, join=False, start_method="spawn"
    )
    try:
        deadline = time.monotonic() + WORKER_DEADLINE_S
        while not context.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"the workers did not finish within {WORKER_DEADLINE_S} s")
    finally:
        # Whatever stopped the wait (a failure, the deadline, pytest-timeout), no worker outlives it.
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    return [
        torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)
    ]


def one_thread(function: Callable[[], Any]) -> Any:
    """``function()`` with torch on one thread, as in the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function()
    finally:
        torch.set_num_threads(threads)
