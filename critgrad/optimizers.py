"""The named memory-augmented optimizers: torch's optimizers, each with a critical-gradient memory.

``critgrad.Adam(params, lr=1e-3, topC=10, decay=0.7)`` is ``torch.optim.Adam`` with the memory of
:class:`critgrad.CriticalGradients`. Every keyword of the torch optimizer is accepted and passed
through (``momentum``, ``nesterov``, ``amsgrad``, ``foreach``, ``fused``, ...). The paper's names
(``SGD_C``, ``RMSprop_C``, ``Adam_C``, ``AdamW_C``) are aliases with the reference package's keyword
arguments and defaults, so replacing the import is the whole migration.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .wrapper import CriticalGradients, key_from_synced


class _MemoryOptimizer(CriticalGradients):
    """A torch optimizer class built with a memory; subclasses set ``base_class``."""

    base_class: type[torch.optim.Optimizer]
    default_aggr = "mean"

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor | None = None,
        *,
        topC: int = 10,
        decay: float = 0.7,
        kappa: float = 1.0,
        aggr: str | None = None,
        synced: bool | None = None,
        key: str | None = None,
        store_dtype: torch.dtype | None = None,
        compile: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if lr is None:
            lr = inspect.signature(self.base_class).parameters["lr"].default
        base = self.base_class(params, lr=lr, **base_kwargs)
        super().__init__(
            base,
            topC=topC,
            decay=decay,
            kappa=kappa,
            aggr=self.default_aggr if aggr is None else aggr,
            key=key_from_synced(synced, key),
            store_dtype=store_dtype,
            compile=compile,
        )


_SHARED_DOC = """
    Memory arguments (see :class:`critgrad.CriticalGradients`): ``topC`` (10), ``decay`` (0.7),
    ``kappa`` (1.0; 0 gives exactly ``torch.optim.{base}``), ``aggr`` (``"{aggr}"``), ``synced``
    (True: one key per group, the sum of the tensors' norms; False: per tensor) or ``key``
    (``"sum_of_norms"``, ``"per_tensor"``, ``"global_norm"``), ``store_dtype`` (None), ``compile`` (False).
    ``lr`` and every other argument are those of ``torch.optim.{base}`` (default lr {lr}).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = critgrad.{name}(model.parameters(), lr={lr}, topC=5, decay=0.7)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> opt.step()
"""


def _named(name: str, base_class: type[torch.optim.Optimizer], aggr: str, summary: str) -> type:
    lr = inspect.signature(base_class).parameters["lr"].default
    doc = summary + "\n" + _SHARED_DOC.format(base=base_class.__name__, aggr=aggr, name=name, lr=lr)
    cls = type(
        name,
        (_MemoryOptimizer,),
        {"base_class": base_class, "default_aggr": aggr, "__doc__": doc, "__module__": __name__},
    )
    return cls


SGD = _named(
    "SGD",
    torch.optim.SGD,
    "sum",
    "SGD (with momentum, dampening, Nesterov, weight decay) with a critical-gradient "
    "memory. The aggregate replaces the gradient before weight decay and momentum.",
)
RMSprop = _named(
    "RMSprop",
    torch.optim.RMSprop,
    "mean",
    "RMSprop (centered, momentum) with a critical-gradient memory; the square "
    "average accumulates the aggregate.",
)
Adam = _named(
    "Adam",
    torch.optim.Adam,
    "mean",
    "Adam (and AMSGrad) with a critical-gradient memory; both moments accumulate the "
    "aggregate; L2 weight decay is added to the aggregate.",
)
AdamW = _named(
    "AdamW",
    torch.optim.AdamW,
    "mean",
    "AdamW with a critical-gradient memory; decoupled weight decay as in torch.",
)
Adagrad = _named("Adagrad", torch.optim.Adagrad, "mean", "Adagrad with a critical-gradient memory.")
Adamax = _named("Adamax", torch.optim.Adamax, "mean", "Adamax with a critical-gradient memory.")
NAdam = _named("NAdam", torch.optim.NAdam, "mean", "NAdam with a critical-gradient memory.")
RAdam = _named("RAdam", torch.optim.RAdam, "mean", "RAdam with a critical-gradient memory.")

# The reference package's names.
SGD_C = SGD
RMSprop_C = RMSprop
Adam_C = Adam
AdamW_C = AdamW

# Outside baselines of the paper's experiments, with the memory around them.
from .aggmo import AggMo as _AggMo  # noqa: E402 (kept beside its entry: the list above may change)

AggMo_C = _named(
    "AggMo_C",
    _AggMo,
    "sum",
    "AggMo (aggregated momentum, :class:`critgrad.AggMo`) with a critical-gradient memory; "
    "every velocity accumulates the aggregate. ``aggr`` defaults to ``sum`` as for SGD.",
)
AggMo_C.__doc__ = AggMo_C.__doc__.replace("torch.optim.AggMo", "critgrad.AggMo")
