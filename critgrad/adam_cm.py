r"""Adam with critical momenta (Malviya et al., "Promoting Exploration in Memory-Augmented Adam using
Critical Momenta", TMLR 2024; their package is CMOptimizer).

The memory of :mod:`critgrad.memory` turned onto Adam's first moment: each parameter keeps up to
``topC`` past *momenta*, ranked by the key of the gradient they were offered with (a key decays by
``decay`` every step). With g the raw gradient, B the n stored momenta before this step,
:math:`\gamma` = ``lr``, :math:`\lambda` = ``weight_decay`` and :math:`\kappa` = ``kappa``:

.. math::
    \theta &\leftarrow \theta\,(1 - \gamma\lambda) \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g \\
    \tilde m_t &= m_t + \kappa\,\mathrm{mean}(B) \qquad (\tilde m_t = m_t \text{ while B is empty}) \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, \tilde m_t^2 \\
    \theta &\leftarrow \theta - \frac{\gamma}{1 - \beta_1^t}\,
        \frac{\tilde m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

then :math:`m_t` (not :math:`\tilde m_t`) is offered to the memory with the key of g, under the
admission rule of the critical gradients (it enters while there is room, or replaces the entry
with the smallest priority if its key is strictly greater; a non-finite key never enters), and
every priority is multiplied by ``decay``. The second moment accumulates the aggregate, as in the
authors' code. ``kappa=0`` switches the memory off: the step is then exactly
``torch.optim.AdamW``'s (whose second moment accumulates :math:`g^2`, not :math:`m_t^2`; so a
small positive kappa is not close to AdamW, and kappa=0 is the one value that is).

Deliberate differences from the authors' ``Adam_CM``:

- their first step does not move the parameters (only their weight decay applies) and stores the
  raw gradient g; ours moves (by :math:`\gamma g / ((1 - \beta_1)|g| + \epsilon)` per element,
  since :math:`v_1` is :math:`\tilde m_1^2`) and stores :math:`m_1`. With a zero first gradient
  the two agree exactly on every step.
- their ``kappa`` only switches the memory on or off (any positive value adds the mean of the
  buffer unscaled); ours scales the mean, and ``kappa=0`` is AdamW (theirs fails at that value).
- the smallest priority is found exactly, non-finite keys never enter, ``topC`` defaults to 10
  like every critgrad optimizer (theirs: 5), and the memory is saved and restored with the state.

The memory is the critical gradients' (:mod:`critgrad.memory`): the same keys, admission,
bookkeeping, running sum and state entries (``critical_store`` ...), so ``opt.memory``,
``memory_stats()``, ``store_dtype`` and checkpoints work as for the other critgrad optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adam import adam as _torch_adam
from torch.optim.optimizer import (
    _default_to_fused_or_foreach,
    _get_scalar_dtype,
    _get_value,
    _stack_if_compiling,
)

from . import _native as N
from . import _state as S
from . import memory as M
from ._compile import CompiledStep, Resync, resync_or_defer_, run_deferred
from ._state import AGE, PRIORITY, SCALED_SUM, STATS, STORE
from .options import check_memory_options, key_from_synced
from .wrapper import _norms, _spread

MEMORY_OPTIONS = ("topC", "decay", "kappa", "key", "store_dtype")
"""Per-group hyperparameters of the memory (the core's, without ``aggr``: the aggregate is the
``sum`` rule applied to the momentum)."""


def _check_number(name: str, value: Any) -> None:
    # Comparisons, not math.isfinite: a traced step sees a changing number as a symbol.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


def _check_flag(name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        allowed = "True, False or None" if optional else "True or False"
        raise ValueError(f"Invalid {name}: {value!r} (must be {allowed})")


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyperparameter of a group and what it allows."""
    _check_number("lr", options["lr"])
    betas = options["betas"]
    if (
        isinstance(betas, (str, bytes))
        or not isinstance(betas, Sequence)
        or len(betas) != 2
        or any(
            isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1 for b in betas
        )
    ):
        raise ValueError(f"Invalid betas: {betas!r} (must be two numbers, each in [0, 1))")
    _check_number("eps", options["eps"])
    _check_number("weight_decay", options["weight_decay"])
    _check_flag("amsgrad", options["amsgrad"])
    _check_flag("maximize", options["maximize"])
    _check_flag("foreach", options["foreach"], optional=True)
    # The memory's options, checked by the core; the aggregate is its "sum" rule.
    check_memory_options({**options, "aggr": "sum"})


