"""Where the memory lives: its entries in each parameter's ``state``, their dtypes, new empty
memories, saved memories checked and restored, the read-only ``opt.memory`` view, and the
statistics read from them (the only reads of the device; never in ``step()``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from . import _distributed as D
from . import memory as M

STORE, SCALED_SUM, PRIORITY, AGE, STATS, KEY = (
    "critical_store",
    "critical_sum_scaled",
    "critical_priority",
    "critical_age",
    "critical_stats",
    "critical_key",
)
MEMORY_STATE_KEYS = (STORE, SCALED_SUM, PRIORITY, AGE, STATS, KEY)
"""The memory's entries in each parameter's ``state`` (and so in ``state_dict()``): the store
``(topC, *shape)``, the sum of the stored gradients times :func:`critgrad.memory.sum_scale`,
priorities and ages ``(topC,)``, the counts of :data:`critgrad.memory.STAT_FIELDS` and the last
key offered. Checkpoints of critgrad 0.1.0 hold ``critical_sum`` (unscaled) and no key: they load.
"""

LOW_PRECISION = (torch.float16, torch.bfloat16)


LOW_PRECISION = (torch.float16, torch.bfloat16)


def memory_dtypes(param: Tensor, group: Mapping[str, Any]) -> dict[str, torch.dtype]:
    """The dtype of each memory tensor of ``param`` (one rule for creation and for reload)."""
    store_dtype = group["store_dtype"] or param.dtype
    if param.is_complex() and not store_dtype.is_complex:
        raise ValueError(
            f"Invalid store_dtype: {store_dtype} cannot hold the complex gradients of a "
            f"{param.dtype} parameter (use None)"
        )
    sum_dtype = torch.promote_types(param.dtype, store_dtype)
    if store_dtype in LOW_PRECISION or param.dtype in LOW_PRECISION:
        # A low-precision store keeps an exact float32 sum of what it holds.
        sum_dtype = torch.promote_types(sum_dtype, torch.float32)
    # Priorities are compared with keys in float64 (Apple's MPS has no float64).
    priority_dtype = torch.float32 if param.device.type == "mps" else torch.float64
    return {
        STORE: store_dtype,
        SCALED_SUM: sum_dtype,
        PRIORITY: priority_dtype,
        AGE: torch.int64,
        STATS: torch.int64,
        KEY: priority_dtype,
    }


def new_memory(p: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
    """An empty memory for ``p``, on its device: nothing stored, priorities 0, ages -1. For a
    DTensor ``p``, the store and running sum of this rank's shard (:func:`sharded` makes them
    DTensors when they enter the state)."""
    dtypes = memory_dtypes(p, group)
    topC, device, shape = group["topC"], p.device, D.local(p).shape
    return {
        STORE: torch.zeros((topC, *shape), dtype=dtypes[STORE], device=device),
        SCALED_SUM: torch.zeros(shape, dtype=dtypes[SCALED_SUM], device=device),
        PRIORITY: torch.zeros(topC, dtype=dtypes[PRIORITY], device=device),
        AGE: torch.full((topC,), -1, dtype=torch.int64, device=device),
        STATS: torch.zeros(len(M.STAT_FIELDS), dtype=torch.int64, device=device),
        # (1,), not 0-d: dynamo reads a 0-d CPU tensor as a Python number, and guards on it.
        KEY: torch.full((1,), math.nan, dtype=dtypes[KEY], device=device),
    }


@torch.compiler.disable
def insert(state: Any, created: list[tuple[Tensor, dict[str, Tensor]]]) -> None:
    """Put new memories into the parameters' state, after the base initialised its own (torch's
    optimizers initialise a parameter's state when it is empty). Never traced: dynamo would
    write back its own view of the state dicts, from before the base initialised them."""
    for p, memory in created:
        state[p].update(sharded(p, memory))


def sharded(p: Tensor, memory: dict[str, Tensor]) -> dict[str, Tensor]:
    """The memory as the state keeps it. For a DTensor parameter, the store and running sum of
    its shard become DTensors sharded exactly like it (the store's dimension k + 1 as the
    parameter's k), sharing their storage: 1/N of the memory on each of N ranks, and
    ``torch.distributed.checkpoint`` saves and reshards them. Priorities, ages, counts and keys
    stay plain tensors: the keys are global, so they are the same on every rank."""
    if not D.is_dtensor(p):
        return memory
    return {
        **memory,
        STORE: D.from_shard(memory[STORE], p, leading=memory[STORE].shape[0]),
        SCALED_SUM: D.from_shard(memory[SCALED_SUM], p),
    }


def working(state: dict[str, Any]) -> dict[str, Any]:
    """The memory the step works on: the state itself, or for a sharded memory the same entries
    with the store and running sum as this rank's shards (views: writes reach the state)."""
    store = state[STORE]
    if not D.is_dtensor(store):
        return state
    return {**state, STORE: store.to_local(), SCALED_SUM: state[SCALED_SUM].to_local()}


def checked(
    saved: dict[str, Tensor], p: Tensor, topC: int, store_dtype: torch.dtype | None, index: int
) -> dict[str, Tensor]:
    """``saved``, if it is a memory of ``p`` that this optimizer can continue; else ValueError."""
    store = saved[STORE]
    if D.is_dtensor(store) and not D.is_dtensor(p):
        raise ValueError(
            f"the saved memory of parameter {index} is sharded over "
            f"{store.device_mesh.size()} ranks (a DTensor), this parameter is not: load it "
            "with torch.distributed.checkpoint (get_optimizer_state_dict / "
            "set_optimizer_state_dict), which reshards the memory for another world size"
        )
    if D.is_dtensor(store) and D.is_dtensor(p) and store.device_mesh != p.device_mesh:
        raise ValueError(
            f"the saved memory of parameter {index} is sharded over {store.device_mesh.size()} "
            f"ranks (mesh {tuple(store.device_mesh.shape)}), this parameter over "
            f"{p.device_mesh.size()} (mesh {tuple(p.device_mesh.shape)}): a state dict of "
            "DTensors loads onto the mesh it was saved on; save and load with "
            "torch.distributed.checkpoint (get_optimizer_state_dict / set_optimizer_state_dict), "
            "which reshards the memory for another world size"
        )
    if tuple(store.shape[1:]) != tuple(p.shape):
        raise ValueError(
            f"the saved memory of parameter {index} holds gradients of shape "
            f"{tuple(store.shape[1:])}, the parameter has shape {tuple(p.shape)}: the state "
            "was saved for other parameters"
        )
    if store.shape[0] != topC:
        raise ValueError(
            f"the state was saved with topC={store.shape[0]}, this optimizer has "
            f"topC={topC}; construct it with topC={store.shape[0]} to resume"
        )
    if store_dtype is not None and store.dtype != store_dtype:
        raise ValueError(
            f"the saved memory of parameter {index} is stored as {store.dtype} but its group "
            f"says store_dtype={store_dtype}: store_dtype cannot change after the group's "
            "first step"
        )
    return saved


def load_with_memory(
    optimizer: Any,
    state_dict: Mapping[str, Any],
    load_rest: Callable[[dict[str, Any]], None],
    options: Iterable[str],
) -> None:
    """Load ``state_dict`` into a memory optimizer: its memory entries (``critical_*``) are checked
    and restored here, the rest is loaded by ``load_rest`` (the base's ``load_state_dict``).

    A state saved by the plain optimizer has no memory options in its groups: the current values
    of ``options`` are kept. Groups are matched by position and parameters by order, as torch does.
    """
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"loaded state dict has {len(saved_groups)} parameter groups, this optimizer "
            f"has {len(optimizer.param_groups)}"
        )
    ids = itertools.chain.from_iterable(g["params"] for g in saved_groups)
    param_of = dict(zip(ids, (p for g in optimizer.param_groups for p in g["params"])))
    topC_of = {p: g["topC"] for g in optimizer.param_groups for p in g["params"]}
    store_dtype_of = {i: g.get("store_dtype") for g in saved_groups for i in g["params"]}
    memory, rest = {}, {}
    for index, entry in state_dict["state"].items():
        saved = {k: v for k, v in entry.items() if k.startswith("critical_")}
        rest[index] = {k: v for k, v in entry.items() if not k.startswith("critical_")}
        if saved and index in param_of:  # (else the base refuses the state below)
            p = param_of[index]
            memory[p] = checked(saved, p, topC_of[p], store_dtype_of[index], index)
    old_groups = optimizer.param_groups
    load_rest({**state_dict, "state": {i: e for i, e in rest.items() if e}})
    for group, old in zip(optimizer.param_groups, old_groups):
        for name in options:
            group.setdefault(name, old[name])
        for p in group["params"]:
            if p in memory:
                optimizer.state[p].update(restored(memory[p], p, group))


