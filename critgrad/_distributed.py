"""The memory across processes: parameters sharded over ranks (FSDP2's DTensors), and optimizers
that step a different subset of the parameters on each rank (ZeroRedundancyOptimizer).

The keys are the only part of the memory that reads more than one element of a gradient (each is
a function of per-tensor L2 norms, :func:`critgrad.memory.keys_from_norms`), so they are the only
part that needs the other ranks. Everything else (store, running sum, directions, writes) is
elementwise and runs on each rank's own shard.

- Sharded gradients: each rank computes the norms of its shards; one all-reduce of the squared
  norms (n floats for a group of n tensors) over the ranks that shard them gives every rank the
  norms of the whole tensors, then the keys. None when nothing in the group is sharded.
- ZeroRedundancyOptimizer: each rank holds whole tensors but only some of each group. One
  all-reduce of the group's n norms (each rank fills in its own tensors, zeros elsewhere) gives
  every rank all of them, then one key per group from all of them.

Either way every rank computes the same keys from the same numbers, so the ranks never disagree
about what the memory admits.
"""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeGuard

import torch
from torch import Tensor

from . import memory as M

try:
    import torch.distributed._functional_collectives as funcol
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # pragma: no cover - torch built without distributed support
    # (then is_dtensor is False for everything, and nothing else here is reached)
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(t: Any) -> TypeGuard[DTensor]:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (sharing its storage), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def from_shard(shard: Tensor, p: DTensor, leading: int | None = None) -> Tensor:
    """The DTensor laid out like the DTensor ``p`` whose shard on this rank is ``shard``; with
    ``leading``, of shape ``(leading, *p.shape)``, each dimension k + 1 sharded as p's k."""
    shape = p.shape if leading is None else torch.Size((leading, *p.shape))
    placements = p.placements if leading is None else _shifted(p.placements)
    return DTensor.from_local(
        shard, p.device_mesh, placements, run_check=False, shape=shape, stride=_stride(shape)
    )


def laid_out(t: Tensor, p: Tensor, *, leading: bool = False) -> Tensor:
    """A saved store (``leading``) or running sum ``t`` of parameter ``p`` as the state keeps it:
    for a DTensor ``p``, a whole tensor (from a gathered checkpoint) is cut into this rank's part
    of a DTensor sharded like ``p``; anything else is ``t`` itself."""
    if is_dtensor(p) and not is_dtensor(t):
        placements = _shifted(p.placements) if leading else p.placements
        return distribute_tensor(t, p.device_mesh, placements, src_data_rank=None)
    return t


def _shifted(placements: Sequence[Any]) -> tuple[Any, ...]:
    """The placements of a tensor with one more dimension in front: Shard(k) becomes Shard(k + 1)."""
    shifted = []
    for placement in placements:
        if isinstance(placement, _StridedShard):
            placement = _StridedShard(placement.dim + 1, split_factor=placement.split_factor)
        elif placement.is_shard():
            placement = Shard(placement.dim + 1)
        elif placement.is_partial():
            raise RuntimeError(f"critgrad: a parameter cannot be a Partial DTensor ({placement})")
        shifted.append(placement)
    return tuple(shifted)