class Adam_CM(Optimizer):
    r"""Adam with critical momenta: a memory of past first moments, ranked by gradient norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g, \qquad
        \tilde m_t = m_t + \kappa\,\mathrm{mean}(B), \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) \tilde m_t^2, \\
        \theta \leftarrow \theta (1 - \gamma\lambda) - \frac{\gamma}{1 - \beta_1^t}
            \frac{\tilde m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    (the decay applied first; :math:`\tilde m_t = m_t` while the memory B is empty), then
    :math:`m_t` is offered to B with the key of the raw gradient g, and every priority decays.
    See :mod:`critgrad.adam_cm` for the differences from the authors' code.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr (float): learning rate :math:`\gamma`, >= 0 (default: 1e-3).
        betas (tuple of two floats): :math:`\beta_1, \beta_2`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): added to the denominator, >= 0 (default: 1e-8).
        weight_decay (float): decoupled weight decay :math:`\lambda`, >= 0, as in
            ``torch.optim.AdamW`` (default: 0, the authors').
        amsgrad (bool): normalise by the running maximum of :math:`v_t` (default: False).
        maximize (bool): maximise the objective (default: False); the memory then holds the
            momenta of the negated gradients.
        foreach (bool, optional): use the multi-tensor implementation; None picks it where
            torch would (default: None).
        topC (int): momenta kept per parameter tensor (default: 10).
        decay (float): priority decay per step, in [0, 1] (default: 0.7).
        kappa (float): weight of the memory's mean, >= 0 (default: 1.0). ``kappa=0`` is
            ``torch.optim.AdamW`` exactly: no memory is allocated and :math:`v` accumulates
            :math:`g^2`.
        synced (bool, optional): the authors' flag: True ranks by one key per group (the sum of
            the tensors' gradient norms), False by each tensor's own; None leaves it to ``key``.
        key (str, optional): ``"sum_of_norms"``, ``"per_tensor"`` or ``"global_norm"``
            (see :data:`critgrad.KEY_MODES`); None means ``synced``'s, or ``"sum_of_norms"``.
        store_dtype (torch.dtype, optional): dtype of the stored momenta, e.g.
            ``torch.bfloat16`` (their running sum is then kept in float32); None keeps the
            parameter's.
        compile (bool): run the whole step as ``torch.compile``-d code (default: False);
            ``last_step_implementation`` says which ran.

    All but ``compile`` live in ``param_groups`` and can differ per group and change between
    steps (``topC`` and ``store_dtype`` only before a group's first step).

    State, per parameter: torch's AdamW entries (``step``, ``exp_avg`` = :math:`m_t`,
    ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad) and the memory's (``critical_store``,
    ``critical_sum_scaled``, ``critical_priority``, ``critical_age``, ``critical_stats``,
    ``critical_key``), all tensors on the parameter's device except ``step``, a CPU tensor as in
    torch (reading it waits for no device). ``step()`` never waits for the device.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = critgrad.Adam_CM(model.parameters(), lr=1e-3, topC=5, decay=0.7)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        topC: int = 10,
        decay: float = 0.7,
        kappa: float = 1.0,
        synced: bool | None = None,
        # The modes' tuple: typing spreads it into Literal's values at run time (what signature
        # readers see); mypy accepts only values written out.
        key: Literal[M.KEY_MODES] | None = None,  # type: ignore[valid-type]
        store_dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            topC=topC,
            decay=decay,
            kappa=kappa,
            key=key_from_synced(synced, key),
            store_dtype=store_dtype,
        )
        check_options(defaults)
        _check_flag("compile", compile)
        self.compile = compile
        self.last_step_implementation: str | None = None
        self._compiled: CompiledStep | None = None
        super().__init__(params, defaults)

    # ---------------------------------------------------------------- torch.optim API

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group)}")
        check_options({**self.defaults, **param_group})
        super().add_param_group(param_group)
        if any(p.is_complex() for p in self.param_groups[-1]["params"]):
            self.param_groups.pop()
            raise ValueError(
                "Adam_CM does not support complex parameters; optimise torch.view_as_real(p)"
            )

    def __getstate__(self) -> dict[str, Any]:
        # Compiled code is rebuilt where it runs (copies, pickles).
        return {
            **super().__getstate__(),
            "compile": self.compile,
            "last_step_implementation": self.last_step_implementation,
            "_compiled": None,
        }

    @property
    def memory(self) -> Mapping[Tensor, dict[str, Tensor]]:
        """Read-only: each parameter's memory as in :attr:`critgrad.CriticalGradients.memory`
        (``critical_store`` holds momenta here)."""
        return S.MemoryView(self)

    @torch.no_grad()
    def memory_stats(self) -> list[dict[str, Any]]:
        """Statistics of the memory, one dict per parameter group, with the fields of
        :meth:`critgrad.CriticalGradients.memory_stats` (reads the device: not every step)."""
        return [S.statistics(group, self.state) for group in self.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, the memory inside each parameter's entry (keys starting with
        ``critical_``); each entry a new dict, so editing it leaves the optimizer as it was."""
        state_dict = super().state_dict()
        state_dict["state"] = {index: dict(entry) for index, entry in state_dict["state"].items()}
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (or by ``torch.optim.AdamW``).

        The memory is restored on each parameter's device with the dtypes it was created with
        (torch would cast it to the parameter's dtype). A state saved with another ``topC``, or
        for parameters of other shapes, is refused.
        """
        S.load_with_memory(self, state_dict, super().load_state_dict, MEMORY_OPTIONS)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Perform one optimization step (the closure, if given, is evaluated first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # A step that creates state runs eagerly: compiling it would cost a graph that never
        # runs again, and traced code must not add entries to the state.
        if self.compile and not self._creates_state():
            if self._compiled is None:
                self._compiled = CompiledStep(self._step_groups)
            deferred = self._compiled()
            self.last_step_implementation = "compiled" if self._compiled.ran_compiled else "eager"
        else:
            deferred = self._step_groups()
            self.last_step_implementation = "eager"
        run_deferred(deferred)
        return loss

    # ---------------------------------------------------------------- the step

    def _creates_state(self) -> bool:
        state = self.state
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                entries = state.get(p, ())
                if "exp_avg" not in entries or (group["kappa"] != 0 and STORE not in entries):
                    return True
        return False

    def _step_groups(self) -> list[Resync]:
        """Step every group; returns the resyncs of large running sums that ``compile=True``
        runs after its compiled code (:func:`critgrad._compile.resync_or_defer_`)."""
        deferred: list[Resync] = []
        for group in self.param_groups:
            check_options(group)
            gathered = self._gather(group)
            if gathered is not None:
                self._step_group(group, *gathered, deferred=deferred if self.compile else None)
        return deferred

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], ...] | None:
        """The group's parameters with a gradient and their state, created where missing."""
        params = list(dict.fromkeys(p for p in group["params"] if p.grad is not None))
        if not params:
            return None
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("Adam_CM does not support sparse gradients")
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:  # torch.optim.AdamW's initial state
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["kappa"] != 0:
                self._check_memory(p, group)
        states = [self.state[p] for p in params]
        return (
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
            [s["step"] for s in states],
        )

    def _check_memory(self, p: Tensor, group: Mapping[str, Any]) -> None:
        """Give ``p`` an empty memory if it has none; refuse a changed topC or store_dtype."""
        state = self.state[p]
        if STORE not in state:
            state.update(S.new_memory(p, group))
            return
        store = state[STORE]
        if store.shape[0] != group["topC"] or store.dtype != (group["store_dtype"] or p.dtype):
            raise ValueError(
                f"topC and store_dtype can only be set before a group's first step: the "
                f"memory holds topC={store.shape[0]} momenta as {store.dtype}, the group "
                f"now says topC={group['topC']}, store_dtype={group['store_dtype']}"
            )

    def _step_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
        *,
        deferred: list[Resync] | None = None,
    ) -> None:
        beta1, beta2 = group["betas"]
        hyperparameters = dict(
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            foreach=_foreach(group["foreach"], params),
        )
        if group["kappa"] == 0:  # torch.optim.AdamW's step, by torch's own function
            _torch_adam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                decoupled_weight_decay=True,
                **hyperparameters,
            )
            return
        # Decide the memory's part before anything changes: keys of the raw gradients, the
        # admission of this step's momenta, the weight of the stored sum in the aggregate.
        memories = [self.state[p] for p in params]
        scale = M.sum_scale(group["topC"])
        found = N.takes(grads, memories)
        state = N.adam_cm_tensors(self.state, group, params) if found is not None else None
        if found is not None and state is not None:
            # float32 on the CPU: the whole step in native kernels, one pass over the tensors
            decided = N.plan(
                found,
                grads,
                key=group["key"],
                selection="critical",
                seed=None,
                aggr="sum",  # m + kappa * mean(B); m if empty
                kappa=group["kappa"],
                scale=scale,
            )
            N.fused_step(decided, state, scale, group["decay"])
            return
        keys = M.keys_from_norms(_norms(grads), group["key"])
        priority, age, stats = (
            torch.stack([m[name].to(keys.device) for m in memories])
            for name in (PRIORITY, AGE, STATS)
        )
        admit, slot, filled = M.admission(keys, priority, age)
        c, _ = M.coefficients("sum", filled, group["kappa"])  # m + kappa * mean(B); m if empty
        adam_cm(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            [m[SCALED_SUM] for m in memories],
            _spread(c / scale, params),
            **hyperparameters,
        )
        # Then the momenta m_t (not the aggregates) are offered, and the priorities decay.
        slots = _spread(slot[:, None], params)
        admits = _spread(admit, params)
        counts = _spread(stats[:, 0], params)
        for i, memory in enumerate(memories):
            M.write_slot_(
                memory[STORE], memory[SCALED_SUM], exp_avgs[i], slots[i], admits[i], scale
            )
            resync_or_defer_(memory[STORE], memory[SCALED_SUM], counts[i], scale, deferred)
        priority, age, increment = M.bookkeeping(
            keys, priority, age, admit, slot, filled, group["decay"]
        )
        for name, values in (
            (PRIORITY, priority),
            (AGE, age),
            (STATS, stats + increment),
            (S.KEY, keys[:, None].to(memories[0][S.KEY].dtype)),
        ):
            torch._foreach_copy_([m[name] for m in memories], list(values.unbind(0)))


