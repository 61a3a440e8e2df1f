"""Give any torch optimizer a memory of critical gradients.

:class:`CriticalGradients` wraps an existing ``torch.optim.Optimizer``. At each step it replaces
every gradient by an aggregate of that gradient and the memory, lets the wrapped optimizer run its
own unmodified update, puts the user's gradient back and offers it to the memory. The math lives
in :mod:`critgrad.memory`; this file gathers per-parameter state and calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _fused, _kernels
from . import memory as M

MEMORY_OPTIONS = ("topC", "decay", "kappa", "aggr", "key", "store_dtype")
"""Per-group hyperparameters of the memory; they live in ``param_groups`` beside ``lr``."""

MEMORY_STATE_KEYS = (
    "critical_store",
    "critical_sum",
    "critical_priority",
    "critical_age",
    "critical_stats",
)
"""Per-parameter memory state; saved under these keys inside the usual per-parameter entries."""

# The running sum of the store is updated as ``sum += new - evicted``, which accumulates rounding
# error; it is recomputed from the store after every ``_RESYNC_PER_SLOT * topC`` evictions, which
# costs topC reads every that many steps: a constant fraction of a pass per step whatever topC is.
_RESYNC_PER_SLOT = 8

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_memory_options(options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first invalid memory hyperparameter and its allowed values."""
    topC = options["topC"]
    if isinstance(topC, bool) or not isinstance(topC, int) or topC < 1:
        raise ValueError(f"Invalid topC: {topC!r} (must be an integer >= 1)")
    decay = options["decay"]
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
        raise ValueError(f"Invalid decay: {decay!r} (must be a number in [0, 1])")
    kappa = options["kappa"]
    if (
        isinstance(kappa, bool)
        or not isinstance(kappa, (int, float))
        or not math.isfinite(kappa)
        or kappa < 0
    ):
        raise ValueError(f"Invalid kappa: {kappa!r} (must be a finite number >= 0)")
    if options["aggr"] not in M.AGGREGATIONS:
        raise ValueError(f"Invalid aggr: {options['aggr']!r} (must be one of {M.AGGREGATIONS})")
    if options["key"] not in M.KEY_MODES:
        raise ValueError(f"Invalid key: {options['key']!r} (must be one of {M.KEY_MODES})")
    store_dtype = options["store_dtype"]
    if store_dtype is not None and (
        not isinstance(store_dtype, torch.dtype) or not store_dtype.is_floating_point
    ):
        raise ValueError(
            f"Invalid store_dtype: {store_dtype!r} (must be None or a floating "
            "point torch.dtype such as torch.bfloat16)"
        )


def key_from_synced(synced: bool | None, key: str | None) -> str:
    """Resolve the reference package's ``synced`` flag and the explicit ``key`` into one mode."""
    if synced is not None and not isinstance(synced, bool):
        raise ValueError(f"Invalid synced: {synced!r} (must be True, False or None)")
    implied = None if synced is None else ("sum_of_norms" if synced else "per_tensor")
    if key is None:
        return implied or "sum_of_norms"
    if implied is not None and implied != key:
        raise ValueError(
            f"synced={synced} means key={implied!r}, but key={key!r} was given; "
            "pass only one of them"
        )
    return key


def memory_dtypes(param: Tensor, group: Mapping[str, Any]) -> dict[str, torch.dtype]:
    """The dtype of each memory tensor of ``param`` (one rule for creation and for reload)."""
    store_dtype = group["store_dtype"] or param.dtype
    if store_dtype in _LOW_PRECISION or param.dtype in _LOW_PRECISION:
        # A low-precision store keeps an exact float32 sum of what it holds.
        sum_dtype = torch.promote_types(
            torch.promote_types(param.dtype, store_dtype), torch.float32
        )
    else:
        sum_dtype = torch.promote_types(param.dtype, store_dtype)
    return {
        "critical_store": store_dtype,
        "critical_sum": sum_dtype,
        "critical_priority": torch.float64,
        "critical_age": torch.int64,
        "critical_stats": torch.int64,
    }


