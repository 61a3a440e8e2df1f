"""FSDP2 (``fully_shard``) with the gloo backend: the memory is sharded exactly like the parameters,
the keys are the norms of whole gradients (one all-reduce of n floats per group and step), and
two sharded processes equal one unsharded process.

One pair of processes runs every case (starting processes is the expensive part here); each test
checks one property of what they saved.
"""

import os
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.distributed as dist
from fsdp_cases import (
    WORKER_DEADLINE_S,
    WORLD,
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
DECAY = 0.9
FLOAT_STATS = ("min_priority", "mean_priority", "last_key")


@dataclass
class Case:
    make: Any  # param groups -> optimizer
    dtype: torch.dtype = torch.float64
    compute_dtype: torch.dtype | None = None  # FSDP2's param_dtype; gradients reduced in dtype
    rejects: bool = True  # a full memory turns gradients away (not under "recent", "random")


# 10 steps with topC 3 and decay 0.9: full memories that both evict and turn gradients away.
CASES = {
    "Adam_C": Case(lambda groups: critgrad.Adam_C(groups, lr=0.05, topC=3, decay=DECAY)),
    "AdamW_C global_norm": Case(
        lambda groups: critgrad.AdamW_C(
            groups, lr=0.05, weight_decay=0.1, topC=3, decay=DECAY, key="global_norm"
        )
    ),
    "SGD_C momentum per_tensor": Case(
        lambda groups: critgrad.SGD_C(
            groups, lr=0.1, momentum=0.9, topC=3, decay=DECAY, synced=False
        )
    ),
    # The other selection rules and the memory-only direction (the sharded stores are read at
    # the replaced slot before the offer); the seed is set so that every process draws alike.
    "SGD_C random memory-only per_tensor": Case(
        lambda groups: critgrad.SGD_C(
            [{**g, "selection_seed": 11} for g in groups],
            lr=0.05,
            topC=3,
            decay=DECAY,
            key="per_tensor",
            selection="random",
            include_current=False,
        ),
        rejects=False,
    ),
    "Adam_C smallest": Case(
        lambda groups: critgrad.Adam_C(groups, lr=0.05, topC=3, decay=DECAY, selection="smallest")
    ),
    "Adam_C bf16 compute, bf16 store": Case(
        lambda groups: critgrad.Adam_C(
            groups, lr=0.05, topC=3, decay=DECAY, store_dtype=torch.bfloat16
        ),
        dtype=torch.float32,
        compute_dtype=torch.bfloat16,
    ),
}

# How far two sharded processes may be from one process, and why they differ at all. Both compute
# the same gradients (each rank's half-batch gradient, divided by 2 and summed: exact in either
# order). What differs is each key: the norm of a whole gradient against the square root of the
# sum of its shards' squared norms, another order of rounding; and the elementwise updates of
# shards against whole tensors (vectorised in other chunks). Measured here (torch 2.13, CPU, 10
# steps): float64 parameters, stores and sums within 2.3e-16 (values of order 1), keys and
# priorities within 2e-16 relative; float32 with bf16 compute: parameters, stores and sums equal,
# keys and priorities within 1.4e-8 relative. The tolerances leave a margin of 70x or more, far
# below what one gradient admitted or stored wrongly moves (1e-2 and more).
TOLERANCE = {torch.float64: 1e-13, torch.float32: 1e-6}


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an all-gather for a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def snapshot(model: nn.Module, opt: critgrad.CriticalGradients) -> dict[str, Any]:
    return {
        "params": [full(p.detach()).clone() for p in model.parameters()],
        "memory": [
            {k: full(v).clone() for k, v in opt.memory[p].items()} for p in model.parameters()
        ],
        "stats": opt.memory_stats(),
    }


def train_sharded(rank: int, case: Case) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor.debug import CommDebugMode

    model = make_model(case.dtype)
    mesh = init_device_mesh("cpu", (WORLD,))
    policy = MixedPrecisionPolicy(param_dtype=case.compute_dtype, reduce_dtype=case.dtype)
    for layer in (model[0], model[2], model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    opt = case.make(param_groups(model))
    x, y = batches(STEPS, case.dtype)
    for t in range(STEPS):
        opt.zero_grad()
        loss(model, x[t, half(rank)], y[t, half(rank)], case.compute_dtype).backward()
        with CommDebugMode() as comm:
            opt.step()
    result = snapshot(model, opt)
    # The collectives of the last step (of the optimizer only: FSDP2's own are in backward).
    result["collectives"] = {str(op): n for op, n in comm.get_comm_counts().items() if n}
    states = [opt.state[p] for p in model.parameters()]
    result["placements"] = [
        (
            str(p.placements),
            str(s["critical_store"].placements),
            str(s["critical_sum_scaled"].placements),
        )
        for p, s in zip(model.parameters(), states)
    ]
    # Bytes of storage this rank holds for the stores and running sums (a view of a whole tensor
    # would count the whole storage).
    result["bytes"] = sum(
        s[name].to_local().untyped_storage().nbytes()
        for s in states
        for name in ("critical_store", "critical_sum_scaled")
    )
    return result


def train_single(case: Case) -> dict[str, Any]:
    model = make_model(case.dtype)
    opt = case.make(param_groups(model))
    x, y = batches(STEPS, case.dtype)
    for t in range(STEPS):
        opt.zero_grad()
        set_data_parallel_grads(model, x[t], y[t], case.compute_dtype)
        opt.step()
    result = snapshot(model, opt)
    result["bytes"] = sum(
        opt.state[p][name].untyped_storage().nbytes()
        for p in model.parameters()
        for name in ("critical_store", "critical_sum_scaled")
    )
    return result


def keys_of_a_mixed_group() -> dict[str, Any]:
    """A group holding a sharded tensor (unevenly: 5 rows on 2 ranks), a replicated DTensor and a
    plain tensor, and a group holding only replicated tensors: the keys are the whole
    gradients' norms, each counted once, and only the first group communicates."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 3), (4,), (2, 2), (3,)]
    values = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    layouts = [[Shard(0)], [Replicate()], None, [Replicate()]]

    def placed(t, layout):
        return (
            t.clone() if layout is None else distribute_tensor(t, mesh, layout, src_data_rank=None)
        )

    params = [nn.Parameter(placed(v, layout)) for v, layout in zip(values, layouts)]
    for p, g, layout in zip(params, grads, layouts):
        p.grad = placed(g, layout)
    groups = [{"params": params[:3]}, {"params": params[3:]}]
    opt = critgrad.CriticalGradients(torch.optim.SGD(groups, lr=0.1), topC=2, key="per_tensor")
    with CommDebugMode() as comm:
        opt.step()
    return {
        "keys": [opt.state[p]["critical_key"].item() for p in params],
        "norms": [g.norm().item() for g in grads],
        "collectives": {str(op): n for op, n in comm.get_comm_counts().items() if n},
        "shard_rows": params[0].to_local().shape[0],
        "store_rows": opt.state[params[0]]["critical_store"].to_local().shape[1],
    }


def traced_plan() -> dict[str, Any]:
    """The plan of a step under FSDP2 (the memory full), where the keys' all-reduce and the views
    of the shards are, traced by dynamo. (The whole step traces as one graph too, measured with
    torch 2.13; its trace costs 15-30 s more here.)"""
    from torch.distributed.fsdp import fully_shard

    model = make_model(torch.float32)
    fully_shard(model)
    opt = critgrad.Adam_C(model.parameters(), lr=0.05, topC=2)
    x, y = batches(3, torch.float32)
    for t in range(3):
        opt.zero_grad()
        loss(model, x[t], y[t]).backward()
        if t < 2:
            opt.step()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        result = torch._dynamo.explain(lambda: opt._plan(opt.param_groups[0]))()
    reasons = [str(r.reason).splitlines()[0] for r in result.break_reasons]
    return {"graphs": result.graph_count, "breaks": result.graph_break_count, "reasons": reasons}


def worker(rank: int, folder: str) -> None:
    init_process_group(rank, folder)
    try:
        results = {name: train_sharded(rank, case) for name, case in CASES.items()}
        results["mixed group"] = keys_of_a_mixed_group()
        results["traced"] = traced_plan()
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_workers(worker, str(tmp_path_factory.mktemp("fsdp")))


@pytest.fixture(scope="module")
def single():
    return one_thread(lambda: {name: train_single(case) for name, case in CASES.items()})


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
@pytest.mark.parametrize("name", list(CASES))
def test_two_sharded_processes_equal_one_process(ranks, single, name):
    expected = single[name]
    tol = TOLERANCE[CASES[name].dtype]
    for rank in ranks:
        saved = rank[name]
        for row, want in zip(saved["stats"], expected["stats"]):
            # Admissions, rejections, evictions, ages and fill are decisions: exactly the same.
            assert {k: v for k, v in row.items() if k not in FLOAT_STATS} == {
                k: v for k, v in want.items() if k not in FLOAT_STATS
            }
            for key in FLOAT_STATS:
                assert row[key] == pytest.approx(want[key], rel=tol), key
        for a, b in zip(saved["params"], expected["params"]):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        for got, want in zip(saved["memory"], expected["memory"]):
            for key in ("critical_age", "critical_stats"):
                assert torch.equal(got[key], want[key]), key
            for key in ("critical_store", "critical_sum", "critical_priority"):
                assert got[key].dtype == want[key].dtype, key
                torch.testing.assert_close(got[key], want[key], rtol=tol, atol=tol, msg=key)
    # The run exercises a full memory that both evicts and turns gradients away, in each group.
    for row in expected["stats"]:
        rejects = CASES[name].rejects
        assert row["filled"] == row["capacity"] and row["evicted"] > 0
        assert (row["rejected"] > 0) == rejects


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_the_ranks_agree_exactly(ranks):
    # The all-reduce hands every rank the same keys, so every decision and every priority agrees.
    for name in CASES:
        first, other = ranks[0][name], ranks[1][name]
        assert first["stats"] == other["stats"]
        for a, b in zip(first["memory"], other["memory"]):
            for key in ("critical_priority", "critical_age", "critical_stats"):
                assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_memory_per_rank_is_one_nth_and_sharded_like_the_parameters(ranks, single):
    for name in CASES:
        for rank in ranks:
            assert rank[name]["bytes"] * WORLD == single[name]["bytes"], name
            for param, store, total in rank[name]["placements"]:
                assert param == total == "(Shard(dim=0),)"
                assert store == "(Shard(dim=1),)"  # (topC, *shape): the parameter's dim 0


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_one_all_reduce_per_sharded_group_and_nothing_else(ranks):
    for name in CASES:
        for rank in ranks:
            # Two groups (weights, biases), each sharded: two all-reduces of 2 floats per step.
            assert rank[name]["collectives"] == {"c10d_functional.all_reduce": 2}, name
    for rank in ranks:
        # The replicated-only group communicates nothing; the mixed group once.
        assert rank["mixed group"]["collectives"] == {"c10d_functional.all_reduce": 1}


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_keys_are_whole_gradient_norms_each_counted_once(ranks):
    for rank in ranks:
        saved = rank["mixed group"]
        # Summing two shards' squared norms and the square root differ from one norm in the last
        # bits (float64: within 2 ulps here).
        assert saved["keys"] == pytest.approx(saved["norms"], rel=1e-14)
    # Rows 0-2 on rank 0 and 3-4 on rank 1, the store sharded along the same rows.
    assert [r["mixed group"]["shard_rows"] for r in ranks] == [3, 2]
    assert [r["mixed group"]["store_rows"] for r in ranks] == [3, 2]


@pytest.mark.timeout(WORKER_DEADLINE_S + 60)
def test_the_plan_traces_as_one_graph_under_fsdp2(ranks):
    for rank in ranks:
        assert rank["traced"] == {"graphs": 1, "breaks": 0, "reasons": []}
