"""Give any torch optimizer a memory of critical gradients.

:class:`CriticalGradients` wraps an existing ``torch.optim.Optimizer``. At each step it plans the
memory's work for every parameter group (keys, admission, aggregation coefficients), replaces each
gradient by the aggregate of itself and the memory, lets the wrapped optimizer run its own
unmodified update, puts the user's gradient back and commits the plan to the memory. The math
lives in :mod:`critgrad.memory`; this file gathers the per-parameter state and calls it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _distributed as D
from . import _native as N
from . import _prepared as P
from . import _state as S
from . import memory as M
from ._compile import CompiledStep, Resync, resync_or_defer_, run_deferred
from ._state import AGE, MEMORY_STATE_KEYS, PRIORITY, SCALED_SUM, STATS, STORE, memory_dtypes
from .options import (
    MEMORY_OPTIONS,
    SEED,
    check_memory_options,
    draw_seeds,
    key_from_synced,
    python_numbers_,
)

# (The helpers that lived here before, still importable from here.)
__all__ = [
    "MEMORY_OPTIONS",
    "MEMORY_STATE_KEYS",
    "CriticalGradients",
    "check_memory_options",
    "key_from_synced",
    "memory_dtypes",
]


class _Decision(NamedTuple):
    """The admission and the aggregation coefficients of a group's step, as torch tensors."""

    priority: Tensor  # (n, topC)
    age: Tensor  # (n, topC)
    stats: Tensor  # (n, len(STAT_FIELDS))
    admit: Tensor  # (n,) bool
    slot: Tensor  # (n,) int64
    filled: Tensor  # (n,) int64, entries before this step
    b: list[Tensor]  # per tensor, 0-d: the direction is s * g + b * (scaled sum)
    s: list[Tensor] | None  # per tensor, 0-d: None means 1
    # include_current=False: the directions themselves (b and s then go unused), else None
    directions: list[Tensor] | None = None