def _stride(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def _is_shard(t: Tensor, mesh_dim: int) -> bool:
    return is_dtensor(t) and t.placements[mesh_dim].is_shard()


def global_norms(norms: Tensor, grads: Sequence[Tensor]) -> Tensor:
    """The L2 norms of the whole gradients ``(n,)`` from the norms of this rank's shards ``norms``.

    One all-reduce of the n squared norms per sharded mesh dimension (FSDP2 and HSDP: one), none
    when no gradient is sharded: then ``norms`` itself is returned. A tensor that is not sharded
    over a dimension (replicated, or not a DTensor) counts once: from the ranks at coordinate 0.
    """
    dtensors = [g for g in grads if is_dtensor(g)]
    if not dtensors:
        return norms
    mesh = dtensors[0].device_mesh
    for g in dtensors:
        if g.device_mesh != mesh:
            raise RuntimeError(
                "critgrad: the gradients of one parameter group are DTensors on different device "
                f"meshes ({mesh} and {g.device_mesh}); the memory's keys need one mesh per "
                "group: put the parameters of each mesh in a param group of their own"
            )
        if any(placement.is_partial() for placement in g.placements):
            raise RuntimeError(
                "critgrad: a gradient is a Partial DTensor (its shards are not yet reduced), so "
                "its norm is not known; reduce the gradients before the optimizer's step"
            )
    dims = [
        d
        for d in range(mesh.ndim)
        if mesh.size(d) > 1 and any(g.placements[d].is_shard() for g in dtensors)
    ]
    if not dims:
        return norms
    coordinate = mesh.get_coordinate()
    assert coordinate is not None  # this rank holds shards of these gradients: it is in the mesh
    squares = norms.square()
    for d in dims:
        counted = [_is_shard(g, d) or coordinate[d] == 0 for g in grads]
        if not all(counted):  # the other ranks hold the same values: add them once
            zero = squares.new_zeros(())
            squares = torch.stack([s if c else zero for s, c in zip(squares.unbind(), counted)])
        squares = funcol.all_reduce(squares, "sum", (mesh, d))
    return squares.sqrt()


class ZeroPartition(NamedTuple):
    """The ZeroRedundancyOptimizer that a rank's optimizer steps a share of. Its process group and
    its param groups (every rank's parameters, in the groups' order) give the global keys; a weak
    reference, read at each step (its ``load_state_dict`` replaces its param groups)."""

    owner: weakref.ReferenceType
    world_size: int


def zero_partition() -> ZeroPartition | None:
    """The partition of the ZeroRedundancyOptimizer that is constructing this rank's optimizer, if
    any (found on the call stack: ZeroRedundancyOptimizer builds it from the class it is given, so
    the constructor is the one place that can know)."""
    if DTensor is None:  # pragma: no cover
        return None
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError:  # pragma: no cover
        return None
    # A private method (not in torch's stubs): its code object identifies the constructor's frame.
    code = ZeroRedundancyOptimizer._init_local_optimizer.__code__  # type: ignore[attr-defined]
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            zero = frame.f_locals["self"]
            return ZeroPartition(weakref.ref(zero), zero.world_size)
        frame = frame.f_back
    return None


def zero_keys(
    norms: Tensor | None,
    params: Sequence[Tensor],
    mode: str,
    partition: ZeroPartition,
    group_index: int,
) -> Tensor | None:
    """Keys ``(n,)`` of this rank's tensors ``params`` (their norms ``norms``) in a group whose
    other tensors other ranks step: one all-reduce of the group's norms (this rank's at their
    places, zeros elsewhere), then :func:`critgrad.memory.keys_from_norms` over the whole group.
    Every rank calls it for every group with the memory on, with no tensors (``norms`` None) too.
    """
    zero = partition.owner()
    if mode == "per_tensor" or partition.world_size == 1 or zero is None:
        # Each tensor is whole on one rank (or this optimizer outlived its owner: on its own).
        return None if norms is None else M.keys_from_norms(norms, mode)
    everyone = list(dict.fromkeys(zero.param_groups[group_index]["params"]))
    if not everyone:
        return norms
    if norms is None:
        nothing = torch.zeros((), dtype=torch.float64, device=everyone[0].device)
        mine = {}
    else:
        nothing = norms.new_zeros(())
        mine = dict(zip(params, norms.unbind()))
    full = torch.stack([mine.get(p, nothing) for p in everyone])
    keys = M.keys_from_norms(funcol.all_reduce(full, "sum", zero.process_group), mode)
    if norms is None:  # (the all-reduce's result was used above: it is complete)
        return None
    position = {p: i for i, p in enumerate(everyone)}
    return torch.stack([keys[position[p]] for p in params])
