"""DDP with the gloo backend: every rank keeps the same memory and the same parameters, and the
run equals a single process on the whole batch."""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import critgrad

WORLD = 2
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 8, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(STEPS, 8, 2, generator=gen, dtype=torch.float64)
    return model, x, y


def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model, x, y = model_and_data()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = critgrad.Adam(ddp.parameters(), lr=0.05, topC=3, decay=0.8)
        half = x.shape[1] // WORLD
        for t in range(STEPS):
            opt.zero_grad()
            xb, yb = x[t, rank * half : (rank + 1) * half], y[t, rank * half : (rank + 1) * half]
            nn.functional.mse_loss(ddp(xb), yb).backward()
            opt.step()
        torch.save(
            {"params": [p.detach() for p in model.parameters()], "stats": opt.memory_stats()},
            os.path.join(out, f"rank{rank}.pt"),
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Freeing the DDP reducer after the gloo group can deadlock in torch's own teardown (its
    # destructor joins a gloo thread that waits for the GIL); the results are on disk already.
    os._exit(0)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_matches_single_process(tmp_path):
    context = mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 240 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    model, x, y = model_and_data()
    opt = critgrad.Adam(model.parameters(), lr=0.05, topC=3, decay=0.8)
    for t in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[t]), y[t]).backward()
        opt.step()
    for saved in ranks:
        assert saved["stats"] == opt.memory_stats()
        for a, b in zip(saved["params"], model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)