class CriticalGradients(Optimizer):
    r"""Wrap a torch optimizer with a memory of critical gradients.

    For every parameter the wrapper keeps up to ``topC`` past gradients, the ones with the largest
    *priority*: the key (an L2 norm of the raw gradient) decayed by ``decay`` each step since it
    was stored. At each step, with g the raw gradient and B the n stored gradients (before this
    step's gradient enters):

    .. math::
        d = \begin{cases}
            g + \kappa\,\mathrm{mean}(B) & \text{aggr = sum} \\
            \tfrac12\,(g + \kappa\,\mathrm{mean}(B)) & \text{aggr = mid} \\
            (g + \kappa \textstyle\sum B)/(n + 1) & \text{aggr = mean}
        \end{cases}
        \qquad (d = g \text{ when } B \text{ is empty})

    The wrapped optimizer then runs its own update with d in place of g (momentum, moments, weight
    decay all see d); ``p.grad`` is g again when ``step`` returns. Then g enters the memory if
    there is room or if its key is strictly greater than the smallest priority (replacing that
    entry), and every priority is multiplied by ``decay``. A non-finite key never enters.

    Args:
        optimizer: the torch optimizer to give a memory; its ``param_groups`` and ``state`` are
            used as they are (LR schedulers see the same group dicts).
        topC (int): how many gradients each parameter keeps (default: 10).
        decay (float): priority decay per step, in [0, 1] (default: 0.7).
        kappa (float): weight of the memory, >= 0 (default: 1.0). ``kappa=0`` switches the memory
            off for the group: the step is exactly the wrapped optimizer's and nothing is
            allocated or recorded.
        aggr (str): ``"sum"``, ``"mid"`` or ``"mean"`` (default: ``"mean"``).
        key (str): ``"sum_of_norms"`` (one key per group: the sum of the tensors' norms; the
            reference package's ``synced=True``), ``"per_tensor"`` (``synced=False``) or
            ``"global_norm"`` (one key per group: the L2 norm of all its gradients together)
            (default: ``"sum_of_norms"``).
        store_dtype (torch.dtype, optional): dtype of the stored gradients, e.g. ``torch.bfloat16``
            to halve the memory (their running sum is then kept exactly in float32). Default: the
            parameter's dtype.
        compile (bool): run the memory's elementwise work (aggregate, running sum, store) as one
            ``torch.compile``-d pass per tensor instead of several foreach operations (default:
            False). Faster on large models; the first step pays the compilation (seconds).

    All of these can also be given per parameter group, and changed between steps (``topC`` and
    ``store_dtype`` only before the group's first step).

    The stored gradients and their running sum live on each parameter's device; the bookkeeping
    (``topC`` priorities and ages per tensor) lives on the host, where the admission decision is
    taken after one device synchronisation per group and step. ``state_dict()`` holds all of it
    as tensors inside each parameter's entry, under keys starting with ``critical_``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = CriticalGradients(torch.optim.Adam(model.parameters(), lr=1e-3), topC=5)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
        >>> opt.memory_stats()[0]["admitted"]
        2
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        topC: int = 10,
        decay: float = 0.7,
        kappa: float = 1.0,
        aggr: str = "mean",
        key: str = "sum_of_norms",
        store_dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
        if isinstance(optimizer, CriticalGradients):
            raise TypeError("optimizer already has a critical-gradient memory")
        memory_defaults = {
            "topC": topC,
            "decay": decay,
            "kappa": kappa,
            "aggr": aggr,
            "key": key,
            "store_dtype": store_dtype,
        }
        check_memory_options(memory_defaults)
        if not isinstance(compile, bool):
            raise ValueError(f"Invalid compile: {compile!r} (must be True or False)")
        self.base = optimizer
        self.compile = compile
        self.memory: dict[Tensor, dict[str, Tensor]] = {}
        self._memory_defaults = memory_defaults
        self._tables: dict[int, _Table] = {}
        self._last_keys: dict[int, np.ndarray] = {}
        self._wrapping = True
        # Optimizer.__init__ installs the hooks that schedulers and profilers rely on; it calls
        # add_param_group for each of the base's groups, which we adopt as the very same dicts.
        super().__init__(optimizer.param_groups, {**optimizer.defaults, **memory_defaults})
        self._wrapping = False
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state

    # ---------------------------------------------------------------- torch.optim API

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group)}")
        options = {
            name: param_group.get(name, default) for name, default in self._memory_defaults.items()
        }
        check_memory_options(options)
        if self._wrapping:
            self.param_groups.append(param_group)
        else:
            self.base.add_param_group(param_group)
            param_group = self.base.param_groups[-1]
        for name, value in options.items():
            param_group.setdefault(name, value)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        # The base's repr already lists every group option, the memory's included.
        name = type(self).__name__
        if type(self) is CriticalGradients:
            name = f"CriticalGradients({type(self.base).__name__})"
        else:
            name = f"critgrad.{name}"
        lines = repr(self.base).splitlines()
        return "\n".join([f"{name} ("] + lines[1:])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Perform one optimization step (the closure, if given, is evaluated first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        offers = []
        for index, group in enumerate(self.param_groups):
            offer = self._offer(index, group)
            if offer is not None:
                offers.append(offer)
        if self._fused_step(offers):
            return loss
        for offer in offers:
            if offer.compiled:
                self._compiled_pass(offer)
            else:
                offer.directions = self._directions(offer)
        try:
            for offer in offers:
                offer.swap_in()
            self.base.step()
        finally:
            for offer in offers:
                offer.swap_out()
        for offer in offers:
            if not offer.compiled:
                self._store(offer)
            self._finish(offer)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, with the memory inside each parameter's entry."""
        state_dict = self.base.state_dict()
        index = 0
        packed = dict(state_dict["state"])
        for group in self.param_groups:
            for p in group["params"]:
                mem = self.memory.get(p)
                if mem is not None:
                    packed[index] = {**packed.get(index, {}), **mem}
                index += 1
        state_dict["state"] = packed
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (or by the plain wrapped optimizer).

        The memory is restored on each parameter's device with the dtypes it was created with.
        A state saved with another ``topC``, or for parameters of other shapes, is refused.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, this "
                f"optimizer has {len(self.param_groups)}"
            )
        params = [p for group in self.param_groups for p in group["params"]]
        base_state: dict[Any, Any] = {}
        memory_state: dict[int, dict[str, Tensor]] = {}
        for index, entry in state_dict["state"].items():
            memory_part = {k: v for k, v in entry.items() if k in MEMORY_STATE_KEYS}
            rest = {k: v for k, v in entry.items() if k not in MEMORY_STATE_KEYS}
            if memory_part:
                memory_state[index] = memory_part
            if rest:
                base_state[index] = rest
        group_of = {}
        index = 0
        for group, saved in zip(self.param_groups, saved_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't "
                    "match the size of the optimizer's group"
                )
            saved_topC = saved.get("topC", group["topC"])
            for _ in group["params"]:
                if index in memory_state and saved_topC != group["topC"]:
                    raise ValueError(
                        f"the state was saved with topC={saved_topC}, this optimizer "
                        f"has topC={group['topC']}; construct it with "
                        f"topC={saved_topC} to resume"
                    )
                group_of[index] = saved
                index += 1
        for index, mem in memory_state.items():
            p = params[index]
            store = mem["critical_store"]
            if tuple(store.shape[1:]) != tuple(p.shape):
                raise ValueError(
                    f"the saved memory of parameter {index} holds gradients of shape "
                    f"{tuple(store.shape[1:])}, the parameter has shape "
                    f"{tuple(p.shape)}: the state was saved for other parameters"
                )
        old_groups = self.param_groups
        self.base.load_state_dict({**state_dict, "state": base_state})
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        for group, old in zip(self.param_groups, old_groups):
            # A state saved by the plain optimizer has no memory options: keep the current ones.
            for name in MEMORY_OPTIONS:
                group.setdefault(name, old[name])
        self.memory = {}
        self._tables = {}
        self._last_keys = {}
        index = 0
        for group_index, group in enumerate(self.param_groups):
            for row, p in enumerate(group["params"]):
                mem = memory_state.get(index)
                index += 1
                if mem is None:
                    continue
                table = self._table_of(group_index, group)
                dtypes = memory_dtypes(p, group)
                loaded = {
                    k: mem[k].to(device=p.device, dtype=dtypes[k], copy=True)
                    for k in ("critical_store", "critical_sum")
                }
                views = table.row(row)
                for k, view in views.items():
                    view.copy_(mem[k].to(dtype=view.dtype))
                self.memory[p] = {**loaded, **views}

    # ---------------------------------------------------------------- statistics

    @torch.no_grad()
    def memory_stats(self) -> list[dict[str, Any]]:
        """Statistics of the memory, one dict per parameter group.

        Counts are of tensor-gradients: a group of 3 tensors offers 3 gradients per step.

        - ``offered``, ``admitted``: gradients offered to and admitted into the memory;
        - ``rejected``: finite gradients turned away because the memory was full and their key
          was not above the smallest priority;
        - ``nonfinite``: gradients with an inf/NaN key (never admitted);
        - ``evicted``, ``mean_eviction_age``: entries replaced, and their mean age in steps;
        - ``filled``, ``capacity``: entries held now and ``topC`` x tensors;
        - ``mean_age``, ``max_age``: ages in steps of the entries held now (None when empty);
        - ``min_priority``, ``mean_priority``: of the entries held now (after this step's decay);
        - ``last_key``: the mean key of the gradients offered at the last step, to set against
          the priorities (None before the first offer).

        Computed on the host from the bookkeeping; no device synchronisation.
        """
        results = []
        for index, group in enumerate(self.param_groups):
            table = self._tables.get(index)
            row: dict[str, Any] = dict.fromkeys(M.STAT_FIELDS, 0)
            row.update(
                filled=0,
                capacity=group["topC"] * len(group["params"]),
                mean_age=None,
                max_age=None,
                mean_eviction_age=None,
                min_priority=None,
                mean_priority=None,
                last_key=None,
            )
            if table is not None:
                for name, value in zip(M.STAT_FIELDS, table.stats.sum(0).tolist()):
                    row[name] = value
                held = table.age[table.age >= 0]
                row["filled"] = int(held.size)
                if held.size:
                    row["mean_age"] = float(held.mean())
                    row["max_age"] = int(held.max())
                filled = table.age >= 0
                if filled.any():
                    row["min_priority"] = float(table.priority[filled].min())
                    row["mean_priority"] = float(table.priority[filled].mean())
                keys = self._last_keys.get(index)
                if keys is not None:
                    row["last_key"] = float(keys.mean())
            if row["evicted"]:
                row["mean_eviction_age"] = row["evicted_age_sum"] / row["evicted"]
            del row["evicted_age_sum"]
            results.append(row)
        return results

    # ---------------------------------------------------------------- the memory

    def _group_index(self, param: Tensor) -> int:
        for index, group in enumerate(self.param_groups):
            if any(param is p for p in group["params"]):
                return index
        raise KeyError("parameter not in this optimizer")

    def _table_of(self, index: int, group: Mapping[str, Any]) -> _Table:
        """The group's bookkeeping (priorities, ages, counts), created empty the first time."""
        table = self._tables.get(index)
        n, topC = len(group["params"]), group["topC"]
        if table is None:
            table = _Table(n, topC)
            self._tables[index] = table
        elif table.priority.shape != (n, topC):
            raise ValueError(
                f"parameter group {index} changed after its memory was created (it had "
                f"{table.priority.shape[0]} tensors and topC={table.priority.shape[1]}, now "
                f"{n} and topC={topC}); topC can only be set before the group's first step and "
                "parameters are added with add_param_group"
            )
        return table

    def _memory_of(
        self, param: Tensor, group: Mapping[str, Any], table: _Table, row: int
    ) -> dict[str, Tensor]:
        """The memory state of ``param``, created empty on its device the first time."""
        mem = self.memory.get(param)
        if mem is None:
            dtypes = memory_dtypes(param, group)
            mem = {
                "critical_store": torch.zeros(
                    (group["topC"], *param.shape),
                    dtype=dtypes["critical_store"],
                    device=param.device,
                ),
                "critical_sum": torch.zeros_like(
                    param, dtype=dtypes["critical_sum"], memory_format=torch.preserve_format
                ),
                **table.row(row),
            }
            self.memory[param] = mem
        return mem

    def _offer(self, index: int, group: dict[str, Any]) -> _Offer | None:
        """Decide admission for the group's gradients and build the directions (no state change)."""
        check_memory_options(group)
        if group["kappa"] == 0:
            return None
        rows = [i for i, p in enumerate(group["params"]) if p.grad is not None]
        if not rows:
            return None
        params = [group["params"][i] for i in rows]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                "critgrad does not support sparse gradients; give the sparse "
                "parameters their own group with kappa=0"
            )
        table = self._table_of(index, group)
        mems = [self._memory_of(p, group, table, i) for p, i in zip(params, rows)]
        if all(g.dtype in (torch.float32, torch.float64) for g in grads):
            norms = torch._foreach_norm(grads)
        else:  # low-precision gradients: accumulate their norms in float32 at least
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        if len({n.device for n in norms}) > 1:
            norms = [n.to(grads[0].device) for n in norms]
        keys = M.keys_from_norms(torch.stack(norms).to(torch.float64), group["key"])
        # The only host synchronisation of the step for this group.
        keys = keys.cpu().numpy()
        if len(rows) == len(group["params"]):
            row_index = None  # the usual case: every tensor has a gradient, work on the table
            priority, age, stats = table.priority, table.age, table.stats
        else:
            row_index = np.asarray(rows)
            priority, age, stats = (
                table.priority[row_index],
                table.age[row_index],
                table.stats[row_index],
            )
        self._last_keys[index] = keys
        admit, slot, filled = M.admission(keys, priority, age)
        evicted_column = M.STAT_FIELDS.index("evicted")
        offer = _Offer(
            index,
            group,
            params,
            grads,
            mems,
            keys,
            priority,
            age,
            stats,
            admit,
            slot,
            filled,
            admit.tolist(),
            slot.tolist(),
            filled.tolist(),
            stats[:, evicted_column].tolist(),
        )
        offer.table, offer.row_index = table, row_index
        offer.compiled = self.compile and len({g.device for g in grads}) == 1
        return offer

    def _directions(self, offer: _Offer) -> list[Tensor | None]:
        """The aggregate for each gradient (None where it is the gradient itself)."""
        group = offer.group
        directions: list[Tensor | None] = [None] * len(offer.params)
        # Gradients whose memories hold the same count share coefficients: one foreach call each.
        by_coefficients: dict[tuple[float, float], list[int]] = {}
        for i, n in enumerate(offer.filled_host):
            c, s = M.aggregation_coefficients(group["aggr"], n, group["kappa"])
            if c != 0.0 or s != 1.0:
                by_coefficients.setdefault((c, s), []).append(i)
        for (c, s), rows in by_coefficients.items():
            grads = [offer.grads[i] for i in rows]
            sums = [offer.mems[i]["critical_sum"] for i in rows]
            if all(g.dtype == m.dtype for g, m in zip(grads, sums)):
                out = torch._foreach_add(grads, sums, alpha=c)
                if s != 1.0:
                    torch._foreach_mul_(out, s)
            else:
                out = [torch.add(g, m, alpha=c).mul_(s).to(g.dtype) for g, m in zip(grads, sums)]
            for i, d in zip(rows, out):
                directions[i] = d
        return directions

    def _fused_step(self, offers: list[_Offer]) -> bool:
        """Run the memory and the base update as one compiled pass, where that is supported.

        Only with ``compile=True``, for SGD, Adam and AdamW, and when every group takes part (a
        group left to the base's own step would otherwise be stepped twice).
        """
        if not (
            self.compile
            and offers
            and len(offers) == len(self.param_groups)
            and all(offer.compiled for offer in offers)
        ):
            return False
        kind = _fused.kind_of(self.base, offers)
        if kind is None:
            return False
        for offer in offers:
            _fused.step(self.base, offer, kind)
            self._finish(offer)
        return True

    def _compiled_pass(self, offer: _Offer) -> None:
        """Directions and admission writes for the group in one compiled pass per tensor."""
        group = offer.group
        rows = []
        for n, admitted in zip(offer.filled_host, offer.admit_host):
            c, s = M.aggregation_coefficients(group["aggr"], n, group["kappa"])
            rows.append((c, s, float(admitted)))
        device = offer.grads[0].device
        coefficients = torch.tensor(rows, dtype=torch.float64).to(device, non_blocking=True)
        slots = [m["critical_store"][slot] for m, slot in zip(offer.mems, offer.slot_host)]
        sums = [m["critical_sum"] for m in offer.mems]
        offer.directions = _kernels.run_compiled(
            _kernels.memory_pass, offer.grads, sums, slots, coefficients
        )

    def _store(self, offer: _Offer) -> None:
        """Write the admitted gradients into their slots and the running sums (eager path)."""
        slots, sums, grads, evicting = [], [], [], []
        for i, admitted in enumerate(offer.admit_host):
            if not admitted:
                continue
            mem = offer.mems[i]
            slots.append(mem["critical_store"][offer.slot_host[i]])
            sums.append(mem["critical_sum"])
            grads.append(offer.grads[i])
            if offer.filled_host[i] == offer.group["topC"]:
                evicting.append(len(slots) - 1)
        if evicting:
            torch._foreach_sub_([sums[j] for j in evicting], [slots[j] for j in evicting])
        if slots:
            torch._foreach_copy_(slots, grads)
            torch._foreach_add_(sums, slots)

    def _finish(self, offer: _Offer) -> None:
        """Bound the running sums' drift, then decay priorities, age entries, count."""
        topC = offer.group["topC"]
        resync_every = _RESYNC_PER_SLOT * topC
        for i, admitted in enumerate(offer.admit_host):
            if (
                admitted
                and offer.filled_host[i] == topC
                and (offer.evicted_host[i] + 1) % resync_every == 0
            ):
                mem = offer.mems[i]
                torch.sum(
                    mem["critical_store"],
                    dim=0,
                    dtype=mem["critical_sum"].dtype,
                    out=mem["critical_sum"],
                )
        evicted_age = M.update_bookkeeping_(
            offer.keys, offer.priority, offer.age, offer.admit, offer.slot, offer.group["decay"]
        )
        M.add_statistics_(offer.stats, offer.keys, offer.admit, offer.filled, topC, evicted_age)
        if offer.row_index is not None:  # worked on copies of some rows: write them back
            table = offer.table
            table.priority[offer.row_index] = offer.priority
            table.age[offer.row_index] = offer.age
            table.stats[offer.row_index] = offer.stats


