"""The last step's native dispatch, kept for the next step while it still holds.

When every group's step ran in the native kernels (float32 CPU tensors: one fused pass with
torch's Adam, AdamW or SGD as the base, or the directions, the base's own step and the slot
writes with any other), the next step almost always does the same with the same tensors. Deciding that afresh costs more
than the pass itself on small models: tens of Python operations per tensor (options checked,
each state tensor's dtype, layout and address looked at). :func:`prepare` keeps what the
decision found; :func:`current` checks in one sweep per step that all of it still holds: the
same groups, the same parameters with gradients, the same memory options (values and types),
the same kind of base update, the same state tensors at the same addresses, float32 contiguous
CPU gradients of the same sizes. Anything else and the step takes the general path, which
decides afresh (and raises what it raises). Both paths call the same kernels with the same
arguments, so their results are the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import is_, itemgetter
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _native as N
from . import memory as M
from .options import MEMORY_OPTIONS, SEED

_options = itemgetter(*MEMORY_OPTIONS)


def _options_of(group: Mapping[str, Any]) -> tuple[Any, ...]:
    return (*_options(group), group.get(SEED))


class Prepared(NamedTuple):
    """One parameter group's step as the last step dispatched it."""

    group: dict[str, Any]
    options: tuple[Any, ...]  # the memory options, as checked then
    types: tuple[type, ...]  # and their types (a numpy scalar is taken afresh)
    params: tuple[Tensor, ...]  # with a gradient, each once; () for a group without any
    # fused: the kind, state names and flags of the update (its numbers are read anew); None
    # where the base steps on its own (and must still not be one that could be fused)
    update: N.Hyperparameters | None
    names: tuple[str, ...]  # the state entries of each parameter the pass reads and writes
    tensors: list[Tensor]  # per parameter: itself, then those entries
    addresses: list[int]
    numel: tuple[int, ...]
    step: N.BoundStep | None


class Ready(NamedTuple):
    """A prepared group's step, and what it takes now."""

    step: N.BoundStep
    params: list[Tensor]
    grads: list[Tensor]
    scalars: tuple[float, ...]  # the fused update's hyperparameters


def prepare(
    groups: Sequence[dict[str, Any]],
    stepped: Mapping[int, tuple[Sequence[Tensor], N.Layout, N.BaseTensors | None]],
    state: Mapping[Tensor, Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
) -> tuple[Prepared, ...] | None:
    """Keep the dispatch of a step in which every group with gradients was stepped natively:
    ``stepped`` maps ``id(group)`` to its parameters, memory layout and base tensors (None where
    the base stepped on its own). None where a group's parameter appears twice (such a group is
    always decided afresh)."""
    prepared = []
    for group in groups:
        options = _options_of(group)
        types = tuple(map(type, options))
        if len(set(map(id, group["params"]))) != len(group["params"]):
            return None
        found = stepped.get(id(group))
        if found is None:  # no gradient in the group
            prepared.append(Prepared(group, options, types, (), None, (), [], [], (), None))
            continue
        params, layout, base = found
        update = N.hyperparameters(optimizer, group)
        if (update is None) != (base is None):  # (a fusable base whose state was not)
            return None
        names = (*N.MEMORY_NAMES, *(update.names if update is not None else ()))
        tensors = _tensors(params, names, state)
        if tensors is None:
            return None
        numel = tuple(p.numel() for p in params)
        addresses = [t.data_ptr() for t in tensors]
        prepared.append(
            Prepared(
                group,
                options,
                types,
                tuple(params),
                update,
                names,
                tensors,
                addresses,
                numel,
                N.BoundStep(layout, base, group, M.sum_scale(group["topC"])),
            )
        )
    return tuple(prepared)


def current(
    prepared: tuple[Prepared, ...],
    groups: Sequence[dict[str, Any]],
    state: Mapping[Tensor, Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
) -> list[Ready] | None:
    """The prepared groups' steps if everything they were prepared from still holds, else None
    (nothing has been changed either way)."""
    if len(groups) != len(prepared) or not N.enabled():
        return None
    ready = []
    for entry, group in zip(prepared, groups):
        if entry.group is not group:
            return None
        options = _options_of(group)
        # (types first: a value of another type may not even compare, e.g. a tensor)
        if tuple(map(type, options)) != entry.types or options != entry.options:
            return None
        params = [p for p in group["params"] if p.grad is not None]
        if len(params) != len(entry.params) or not all(map(is_, params, entry.params)):
            return None
        if not params:
            continue
        expected, step = entry.update, entry.step
        assert step is not None
        grads = [p.grad for p in params]
        for g, size in zip(grads, entry.numel):
            if (
                g.layout is not torch.strided
                or g.dtype is not torch.float32
                or not N.plain_cpu(g)
                or g.numel() != size
            ):
                return None
        update = N.hyperparameters(optimizer, group)
        if (update is None) != (expected is None):
            return None
        if (
            update is not None
            and expected is not None
            and (update.kind, update.names, update.flags)
            != (expected.kind, expected.names, expected.flags)
        ):
            return None
        tensors = _tensors(params, entry.names, state)
        if (
            tensors is None
            or not all(map(is_, tensors, entry.tensors))
            or [t.data_ptr() for t in tensors] != entry.addresses
        ):
            return None
        ready.append(Ready(step, params, grads, () if update is None else update.scalars))
    return ready


def _tensors(
    params: Sequence[Tensor], names: tuple[str, ...], state: Mapping[Tensor, Mapping[str, Any]]
) -> list[Tensor] | None:
    """Each parameter, then its state entries ``names``; None where one is missing."""
    entries = itemgetter(*names)
    tensors: list[Tensor] = []
    try:
        for p in params:
            tensors.append(p)
            tensors.extend(entries(state.get(p, {})))  # (get: the state is a defaultdict)
    except KeyError:
        return None
    return tensors
