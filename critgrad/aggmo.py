r"""AggMo: aggregated momentum (Lucas, Sun, Zemel, Grosse, "Aggregated Momentum: Stability Through
Passive Damping", ICLR 2019), one of the outside baselines of the paper's experiments.

K velocity buffers, one per damping coefficient :math:`\beta_i`, all driven by the same gradient;
the step is their average. Written with the paper's sign convention
(:math:`v \leftarrow \beta v - \nabla f`, :math:`\theta \leftarrow \theta + \frac{\gamma}{K}\sum v`)
the update is the same as the one implemented here, whose velocities accumulate the gradient itself:

.. math::
    g_t = \nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}, \qquad
    v_t^{(i)} = \beta_i\, v_{t-1}^{(i)} + g_t \quad (i = 1..K), \qquad
    \theta_t = \theta_{t-1} - \frac{\gamma}{K} \sum_{i=1}^{K} v_t^{(i)}

with :math:`v_0^{(i)} = 0` (so the first step is plain gradient descent), :math:`\gamma` = ``lr``
and :math:`\lambda` = ``weight_decay`` (L2, added to the gradient as the authors' code does). A
velocity with :math:`\beta_i = 0` keeps no history: it is the gradient itself (copied, so that an
inf or NaN of an earlier step is not carried on as ``0 * inf``). The sum runs in the order of
``betas`` in both code paths, so the for-loop and foreach paths agree exactly on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _default_to_fused_or_foreach

DEFAULT_BETAS = (0.0, 0.9, 0.99)
"""The paper's recommended damping coefficients: no momentum, 0.9 and 0.99."""


def check_betas(betas: Any) -> tuple[float, ...]:
    """The damping coefficients as a tuple of floats; ValueError unless each is in [0, 1)."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) == 0:
        raise ValueError(
            f"Invalid betas: {betas!r} (must be a non-empty sequence of numbers in [0, 1))"
        )
    for beta in betas:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid betas: {betas!r} (must be numbers, each in [0, 1))")
    return tuple(float(beta) for beta in betas)


def _check_number(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


class AggMo(Optimizer):
    r"""Aggregated momentum: K velocities with damping coefficients ``betas``, one step.

    .. math::
        g_t = \nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}, \qquad
        v_t^{(i)} = \beta_i\, v_{t-1}^{(i)} + g_t, \qquad
        \theta_t = \theta_{t-1} - \frac{\gamma}{K} \sum_{i=1}^{K} v_t^{(i)}

    (see :mod:`critgrad.aggmo` for the paper's sign convention, which gives the same update).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr (float): learning rate :math:`\gamma`, >= 0 (default: 1e-3, ``torch.optim.SGD``'s).
            Under a constant gradient the step tends to ``lr * mean(1 / (1 - beta_i))`` times the
            gradient: 37 times ``lr`` with the default betas.
        betas (sequence of float): the damping coefficients, each in [0, 1)
            (default: (0, 0.9, 0.99)). Their number K is fixed at a group's first step.
        weight_decay (float): L2 penalty :math:`\lambda`, >= 0 (default: 0).
        maximize (bool): maximise the objective (the gradient's sign is flipped) (default: False).
        foreach (bool, optional): use the multi-tensor implementation; None picks it where torch
            would (all tensors on a device with foreach kernels, e.g. CUDA) (default: None).

    State, per parameter: ``momentum_buffer``, a tensor of shape ``(K, *param.shape)`` holding
    the K velocities, created at the parameter's first step.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = critgrad.AggMo(model.parameters(), lr=0.01, betas=(0.0, 0.9, 0.99))
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: Sequence[float] = DEFAULT_BETAS,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_number("lr", lr)
        _check_number("weight_decay", weight_decay)
        betas = check_betas(betas)
        if not isinstance(maximize, bool):
            raise ValueError(f"Invalid maximize: {maximize!r} (must be True or False)")
        if foreach is not None and not isinstance(foreach, bool):
            raise ValueError(f"Invalid foreach: {foreach!r} (must be True, False or None)")
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: list[Tensor],
    ) -> None:
        """Gather the group's parameters with a gradient, creating their velocities if needed."""
        count = len(group["betas"])
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AggMo does not support sparse gradients")
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros(
                    (count, *p.shape), dtype=p.dtype, device=p.device
                )
            buffer = state["momentum_buffer"]
            if buffer.shape[0] != count:
                raise ValueError(
                    f"Invalid betas: {group['betas']!r} has {count} coefficients, but the "
                    f"parameter's velocities were created for {buffer.shape[0]}; the number of "
                    "betas is fixed at a group's first step"
                )
            params.append(p)
            grads.append(p.grad)
            buffers.append(buffer)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Perform one optimization step (the closure, if given, is evaluated first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _check_number("lr", group["lr"])
            _check_number("weight_decay", group["weight_decay"])
            betas = check_betas(group["betas"])
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor] = []
            self._init_group(group, params, grads, buffers)
            if not params:
                continue
            aggmo(
                params,
                grads,
                buffers,
                lr=group["lr"],
                betas=betas,
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
        return loss


def aggmo(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    *,
    lr: float,
    betas: Sequence[float],
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
) -> None:
    """Functional AggMo: update ``params`` and their velocities ``buffers`` (K, *shape) in place."""
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    implementation = _multi_tensor_aggmo if foreach else _single_tensor_aggmo
    implementation(
        params,
        grads,
        buffers,
        lr=lr,
        betas=tuple(betas),
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _single_tensor_aggmo(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    *,
    lr: float,
    betas: tuple[float, ...],
    weight_decay: float,
    maximize: bool,
) -> None:
    """The readable path: one parameter at a time, the math of the module docstring."""
    for param, grad, buffer in zip(params, grads, buffers):
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = g.add(param, alpha=weight_decay)
        for i, beta in enumerate(betas):
            if beta == 0:
                buffer[i].copy_(g)
            else:
                buffer[i].mul_(beta).add_(g)
        total = buffer[0].clone()
        for i in range(1, len(betas)):
            total.add_(buffer[i])
        param.add_(total, alpha=-lr / len(betas))


def _multi_tensor_aggmo(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    *,
    lr: float,
    betas: tuple[float, ...],
    weight_decay: float,
    maximize: bool,
) -> None:
    """The same operations in the same order, one foreach call per operation and device/dtype."""
    # torch types the lists as holding Optional tensors (it groups lists with holes too); these
    # have none.
    lists = cast("list[list[Tensor | None]]", [params, grads, buffers])
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists)
    for device_lists, _ in grouped.values():
        device_params, device_grads, device_buffers = cast("list[list[Tensor]]", device_lists)
        g = torch._foreach_neg(device_grads) if maximize else device_grads
        if weight_decay != 0:
            if maximize:  # g is already a fresh list of tensors
                torch._foreach_add_(g, device_params, alpha=weight_decay)
            else:
                g = torch._foreach_add(g, device_params, alpha=weight_decay)
        for i, beta in enumerate(betas):
            velocities = [buffer[i] for buffer in device_buffers]
            if beta == 0:
                torch._foreach_copy_(velocities, g)
            else:
                torch._foreach_mul_(velocities, beta)
                torch._foreach_add_(velocities, g)
        total = [buffer[0].clone() for buffer in device_buffers]
        for i in range(1, len(betas)):
            torch._foreach_add_(total, [buffer[i] for buffer in device_buffers])
        torch._foreach_add_(device_params, total, alpha=-lr / len(betas))