class _Table:
    """A group's bookkeeping, one row per tensor of the group: priorities, ages and counts.

    It lives on the host, where the admission decision is made (the decision picks which slot of
    the store, on the parameter's device, to write). The arrays are numpy views of CPU tensors, so
    each tensor's memory state holds torch views of its row, which ``state_dict`` saves and
    ``load_state_dict`` restores per parameter.
    """

    def __init__(self, n: int, topC: int) -> None:
        self.tensors = {
            "critical_priority": torch.zeros((n, topC), dtype=torch.float64),
            "critical_age": torch.full((n, topC), -1, dtype=torch.int64),
            "critical_stats": torch.zeros((n, len(M.STAT_FIELDS)), dtype=torch.int64),
        }
        self._bind()

    def _bind(self) -> None:
        self.priority = self.tensors["critical_priority"].numpy()
        self.age = self.tensors["critical_age"].numpy()
        self.stats = self.tensors["critical_stats"].numpy()

    def row(self, i: int) -> dict[str, Tensor]:
        return {name: tensor[i] for name, tensor in self.tensors.items()}

    # Copies (deepcopy, pickle) carry the tensors; the numpy views are rebuilt on them, so that
    # the copy's bookkeeping and the rows its state_dict saves stay one and the same memory.
    def __getstate__(self) -> dict[str, Any]:
        return {"tensors": self.tensors}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tensors = state["tensors"]
        self._bind()


class _Offer:
    """What one group's step decided, carried from before the base step to after it."""

    def __init__(
        self,
        index,
        group,
        params,
        grads,
        mems,
        keys,
        priority,
        age,
        stats,
        admit,
        slot,
        filled,
        admit_host,
        slot_host,
        filled_host,
        evicted_host,
    ):
        self.index, self.group, self.params, self.grads, self.mems = (
            index,
            group,
            params,
            grads,
            mems,
        )
        self.keys, self.priority, self.age, self.stats = keys, priority, age, stats
        self.admit, self.slot, self.filled = admit, slot, filled
        self.admit_host, self.slot_host = admit_host, slot_host
        self.filled_host, self.evicted_host = filled_host, evicted_host
        self.directions: list[Tensor | None] = []
        self.compiled = False
        self.table: _Table | None = None
        self.row_index: Tensor | None = None

    def swap_in(self) -> None:
        for p, d in zip(self.params, self.directions):
            if d is not None:
                p.grad = d

    def swap_out(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g