def _foreach(foreach: bool | None, params: list[Tensor]) -> bool:
    """Whether to use the multi-tensor implementation: as asked, or where torch would. Traced,
    never: inductor writes its own fused loops whichever is traced, and torch's foreach update
    takes its per-tensor step sizes as a CPU tensor that dynamo cannot trace outside torch's own
    optimizer classes."""
    if torch.compiler.is_compiling():
        return False
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return bool(foreach)


def adam_cm(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    scaled_sums: list[Tensor],
    sum_weights: list[Tensor],
    *,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    foreach: bool | None = None,
) -> list[Tensor]:
    """Functional Adam_CM update of ``params`` and their moments, in place; returns the aggregates.

    The aggregate of each tensor is ``m_t + w * T``, with T its memory's scaled sum
    (:func:`critgrad.memory.sum_scale` times the sum of the stored momenta) and w its 0-d
    ``sum_weights`` entry (kappa / (n * scale), 0 for an empty memory). The memory itself is
    not changed here.
    """
    if _foreach(foreach, params):
        update_first, update_rest = _multi_tensor_first_moment, _multi_tensor_rest
    else:
        update_first, update_rest = _single_tensor_first_moment, _single_tensor_rest
    update_first(params, grads, exp_avgs, state_steps, beta1, lr, weight_decay, maximize)
    aggregates = M.directions(exp_avgs, scaled_sums, sum_weights, None)
    update_rest(
        params,
        aggregates,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        amsgrad,
        beta1,
        beta2,
        lr,
        eps,
    )
    return aggregates


