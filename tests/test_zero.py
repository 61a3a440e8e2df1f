"""ZeroRedundancyOptimizer: each rank steps a subset of the parameters, whole tensors. A key of one
group (``sum_of_norms``, ``global_norm``) comes from all the group's tensors, on whichever rank
they are: one all-reduce of the group's n norms per step, so that the ranks never disagree and
the run equals one process. ``per_tensor`` keys need nothing from the other ranks.
"""

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
from fsdp_cases import (
    WORKER_DEADLINE_S,
    batches,
    half,
    init_process_group,
    loss,
    make_model,
    one_thread,
    param_groups,
    run_workers,
    set_data_parallel_grads,
)
from torch import nn

import critgrad

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
    pytest.mark.slow,  # two spawned processes import torch: 15-30 s on a busy two-core machine
]

STEPS = 10
CASES = {
    "Adam_C sum_of_norms": (critgrad.Adam_C, dict(lr=0.05, topC=3, decay=0.9)),
    "SGD_C momentum global_norm": (
        critgrad.SGD_C,
        dict(lr=0.1, momentum=0.9, topC=3, decay=0.9, key="global_norm"),
    ),
    "AdamW_C per_tensor": (critgrad.AdamW_C, dict(lr=0.05, topC=3, decay=0.9, synced=False)),
}
FIELDS = ("critical_store", "critical_sum", "critical_priority", "critical_age", "critical_stats")


def train_zero(rank: int, cls, kwargs) -> dict[str, Any]:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    zero = ZeroRedundancyOptimizer(param_groups(model), optimizer_class=cls, **kwargs)
    x, y = batches(STEPS)
    for t in range(STEPS):
        zero.zero_grad()
        loss(ddp, x[t, half(rank)], y[t, half(rank)]).backward()
        zero.step()
    params = list(model.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    local = zero.optim  # this rank's optimizer, with its share of each group
    return {
        "params": [p.detach().clone() for p in params],
        # index in model.parameters() -> the memory and last key of the tensors this rank steps
        "memory": {
            index[id(p)]: {
                **{k: v.clone() for k, v in local.memory[p].items()},
                "key": local.state[p]["critical_key"].clone(),
            }
            for group in local.param_groups
            for p in group["params"]
        },
        "group sizes": [len(group["params"]) for group in local.param_groups],
    }


def train_single(cls, kwargs) -> dict[str, Any]:
    model = make_model()
    opt = cls(param_groups(model), **kwargs)
    x, y = batches(STEPS)
    for t in range(STEPS):
        opt.zero_grad()
        set_data_parallel_grads(model, x[t], y[t])
        opt.step()
    params = list(model.parameters())
    return {
        "params": [p.detach().clone() for p in params],
        "memory": {
            i: {**dict(opt.memory[p]), "key": opt.state[p]["critical_key"]}
            for i, p in enumerate(params)
        },
        "stats": opt.memory_stats(),
    }


def worker(rank: int, folder: str) -> None:
    init_process_group(rank, folder)
    try:
        results = {name: train_zero(rank, *case) for name, case in CASES.items()}
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Freeing the DDP reducer after the gloo group can deadlock in torch's own teardown (its
    # destructor joins a gloo thread that waits for the GIL); the results are on disk already.
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_workers(worker, str(tmp_path_factory.mktemp("zero")))


@pytest.fixture(scope="module")
def single():
    return one_thread(lambda: {name: train_single(*case) for name, case in CASES.items()})


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_each_rank_steps_a_share_one_of_them_none_of_a_group(ranks):
    for name in CASES:
        owned = [set(rank[name]["memory"]) for rank in ranks]
        assert owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == {0, 1, 2, 3}
        # A rank with no tensor of a group still joins the group's all-reduce each step.
        assert 0 in [n for rank in ranks for n in rank[name]["group sizes"]]


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
@pytest.mark.parametrize("name", list(CASES))
def test_zero_equals_one_process(ranks, single, name):
    expected = single[name]
    # DDP hands every rank the same gradients as the reference's (each half divided by 2, then
    # summed). What differs is a group key's sum, over a vector holding zeros where the other
    # ranks' tensors are, in another order: float64 keys within a few ulps, 1e-13 relative
    # leaves a margin of 100x. Everything else is the same arithmetic.
    tol = 1e-13
    for rank in ranks:
        saved = rank[name]
        for a, b in zip(saved["params"], expected["params"]):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        for index, got in saved["memory"].items():
            want = expected["memory"][index]
            for key in ("critical_age", "critical_stats"):
                assert torch.equal(got[key], want[key]), key
            for key in ("critical_store", "critical_sum", "critical_priority", "key"):
                torch.testing.assert_close(got[key], want[key], rtol=tol, atol=tol, msg=key)
    # The memories filled, evicted and turned gradients away.
    for row in expected["stats"]:
        assert row["filled"] == row["capacity"] and row["evicted"] > 0 and row["rejected"] > 0


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_the_ranks_agree_on_each_group_key(ranks):
    weights, biases = (0, 2), (1, 3)  # indices in model.parameters() of the two groups
    for name in ("Adam_C sum_of_norms", "SGD_C momentum global_norm"):
        for members in (weights, biases):
            keys = [
                rank[name]["memory"][i]["key"]
                for rank in ranks
                for i in members
                if i in rank[name]["memory"]
            ]
            # One key per group, the same bits on every rank that steps one of its tensors.
            assert all(torch.equal(k, keys[0]) for k in keys), (name, members)