def restored(saved: Mapping[str, Tensor], p: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
    """A saved memory on the parameter's device with the dtypes of :func:`memory_dtypes`."""
    dtypes = memory_dtypes(p, group)
    # (A whole store or sum, from a gathered checkpoint, is cut into this rank's part.)
    laid_out = {STORE: D.laid_out(saved[STORE], p, leading=True)}
    restored = {
        name: laid_out.get(name, saved[name]).to(device=p.device, dtype=dtypes[name], copy=True)
        for name in (STORE, PRIORITY, AGE, STATS)
    }
    if SCALED_SUM in saved:
        total = D.laid_out(saved[SCALED_SUM], p)
        restored[SCALED_SUM] = total.to(p.device, dtypes[SCALED_SUM], copy=True)
    else:  # critgrad 0.1.0 saved the plain sum
        plain = D.laid_out(saved["critical_sum"], p).to(p.device, dtypes[SCALED_SUM], copy=True)
        restored[SCALED_SUM] = plain.mul_(M.sum_scale(group["topC"]))
    key = saved.get(KEY, torch.tensor([math.nan]))
    restored[KEY] = key.to(p.device, dtypes[KEY], copy=True)
    return restored


class MemoryView(Mapping):
    """``opt.memory``: each parameter's memory as a dict of tensors, read from its state."""

    def __init__(self, optimizer: Any) -> None:
        self._optimizer = optimizer

    def __getitem__(self, p: Tensor) -> dict[str, Tensor]:
        state = self._optimizer.state.get(p)
        if not state or STORE not in state:
            raise KeyError(p)
        store = state[STORE]
        return {
            "critical_store": store,
            "critical_sum": state[SCALED_SUM] / M.sum_scale(store.shape[0]),
            "critical_priority": state[PRIORITY],
            "critical_age": state[AGE],
            "critical_stats": state[STATS],
        }

    def __iter__(self) -> Iterator[Tensor]:
        groups = self._optimizer.param_groups
        params = dict.fromkeys(p for group in groups for p in group["params"])
        return (p for p in params if STORE in self._optimizer.state.get(p, {}))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def statistics(group: Mapping[str, Any], state: Mapping[Tensor, Any]) -> dict[str, Any]:
    """The row of :meth:`CriticalGradients.memory_stats` for one group (reads the device)."""
    params = list(dict.fromkeys(group["params"]))
    row: dict[str, Any] = dict.fromkeys(M.STAT_FIELDS, 0)
    row.update(
        filled=0,
        capacity=group["topC"] * len(params),
        mean_age=None,
        max_age=None,
        mean_eviction_age=None,
        min_priority=None,
        mean_priority=None,
        last_key=None,
    )
    states = [state[p] for p in params if STORE in state.get(p, {})]
    if states:

        def gathered(name: str) -> Tensor:
            return torch.stack([s[name].cpu() for s in states])

        row.update(zip(M.STAT_FIELDS, gathered(STATS).sum(0).tolist()))
        age, priority = gathered(AGE), gathered(PRIORITY)
        held = age >= 0
        row["filled"] = int(held.sum())
        if row["filled"]:
            row["mean_age"] = float(age[held].double().mean())
            row["max_age"] = int(age[held].max())
            row["min_priority"] = float(priority[held].min())
            row["mean_priority"] = float(priority[held].mean())
        keys = gathered(KEY)
        if not keys.isnan().all():
            row["last_key"] = float(keys.mean())
    if row["evicted"]:
        row["mean_eviction_age"] = row["evicted_age_sum"] / row["evicted"]
    del row["evicted_age_sum"]
    return row