class _Plan(NamedTuple):
    """One group's step, decided before anything changes: the memories offered a gradient, their
    keys, and the decision (which slot, admitted or not, the aggregation coefficients), taken by
    torch operations or, for float32 tensors on the CPU, by the native kernels."""

    group: dict[str, Any]
    params: list[Tensor]  # each once, with a gradient
    grads: list[Tensor]  # this rank's shards of DTensor gradients
    memories: list[dict[str, Tensor]]  # the parameter's state, or a new memory for it
    new: list[bool]  # the memory enters the state when the plan is committed
    keys: Tensor | None  # (n,) float64; None where the native plan took them (N.Plan.keys)
    decision: _Decision | N.Plan


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
    ``selection`` chooses another rule for what enters; ``include_current=False`` aggregates the
    memory alone, after g was offered to it.

    Args:
        optimizer: the torch optimizer to give a memory; its ``param_groups`` and ``state`` are
            used as they are (LR schedulers see the same group dicts). Attributes and methods the
            wrapper does not define (e.g. schedule-free's ``train()``/``eval()``) are the base's.
            Optimizers that must re-evaluate a closure inside their step (LBFGS) are refused.
        topC (int): how many gradients each parameter keeps (default: 10).
        decay (float): priority decay per step, in [0, 1] (default: 0.7).
        kappa (float): weight of the memory, >= 0 (default: 1.0). ``kappa=0`` switches the memory
            off for the group: the step is exactly the wrapped optimizer's and nothing is
            allocated or recorded.
        aggr (str): ``"sum"``, ``"mid"`` or ``"mean"`` (default: ``"mean"``).
        key (str): ``"sum_of_norms"`` (one key per group: the sum of the tensors' norms; the
            reference package's ``synced=True``), ``"per_tensor"`` (``synced=False``) or
            ``"global_norm"`` (one key per group: the L2 norm of all its gradients together)
            (default: ``"sum_of_norms"``). Norms are computed in the gradients' precision
            (float32 at least; float32 gradients' norms on the CPU's native path sum their
            squares in float64, in an order that does not depend on the threads, then round to
            float32: the same range, the last bits more accurate).
        store_dtype (torch.dtype, optional): dtype of the stored gradients, e.g. ``torch.bfloat16``
            to halve the memory (their running sum is then kept in float32). Default: the
            parameter's dtype.
        selection (str): which gradients the memory keeps; with room every finite gradient
            enters, and when it is full (default: ``"critical"``):
            ``"critical"``: the key replaces the smallest priority iff it is strictly greater;
            ``"recent"``: the gradient replaces the oldest entry (first in, first out);
            ``"smallest"``: the key replaces the largest priority iff it is strictly smaller;
            ``"random"``: the gradient replaces an entry drawn uniformly. The draws are a hash
            of a seed, the memory and its count of offers (:func:`critgrad.memory.random_slots`):
            on the device, without state of their own, the same compiled and eager. The seed is
            drawn from torch's global generator when the group is added (``torch.manual_seed``
            makes runs repeatable) and kept in the group as ``"selection_seed"``, so that
            ``state_dict()`` saves it (in data-parallel training every process must hold the
            same seed, as it holds the same parameters: seed torch alike on every process, or
            set ``selection_seed`` in the group). With ``key="per_tensor"`` each tensor draws
            its own slot; with a key per group the group's tensors draw the same one.
            Priorities decay and ages advance the same way under every rule.
        include_current (bool): ``False`` gives the memory-only direction (the reference
            package's ``SGD_C_Only``): g is offered to the memory first, and the direction is
            kappa x the mean of the memory after the offer (g itself while the memory is
            empty, i.e. until a gradient was admitted); ``aggr`` does not apply. ``kappa=0``
            still switches the memory off (the base optimizer on g) (default: True).
        compile (bool): run the whole step, memory and wrapped optimizer together, as
            ``torch.compile``-d code (default: False). Faster on large models; the first steps
            pay the compilation (seconds). ``last_step_implementation`` says which ran
            (``"eager"`` or ``"compiled"``).

    All of these can also be given per parameter group, and changed between steps (``topC`` and
    ``store_dtype`` only before the group's first step).

    Everything the memory keeps lives on each parameter's device, as tensors in the parameter's
    ``state`` under keys starting with ``critical_``: ``step()`` never waits for the device, and
    traces as one graph under ``torch.compile``. ``opt.memory[p]`` shows a parameter's memory.

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
        selection: str = "critical",
        include_current: bool = True,
        compile: bool = False,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
        if isinstance(optimizer, CriticalGradients):
            raise TypeError("optimizer already has a critical-gradient memory")
        closure = inspect.signature(optimizer.step).parameters.get("closure")
        if isinstance(optimizer, torch.optim.LBFGS) or (
            closure is not None and closure.default is inspect.Parameter.empty
        ):
            raise TypeError(
                f"{type(optimizer).__name__} re-evaluates the loss and gradients inside its step "
                "(its closure is called several times), so no single gradient can be replaced "
                "by the memory's aggregate; critgrad cannot wrap it"
            )
        memory_defaults = {
            "topC": topC,
            "decay": decay,
            "kappa": kappa,
            "aggr": aggr,
            "key": key,
            "store_dtype": store_dtype,
            "selection": selection,
            "include_current": include_current,
        }
        python_numbers_(memory_defaults)
        check_memory_options(memory_defaults)
        if not isinstance(compile, bool):
            raise ValueError(f"Invalid compile: {compile!r} (must be True or False)")
        self.base = optimizer
        self.compile = compile
        self.last_step_implementation: str | None = None
        self._memory_defaults = memory_defaults
        self._compiled: CompiledStep | None = None
        self._prepared: tuple[P.Prepared, ...] | None = None
        # Inside a ZeroRedundancyOptimizer each rank steps some of each group's tensors: the keys
        # of a group then come from every rank's tensors (one all-reduce per group and step).
        self._zero = D.zero_partition()
        # Optimizer.__init__ installs the hooks that schedulers and profilers rely on; it calls
        # add_param_group for each of the base's groups, which we adopt as the very same dicts.
        self._adopting = True
        super().__init__(optimizer.param_groups, {**optimizer.defaults, **memory_defaults})
        self._adopting = False

    # ---------------------------------------------------------------- the base's state is ours

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        if not self._adopting:  # Optimizer.__init__ starts from an empty list: keep the base's
            self.base.param_groups = value

    @property
    def state(self) -> Any:
        return self.base.state

    @state.setter
    def state(self, value: Any) -> None:
        if not self._adopting:
            self.base.state = value

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the wrapper does not define. Private names stay unanswered:
        # e.g. GradScaler must not believe that the wrapper unscales (fused bases' flag).
        base = self.__dict__.get("base")
        if base is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(base, name)

    @property
    def memory(self) -> Mapping[Tensor, dict[str, Tensor]]:
        """Read-only: for each parameter with a memory, ``critical_store``, ``critical_sum`` (the
        sum of the stored gradients, from the state's scaled sum: inf where the sum itself
        exceeds the dtype's range), ``critical_priority``, ``critical_age`` and
        ``critical_stats``, read from its state."""
        return S.MemoryView(self)

    # ---------------------------------------------------------------- torch.optim API

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group)}")
        options = {
            name: param_group.get(name, default) for name, default in self._memory_defaults.items()
        }
        if SEED in param_group:
            options[SEED] = param_group[SEED]
        python_numbers_(options)
        check_memory_options(options)
        if not self._adopting:
            self._prepared = None
            self.base.add_param_group(param_group)
            param_group = self.base.param_groups[-1]
        param_group.update(options)  # (the group's own values, numpy scalars as Python's)
        draw_seeds([param_group])

    def __getstate__(self) -> dict[str, Any]:
        # Compiled code and the prepared dispatch are rebuilt where the copy runs.
        return {**self.__dict__, "_compiled": None, "_prepared": None}

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
        draw_seeds(self.param_groups)  # (groups switched to selection="random" since built)
        # The one place that chooses how the step runs. A step that creates memories runs eagerly:
        # compiling it would cost a graph that never runs again.
        if self.compile and not self._creates_memories():
            if self._compiled is None:
                self._compiled = CompiledStep(self._memory_step)
            created, deferred = self._compiled()
            self.last_step_implementation = "compiled" if self._compiled.ran_compiled else "eager"
        else:
            created, deferred = self._memory_step()
            self.last_step_implementation = "eager"
        run_deferred(deferred)
        if created:  # first offers: only then is the state's structure changed
            S.insert(self.state, created)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, the memory inside each parameter's entry (keys
        starting with ``critical_``). Each entry is a new dict, so editing the returned dict
        (converting, pruning) leaves this optimizer as it was; the tensors are the live ones, as
        in torch."""
        state_dict = self.base.state_dict()
        state_dict["state"] = {index: dict(entry) for index, entry in state_dict["state"].items()}
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (or by the plain wrapped optimizer).

        The memory is restored on each parameter's device with the dtypes it was created with.
        A state saved with another ``topC``, or for parameters of other shapes, is refused.
        """
        self._prepared = None
        S.load_with_memory(self, state_dict, self.base.load_state_dict, MEMORY_OPTIONS)

    # ---------------------------------------------------------------- statistics

    @torch.no_grad()
    def memory_stats(self) -> list[dict[str, Any]]:
        """Statistics of the memory, one dict per parameter group (reads the device: not for
        every step of a fast loop).

        Counts are of tensor-gradients: a group of 3 tensors offers 3 gradients per step.

        - ``offered``, ``admitted``: gradients offered to and admitted into the memory;
        - ``rejected``: finite gradients turned away by the selection rule because the memory
          was full (``critical``: their key was not above the smallest priority; ``smallest``:
          not below the largest; never under ``recent`` and ``random``);
        - ``nonfinite``: gradients with an inf/NaN key (never admitted);
        - ``evicted``, ``mean_eviction_age``: entries replaced, and their mean age in steps;
        - ``filled``, ``capacity``: entries held now and ``topC`` x tensors;
        - ``mean_age``, ``max_age``: ages in steps of the entries held now (None when empty);
        - ``min_priority``, ``mean_priority``: of the entries held now (after this step's decay);
        - ``last_key``: the mean over tensors of the key each was last offered with, to set
          against the priorities (None before the first offer).
        """
        return [S.statistics(group, self.state) for group in self.param_groups]

    # ---------------------------------------------------------------- the memory

    def _memory_step(self) -> tuple[list[tuple[Tensor, dict[str, Tensor]]], list[Resync]]:
        """Plan every group, then apply the plans: the step that ``compile=True`` compiles.
        Returns the memories created for parameters offered a gradient for the first time, and
        the resyncs of large running sums that ``compile=True`` runs after its compiled code."""
        eager = not self.compile and not torch.compiler.is_compiling() and self._zero is None
        if eager and self._prepared is not None:
            ready = P.current(self._prepared, self.param_groups, self.state, self.base)
            if ready is not None:  # the last step's dispatch holds: the same calls
                self._step_prepared(ready)
                return [], []
        plans = []
        for group in self.param_groups:
            plan = self._plan(group)
            if plan is not None:
                plans.append(plan)
        deferred: list[Resync] | None = [] if self.compile else None
        stepped = self._apply(plans, deferred)
        self._prepared = None
        if (
            eager
            and stepped is not None
            and not any(  # (a group without memory that the base stepped with its gradients)
                p.grad is not None
                for group in self.param_groups
                if id(group) not in stepped
                for p in group["params"]
            )
        ):
            self._prepared = P.prepare(self.param_groups, stepped, self.state, self.base)
        created = [
            (p, memory)
            for plan in plans
            for p, memory, new in zip(plan.params, plan.memories, plan.new)
            if new
        ]
        return created, deferred or []

    def _creates_memories(self) -> bool:
        """Whether this step offers some parameter its first gradient."""
        state = self.state
        return any(
            p.grad is not None and STORE not in state.get(p, ())
            for group in self.param_groups
            if group["kappa"] != 0
            for p in group["params"]
        )

    def _plan(self, group: dict[str, Any]) -> _Plan | None:
        """Decide the group's step: nothing changes here (but numpy scalars set in the group
        since the last step become Python numbers)."""
        python_numbers_(group)
        check_memory_options(group)
        if group["kappa"] == 0:
            return None
        params = list(dict.fromkeys(p for p in group["params"] if p.grad is not None))
        if not params:
            if self._zero is not None:  # the other ranks' keys still need this rank's zeros
                D.zero_keys(None, [], group["key"], self._zero, self._group_index(group))
            return None
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                "critgrad does not support sparse gradients; give the sparse "
                "parameters their own group with kappa=0"
            )
        memories, new = [], []
        for p in params:
            memory = self._memory_of(p, group)
            memories.append(memory)
            new.append(STORE not in self.state.get(p, ()))
        # DTensor gradients: the plan works on this rank's shards, the keys on whole tensors.
        shards = [D.local(g) for g in grads]
        scale = M.sum_scale(group["topC"])
        found = N.takes(shards, memories) if group["include_current"] else None
        if found is not None and self._zero is None and not any(map(D.is_dtensor, grads)):
            decided = _native_plan(group, found, shards, scale)  # the keys too: norms of wholes
            return _Plan(group, params, shards, memories, new, None, decided)
        keys = self._keys(_norms(shards), grads, params, group)
        if found is not None:
            decided = _native_plan(group, found, shards, scale, keys)
            return _Plan(group, params, shards, memories, new, keys, decided)
        device = keys.device
        priority, age, stats = (
            torch.stack([m[name].to(device) for m in memories]) for name in (PRIORITY, AGE, STATS)
        )
        selection, drawn = group["selection"], None
        if selection == "random":
            # Each tensor offered its own stream (its place among the group's tensors with a
            # gradient); with one key per group the memories hold the same steps: one stream.
            streams = torch.arange(len(params), device=device)
            if group["key"] != "per_tensor":
                streams = torch.zeros_like(streams)
            drawn = M.random_slots(group[SEED], streams, stats[:, 0], group["topC"])
        admit, slot, filled = M.admission(keys, priority, age, selection, drawn)
        s: list[Tensor] | None
        if group["include_current"]:
            c, factor = M.coefficients(group["aggr"], filled, group["kappa"])
            b = _spread(c * factor / scale, params)
            s = None if group["aggr"] == "sum" else _spread(factor, params)
            directions = None
        else:  # the memory alone after the offer, read before anything changes
            coefficient, empty = M.memory_only_coefficients(
                admit, filled, group["topC"], group["kappa"], scale
            )
            b, s = _spread(coefficient, params), None
            directions = M.offered_directions(
                shards,
                [m[STORE] for m in memories],
                [m[SCALED_SUM] for m in memories],
                _spread(slot[:, None], params),
                _spread(admit, params),
                b,
                _spread(empty, params),
                scale,
            )
        decision = _Decision(priority, age, stats, admit, slot, filled, b, s, directions)
        return _Plan(group, params, shards, memories, new, keys, decision)

    def _keys(
        self, norms: Tensor, grads: list[Tensor], params: list[Tensor], group: dict[str, Any]
    ) -> Tensor:
        """The group's keys from the norms of this rank's (shards of) gradients: the norms of
        whole tensors first where they are sharded, a group key from every rank's tensors
        inside a ZeroRedundancyOptimizer."""
        norms = D.global_norms(norms, grads)
        if self._zero is not None:
            keys = D.zero_keys(norms, params, group["key"], self._zero, self._group_index(group))
            return cast(Tensor, keys)  # None only when no norms are given
        return M.keys_from_norms(norms, group["key"])

    def _group_index(self, group: dict[str, Any]) -> int:
        return next(i for i, g in enumerate(self.param_groups) if g is group)

    def _memory_of(self, p: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        """The parameter's state if it holds a memory, else a new empty memory (not yet in it)."""
        state = self.state.get(p)
        if state is not None and STORE in state:
            store = state[STORE]
            expected = group["store_dtype"] or p.dtype
            if store.shape[0] != group["topC"] or store.dtype != expected:
                raise ValueError(
                    f"topC and store_dtype can only be set before a group's first step: the "
                    f"memory holds topC={store.shape[0]} gradients as {store.dtype}, the group "
                    f"now says topC={group['topC']}, store_dtype={group['store_dtype']}"
                )
            return S.working(state)
        return S.new_memory(p, group)

    def _apply(
        self, plans: list[_Plan], deferred: list[Resync] | None = None
    ) -> dict[int, tuple[list[Tensor], N.Layout, N.BaseTensors | None]] | None:
        """Give the base the directions as gradients, run it, give the gradients back, commit.
        Where every group's step ran natively, returns each group's parameters, memory layout
        and base tensors (None where the base stepped on its own), by ``id(group)``."""
        # Traced, assigning p.grad would force a graph break before the base step (torch's
        # optimizers read the real p.grad while tracing): the direction is written into the
        # gradient's own tensor and the gradient kept in a copy, which inductor fuses away.
        # Sharded, the plan holds the DTensor gradients' shards: the same, into the shards.
        in_place = torch.compiler.is_compiling() or any(
            D.is_dtensor(p) for plan in plans for p in plan.params
        )
        # Eager, each direction is row 0 of a pair that the commit then reuses as its scratch:
        # one fresh buffer per tensor and step (fresh pages are costly on the CPU), not two.
        scratch: list[list[Tensor | None]] = [
            [_scratch_pair(g, m) for g, m in zip(plan.grads, plan.memories)]
            if isinstance(plan.decision, _Decision)
            and not in_place
            and plan.decision.directions is None
            else [None] * len(plan.grads)
            for plan in plans
        ]
        # Float32 groups of torch's Adam, AdamW or SGD on the CPU: the whole step (directions,
        # the base's update, slot writes) in one native pass, once the base has stepped the
        # other groups.
        fused = [
            N.base_tensors(self.base, plan.group, plan.params)
            if isinstance(plan.decision, N.Plan)
            else None
            for plan in plans
        ]
        directions = [
            [] if base is not None else _directions(plan, pairs)
            for plan, pairs, base in zip(plans, scratch, fused)
        ]
        raws = [[g.clone() for g in plan.grads] if in_place else plan.grads for plan in plans]
        try:
            for plan, group_directions, base in zip(plans, directions, fused):
                if base is not None:  # the base leaves parameters without a gradient alone
                    for p in plan.params:
                        p.grad = None
                elif in_place:
                    torch._foreach_copy_(plan.grads, group_directions)
                else:
                    for p, d in zip(plan.params, group_directions):
                        p.grad = d
            if not any(fused) or any(
                p.grad is not None for group in self.param_groups for p in group["params"]
            ):
                _unhooked_step(self.base)()
        finally:
            for plan, raw in zip(plans, raws):
                if in_place:
                    torch._foreach_copy_(plan.grads, raw)
                else:
                    for p, g in zip(plan.params, plan.grads):
                        p.grad = g
        del directions
        # The one moment the memory changes: after the base step succeeded.
        for plan, raw, pairs, base in zip(plans, raws, scratch, fused):
            self._commit(plan, raw, pairs, deferred, base)
        if in_place or not plans or not all(isinstance(p.decision, N.Plan) for p in plans):
            return None
        return {
            id(plan.group): (plan.params, cast(N.Plan, plan.decision).layout, base)
            for plan, base in zip(plans, fused)
        }

    def _step_prepared(self, ready: list[P.Ready]) -> None:
        """The prepared steps of the groups: the calls of :meth:`_apply`'s native steps, in the
        same order."""
        for group in ready:
            group.step.plan(group.grads)
        if all(group.step.fused for group in ready):
            for group in ready:
                group.step.update(group.scalars)
            return
        directions = [None if g.step.fused else g.step.directions(g.grads) for g in ready]
        try:
            for group, group_directions in zip(ready, directions):
                if group_directions is None:  # stepped by the fused pass, after the base's
                    for p in group.params:
                        p.grad = None
                else:
                    for p, d in zip(group.params, group_directions):
                        p.grad = d
            _unhooked_step(self.base)()
        finally:
            for group in ready:
                for p, g in zip(group.params, group.grads):
                    p.grad = g
        del directions
        for group in ready:
            if group.step.fused:
                group.step.update(group.scalars)
            else:
                group.step.finish()

    def _commit(
        self,
        plan: _Plan,
        grads: list[Tensor],
        scratch: list[Tensor | None] | None = None,
        deferred: list[Resync] | None = None,
        base: N.BaseTensors | None = None,
    ) -> None:
        """Write the admitted gradients, bound the sums' drift, update the bookkeeping; for a
        group whose ``base`` update is fused with the memory's, run that update first, in the
        same pass."""
        scale = M.sum_scale(plan.group["topC"])
        memories, decision = plan.memories, plan.decision
        if isinstance(decision, N.Plan):
            decay = plan.group["decay"]
            if base is not None:
                N.fused_step(decision, base, scale, decay)
            else:
                N.finish(decision, scale, decay)
            return
        slots = _spread(decision.slot[:, None], plan.params)
        admits = _spread(decision.admit, plan.params)
        counts = _spread(decision.stats[:, 0], plan.params)
        if scratch is None:
            scratch = [None] * len(memories)
        for i, memory in enumerate(memories):
            M.write_slot_(
                memory[STORE],
                memory[SCALED_SUM],
                grads[i],
                slots[i],
                admits[i],
                scale,
                scratch[i],
            )
            resync_or_defer_(memory[STORE], memory[SCALED_SUM], counts[i], scale, deferred)
        keys = cast(Tensor, plan.keys)  # (a torch plan's keys are torch's)
        priority, age, increment = M.bookkeeping(
            keys,
            decision.priority,
            decision.age,
            decision.admit,
            decision.slot,
            decision.filled,
            plan.group["decay"],
        )
        for name, values in (
            (PRIORITY, priority),
            (AGE, age),
            (STATS, decision.stats + increment),
            (S.KEY, keys[:, None].to(memories[0][S.KEY].dtype)),
        ):
            torch._foreach_copy_([m[name] for m in memories], list(values.unbind(0)))


def _native_plan(
    group: Mapping[str, Any],
    found: N.Layout,
    grads: list[Tensor],
    scale: float,
    keys: Tensor | None = None,
) -> N.Plan:
    """:func:`critgrad._native.plan` with the group's options (and the keys, where given)."""
    return N.plan(found, grads, keys, scale=scale, **N.plan_options(group))


def _directions(plan: _Plan, pairs: list[Tensor | None]) -> list[Tensor]:
    """The plan's directions: computed before (memory alone), by the native kernel, or by torch
    operations into row 0 of each scratch pair where there is one."""
    decision = plan.decision
    if isinstance(decision, N.Plan):
        return N.directions(plan.grads, decision)
    if decision.directions is not None:
        return decision.directions
    sums = [m[SCALED_SUM] for m in plan.memories]
    out = [None if pair is None else pair[0] for pair in pairs]
    return M.directions(plan.grads, sums, decision.b, decision.s, out)


def _torch_step_wrappers() -> set[Any]:
    def step(self: Any) -> None:
        return None

    wrappers = {Optimizer.profile_hook_step(step).__code__}
    try:
        from torch.optim.optimizer import _use_grad_for_differentiable
    except ImportError:  # pragma: no cover - other torch versions
        return wrappers
    return wrappers | {_use_grad_for_differentiable(step).__code__}


_TORCH_STEP_WRAPPERS = _torch_step_wrappers()


def _unhooked_step(optimizer: Optimizer) -> Callable[[], Any]:
    """The optimizer's own ``step``, without torch's wrappers: the hooks and the profiler's record
    (they ran around the wrapper's step, and should run once) and the grad-mode switch (the
    wrapper's step runs without grad already; the switch's deliberate graph breaks would split
    a traced step in three)."""
    if "step" in optimizer.__dict__:  # patched on the instance: respect it
        return optimizer.step
    step: Any = type(optimizer).step  # overloaded in torch's stubs; unwrapped below
    while getattr(step, "__code__", None) in _TORCH_STEP_WRAPPERS:
        step = step.__wrapped__
    return functools.partial(step, optimizer)


def _norms(grads: list[Tensor]) -> Tensor:
    """``(n,)`` float64: the L2 norm of each gradient, on the first gradient's device."""
    low = [g.dtype in S.LOW_PRECISION for g in grads]
    if not any(low):
        norms = list(torch._foreach_norm(grads))
    else:  # low-precision gradients: accumulate their norms in float32 at least
        norms = [
            torch.linalg.vector_norm(g, dtype=torch.float32) if is_low else torch.linalg.norm(g)
            for g, is_low in zip(grads, low)
        ]
    device = grads[0].device
    if all(n.device == device and n.dtype == norms[0].dtype for n in norms):
        return torch.stack(norms).to(torch.float64)  # two operations, whatever n is
    return torch.stack([n.to(device=device, dtype=torch.float64) for n in norms])


def _scratch_pair(grad: Tensor, memory: Mapping[str, Tensor]) -> Tensor | None:
    """A ``(2, *shape)`` buffer for a direction (row 0) and then the commit's scratch, where the
    gradient, the sum and the store share one dtype (else None: each allocates its own)."""
    if not grad.dtype == memory[SCALED_SUM].dtype == memory[STORE].dtype:
        return None
    return memory[STORE].new_empty((2, *grad.shape))


def _spread(values: Tensor, params: list[Tensor]) -> list[Tensor]:
    """The rows of ``values``, one per parameter, each on that parameter's device."""
    rows = list(values.unbind(0))
    if any(p.device != values.device for p in params):
        rows = [row.to(p.device) for row, p in zip(rows, params)]
    return rows