# Both implementations run the same operations in the same order as torch's Adam (lerp for the
# first moment, then the same bias corrections): on the CPU, where torch's foreach operations run
# one tensor at a time, they agree bit for bit.


def _single_tensor_first_moment(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    beta1: float,
    lr: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """Count the step, apply the decoupled decay, and m_t = lerp(m, g, 1 - beta1)."""
    for param, grad, exp_avg, step_t in zip(params, grads, exp_avgs, state_steps):
        step_t += 1
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(-grad if maximize else grad, 1 - beta1)


def _single_tensor_rest(
    params: list[Tensor],
    aggregates: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
) -> None:
    """v_t from the aggregate, then the bias-corrected step along the aggregate."""
    for i, (param, aggregate, exp_avg_sq, step_t) in enumerate(
        zip(params, aggregates, exp_avg_sqs, state_steps)
    ):
        exp_avg_sq.mul_(beta2).addcmul_(aggregate, aggregate, value=1 - beta2)
        step = _get_value(step_t)  # a CPU tensor: eagerly a number, traced a tensor
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = (max_exp_avg_sqs[i].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(aggregate, denom, value=-step_size)


def _multi_tensor_first_moment(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    beta1: float,
    lr: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    # torch types the lists as holding Optional tensors (it groups lists with holes too); these
    # have none.
    lists = cast("list[list[Tensor | None]]", [params, grads, exp_avgs, state_steps])
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists)
    for device_lists, _ in grouped.values():
        device_params, device_grads, device_exp_avgs, device_steps = cast(
            "list[list[Tensor]]", device_lists
        )
        if maximize:
            # (a tuple where the list was: the foreach calls below take either)
            device_grads = torch._foreach_neg(device_grads)  # type: ignore[assignment]
        torch._foreach_add_(device_steps, 1)
        if weight_decay != 0:
            torch._foreach_mul_(device_params, 1 - lr * weight_decay)
        torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta1)


def _multi_tensor_rest(
    params: list[Tensor],
    aggregates: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
) -> None:
    lists = cast(  # (Optional tensors in torch's types, as above)
        "list[list[Tensor | None]]", [params, aggregates, exp_avg_sqs, max_exp_avg_sqs, state_steps]
    )
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists)
    for device_lists, _ in grouped.values():
        (
            device_params,
            device_aggregates,
            device_exp_avg_sqs,
            device_max_exp_avg_sqs,
            device_steps,
        ) = cast("list[list[Tensor]]", device_lists)
        torch._foreach_mul_(device_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(device_exp_avg_sqs, device_aggregates, device_aggregates, 1 - beta2)
        bias_correction1 = [1 - beta1 ** _get_value(step) for step in device_steps]
        bias_correction2 = [1 - beta2 ** _get_value(step) for step in device_steps]
        step_size = _stack_if_compiling([(lr / bc) * -1 for bc in bias_correction1])
        bias_correction2_sqrt = [bc**0.5 for bc in bias_correction2]
        if amsgrad:
            torch._foreach_maximum_(device_max_exp_avg_sqs, device_exp_avg_sqs)
            denom = torch._foreach_sqrt(device_max_exp_avg_sqs)
        else:
            denom = torch._foreach_sqrt(device_exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(device_params, device_aggregates, denom, step_size)
