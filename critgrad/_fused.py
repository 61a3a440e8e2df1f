"""SGD, Adam and AdamW with the memory fused into their update: one compiled pass per tensor.

The generic path computes the aggregate d into a new buffer, lets ``torch.optim.Adam`` read it,
and updates the memory separately: about 14 passes over the parameters against fused Adam's 7.
Here each element of g, the running sum S, the evicted slot, the parameter and both moments is read
once and each of S, the slot, the parameter and the moments written once (12 passes with the
gradient's norm), and d never exists in memory. The update is torch's single-tensor Adam written
out; it keeps its state in the base optimizer's ``state`` under torch's own keys, so checkpoints
move freely between this path and the generic one. SGD (momentum, dampening, Nesterov, weight
decay) is done the same way. Both are tested equal to the generic path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import memory as M
from ._kernels import memory_step, run_compiled

try:  # the dtype torch.optim.Adam gives its step counter
    from torch.optim.optimizer import _get_scalar_dtype
except ImportError:  # pragma: no cover - older torch

    def _get_scalar_dtype(is_fused=None):
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def adam_memory_pass(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    slots: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    coefficients: Tensor,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    weight_decay: bool,
) -> None:
    """The memory pass of :mod:`critgrad._kernels` followed by Adam's update, per tensor.

    ``coefficients`` is ``(n, 9)``: c, s, admit, 1 - beta1, beta2, 1 - beta2, step size,
    sqrt of the second bias correction, eps; then weight decay and lr are in columns 9 and 10.
    """
    for i in range(len(params)):
        p, row = params[i], coefficients[i]
        direction = memory_step(grads[i], sums[i], slots[i], row[0], row[1], row[2] > 0)
        if maximize:
            direction = -direction
        if weight_decay:
            if decoupled:
                p.mul_(1 - row[10] * row[9])
            else:
                direction = direction + row[9] * p
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(direction, row[3])
        exp_avg_sq.mul_(row[4]).add_(row[5] * direction * direction)
        if amsgrad:
            max_sq = max_exp_avg_sqs[i]
            max_sq.copy_(torch.maximum(max_sq, exp_avg_sq))
            denom = max_sq.sqrt() / row[7] + row[8]
        else:
            denom = exp_avg_sq.sqrt() / row[7] + row[8]
        p.sub_(row[6] * exp_avg / denom)


def sgd_memory_pass(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    slots: list[Tensor],
    buffers: list[Tensor],
    coefficients: Tensor,
    momentum: bool,
    nesterov: bool,
    maximize: bool,
    weight_decay: bool,
) -> None:
    """The memory pass followed by torch's SGD update, per tensor.

    ``coefficients`` is ``(n, 8)``: c, s, admit, lr, weight decay, momentum, 1 - dampening, and
    1.0 where the momentum buffer is new (torch then starts it as a copy of the direction).
    """
    for i in range(len(params)):
        p, row = params[i], coefficients[i]
        direction = memory_step(grads[i], sums[i], slots[i], row[0], row[1], row[2] > 0)
        if maximize:
            direction = -direction
        if weight_decay:
            direction = direction + row[4] * p
        if momentum:
            buf = buffers[i]
            buf.copy_(torch.where(row[7] > 0, direction, buf * row[5] + row[6] * direction))
            direction = direction + row[5] * buf if nesterov else buf
        p.sub_(row[3] * direction)


def kind_of(base: torch.optim.Optimizer, offers: list[Any]) -> str | None:
    """``"adam"`` or ``"sgd"`` when every group of this step can take a fused path, else None."""
    if type(base) in (torch.optim.Adam, torch.optim.AdamW):
        kind = "adam"
    elif type(base) is torch.optim.SGD:
        kind = "sgd"
    else:
        return None
    for offer in offers:
        group = offer.group
        if group.get("capturable") or group["differentiable"] or isinstance(group["lr"], Tensor):
            return None
        scalars = (
            ("weight_decay", "eps") if kind == "adam" else ("weight_decay", "momentum", "dampening")
        )
        if any(not isinstance(group[k], float | int) for k in scalars):
            return None
        if kind == "adam" and any(isinstance(b, Tensor) for b in group["betas"]):
            return None
        devices = {p.device for p in offer.params}
        if len(devices) != 1 or any(p.is_complex() for p in offer.params):
            return None
    return kind


def _adam_state(base: torch.optim.Optimizer, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
    # The same state, dtypes and devices as torch.optim.Adam's own lazy initialisation.
    state = base.state[p]
    if len(state) == 0:
        fused = bool(group["fused"])
        if group["capturable"] or fused:
            state["step"] = torch.zeros(
                (), dtype=_get_scalar_dtype(is_fused=fused), device=p.device
            )
        else:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _memory_columns(offer: Any) -> tuple[list[tuple[float, float, float]], list[Tensor]]:
    group = offer.group
    columns = []
    for n, admitted in zip(offer.filled_host, offer.admit_host):
        c, s = M.aggregation_coefficients(group["aggr"], n, group["kappa"])
        columns.append((c, s, float(admitted)))
    slots = [m["critical_store"][slot] for m, slot in zip(offer.mems, offer.slot_host)]
    return columns, slots


def step(base: torch.optim.Optimizer, offer: Any, kind: str) -> None:
    """Memory and base update of one group, fused."""
    group = offer.group
    columns, slots = _memory_columns(offer)
    sums = [m["critical_sum"] for m in offer.mems]
    device = offer.params[0].device
    if kind == "adam":
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        states = [_adam_state(base, group, p) for p in offer.params]
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        rows = []
        for memory_columns, step_t in zip(columns, steps):
            t = step_t.item()  # a CPU tensor unless the base is fused/capturable on a GPU
            rows.append(
                (
                    *memory_columns,
                    1 - beta1,
                    beta2,
                    1 - beta2,
                    lr / (1 - beta1**t),
                    (1 - beta2**t) ** 0.5,
                    eps,
                    weight_decay,
                    lr,
                )
            )
        coefficients = torch.tensor(rows, dtype=torch.float64).to(device, non_blocking=True)
        amsgrad = bool(group["amsgrad"])
        run_compiled(
            adam_memory_pass,
            offer.params,
            offer.grads,
            sums,
            slots,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            coefficients,
            amsgrad,
            bool(group["maximize"]),
            bool(group.get("decoupled_weight_decay", False)),
            weight_decay != 0,
        )
        return
    momentum = group["momentum"]
    buffers, rows = [], []
    for memory_columns, p in zip(columns, offer.params):
        new = 0.0
        if momentum != 0:
            state = base.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)
                new = 1.0
            buffers.append(state["momentum_buffer"])
        rows.append(
            (
                *memory_columns,
                group["lr"],
                group["weight_decay"],
                momentum,
                1 - group["dampening"],
                new,
            )
        )
    coefficients = torch.tensor(rows, dtype=torch.float64).to(device, non_blocking=True)
    run_compiled(
        sgd_memory_pass,
        offer.params,
        offer.grads,
        sums,
        slots,
        buffers,
        coefficients,
        momentum != 0,
        bool(group["nesterov"]),
        bool(group["maximize"]),
        group["weight_decay"] != 0,
    )
