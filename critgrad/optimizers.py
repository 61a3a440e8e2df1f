"""The named memory-augmented optimizers: torch's optimizers, each with a critical-gradient memory.

``critgrad.Adam(params, lr=1e-3, topC=10, decay=0.7)`` is ``torch.optim.Adam`` with the memory of
:class:`critgrad.CriticalGradients`. Each named class takes exactly the arguments of its torch
optimizer, in torch's order and with torch's defaults, followed by the memory's keyword-only
arguments. The paper's names (``SGD_C``, ``RMSprop_C``, ``Adam_C``, ``AdamW_C``) are aliases with
the reference package's keyword arguments and defaults, so replacing the import is the whole
migration.

The torch arguments are read from the installed torch class when this module is imported, and each
class gets a real ``__init__`` with that signature (names, kinds, defaults and annotations), so
``inspect.signature``, ``help()``, editors, runtime type checkers and configuration systems
(jsonargparse/LightningCLI, Hydra) see every argument, and an unknown keyword is refused by Python
itself with a TypeError naming it.
"""

from __future__ import annotations

import inspect
import linecache
import sys
import typing
from typing import Any, Literal

import torch
from torch.optim import optimizer as _torch_optimizer

from .aggmo import AggMo
from .memory import AGGREGATIONS, KEY_MODES, SELECTIONS
from .options import checked_lr
from .wrapper import CriticalGradients, key_from_synced

_P = inspect.Parameter

# torch's marker for an argument without a default (older SGD's ``lr``): such an argument stays
# required here too.
_TORCH_REQUIRED = getattr(_torch_optimizer, "required", object())


def _memory_parameters(aggr: str) -> list[inspect.Parameter]:
    """The memory's arguments of a named class (keyword-only), with the reference defaults."""
    return [
        _P("topC", _P.KEYWORD_ONLY, default=10, annotation=int),
        _P("decay", _P.KEYWORD_ONLY, default=0.7, annotation=float),
        _P("kappa", _P.KEYWORD_ONLY, default=1.0, annotation=float),
        _P("aggr", _P.KEYWORD_ONLY, default=aggr, annotation=Literal[AGGREGATIONS]),
        _P("synced", _P.KEYWORD_ONLY, default=None, annotation=bool | None),
        _P("key", _P.KEYWORD_ONLY, default=None, annotation=Literal[KEY_MODES] | None),
        _P("store_dtype", _P.KEYWORD_ONLY, default=None, annotation=torch.dtype | None),
        _P("selection", _P.KEYWORD_ONLY, default="critical", annotation=Literal[SELECTIONS]),
        _P("include_current", _P.KEYWORD_ONLY, default=True, annotation=bool),
        _P("compile", _P.KEYWORD_ONLY, default=False, annotation=bool),
    ]


_MEMORY_NAMES = tuple(p.name for p in _memory_parameters("mean"))


def _torch_parameters(base_class: type[torch.optim.Optimizer]) -> list[inspect.Parameter]:
    """The arguments of ``base_class`` (without ``self``), annotations resolved to objects."""
    try:
        hints = typing.get_type_hints(base_class.__init__)
    except Exception:  # an annotation this Python cannot evaluate: keep torch's own spelling
        hints = {}
    parameters = []
    for p in inspect.signature(base_class).parameters.values():
        default = _P.empty if p.default is _TORCH_REQUIRED else p.default
        parameters.append(p.replace(default=default, annotation=hints.get(p.name, p.annotation)))
    return parameters


def _qualified(cls: type) -> str:
    """``torch.optim.Adam`` for torch's classes (whatever submodule defines them), else the path."""
    if cls.__module__.startswith("torch.optim"):
        return f"torch.optim.{cls.__name__}"
    module = (
        cls.__module__.split(".")[0] if cls.__module__.startswith("critgrad") else cls.__module__
    )
    return f"{module}.{cls.__name__}"


def _named_signature(
    base_class: type[torch.optim.Optimizer], base: list[inspect.Parameter], aggr: str
) -> inspect.Signature:
    """``base_class``'s arguments followed by the memory's (before a ``**kwargs`` if torch has one)."""
    clash = sorted({p.name for p in base} & set(_MEMORY_NAMES))
    if clash:
        raise TypeError(
            f"{_qualified(base_class)} has arguments named like the memory's: {clash}; "
            "critgrad cannot build a named class for it"
        )
    if any(p.kind is _P.VAR_POSITIONAL for p in base):
        # Its keyword arguments could not be passed by name: no torch optimizer takes *args.
        raise TypeError(f"{_qualified(base_class)} takes *args; critgrad cannot name it")
    var_keyword = [p for p in base if p.kind is _P.VAR_KEYWORD]
    others = [p for p in base if p.kind is not _P.VAR_KEYWORD]
    return inspect.Signature(
        others + _memory_parameters(aggr) + var_keyword, return_annotation=None
    )


def _init_source(signature: inspect.Signature) -> str:
    """Source of an ``__init__(self, <signature>)`` that hands its arguments to ``_construct``.

    Defaults and annotations are attached to the function object afterwards, so the source only
    needs the names and kinds.
    """
    header = ["self"]
    names = []
    seen_star = False
    kinds = [p.kind for p in signature.parameters.values()]
    for i, p in enumerate(signature.parameters.values()):
        if p.kind is _P.VAR_KEYWORD:
            header.append("**" + p.name)
        else:
            if p.kind is _P.KEYWORD_ONLY and not seen_star:
                header.append("*")
                seen_star = True
            header.append(p.name)
        if p.kind is _P.POSITIONAL_ONLY and (i + 1 == len(kinds) or kinds[i + 1] != p.kind):
            header.append("/")
        names.append(p.name)
    arguments = ", ".join(f"{name!r}: {name}" for name in names)
    return f"def __init__({', '.join(header)}):\n    _construct(self, _spec, {{{arguments}}})\n"


def _make_init(cls_name: str, spec: _Spec) -> Any:
    """A real ``__init__`` with ``spec.signature``: names, kinds, defaults and annotations."""
    source = _init_source(spec.signature)
    filename = f"<critgrad.optimizers.{cls_name}.__init__>"
    namespace: dict[str, Any] = {"_construct": _construct, "_spec": spec}
    exec(compile(source, filename, "exec"), namespace)
    init = namespace["__init__"]
    # Tracebacks through the generated function show its source.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    parameters = list(spec.signature.parameters.values())
    init.__defaults__ = (
        tuple(
            p.default
            for p in parameters
            if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
            and p.default is not _P.empty
        )
        or None
    )
    init.__kwdefaults__ = {
        p.name: p.default
        for p in parameters
        if p.kind is _P.KEYWORD_ONLY and p.default is not _P.empty
    } or None
    init.__annotations__ = {
        **{p.name: p.annotation for p in parameters if p.annotation is not _P.empty},
        "return": None,
    }
    init.__module__ = __name__
    init.__qualname__ = f"{cls_name}.__init__"
    if sys.version_info >= (3, 11):
        # Python names the function in argument errors by its code's qualified name.
        init.__code__ = init.__code__.replace(co_qualname=init.__qualname__)
    return init


class _Spec:
    """What a generated ``__init__`` needs: the torch class, its signature, the memory's."""

    def __init__(self, base_class: type[torch.optim.Optimizer], aggr: str) -> None:
        base = _torch_parameters(base_class)
        self.base_class = base_class
        self.signature = _named_signature(base_class, base, aggr)
        self.base_names = frozenset(p.name for p in base)


def _construct(self: _MemoryOptimizer, spec: _Spec, arguments: dict[str, Any]) -> None:
    """Build the torch optimizer from its arguments, then the memory around it."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in spec.signature.parameters.values():
        if p.name not in spec.base_names:
            continue
        value = arguments[p.name]
        if p.kind is _P.POSITIONAL_ONLY:
            args.append(value)
        elif p.kind is _P.VAR_KEYWORD:
            kwargs.update(value)
        elif value is not p.default:
            # Arguments left at torch's default (the very object) are not passed: torch gets the
            # call the user wrote, and its own defaults apply.
            kwargs[p.name] = value
    if "lr" in kwargs:
        kwargs["lr"] = checked_lr(kwargs["lr"])
    key = key_from_synced(arguments["synced"], arguments["key"])
    base = spec.base_class(*args, **kwargs)
    CriticalGradients.__init__(
        self,
        base,
        topC=arguments["topC"],
        decay=arguments["decay"],
        kappa=arguments["kappa"],
        aggr=arguments["aggr"],
        key=key,
        store_dtype=arguments["store_dtype"],
        selection=arguments["selection"],
        include_current=arguments["include_current"],
        compile=arguments["compile"],
    )


class _MemoryOptimizer(CriticalGradients):
    """A torch optimizer class built with a memory; :func:`_named` makes the concrete classes."""

    base_class: type[torch.optim.Optimizer]
    default_aggr: str


def _format_default(value: Any) -> str:
    if value is _P.empty:
        return "required"
    if isinstance(value, str):
        return f'``"{value}"``'
    return f"``{value!r}``"


_MEMORY_DOCS = {
    "topC": "how many gradients each parameter keeps",
    "decay": "priority decay per step, in [0, 1]",
    "kappa": "weight of the memory, >= 0; 0 gives exactly ``{base}``",
    "aggr": "how the gradient and the memory combine: {aggregations}",
    "synced": (
        "the reference package's flag: True ranks by one key per group (the sum of the "
        "tensors' norms), False by each tensor's own norm; None leaves it to ``key``"
    ),
    "key": (
        "the norm that ranks a gradient: {key_modes}; None means ``synced``'s, "
        'or ``"sum_of_norms"``'
    ),
    "store_dtype": (
        "dtype of the stored gradients, e.g. ``torch.bfloat16``; None keeps the parameter's"
    ),
    "selection": (
        "which gradients the memory keeps once full: {selections} (see ``CriticalGradients``)"
    ),
    "include_current": (
        "False aggregates the memory alone, after the gradient was offered to it (the "
        "reference package's ``SGD_C_Only``; ``aggr`` does not apply)"
    ),
    "compile": "use the compiled implementation of the memory (see ``CriticalGradients``)",
}


def _docstring(name: str, spec: _Spec, summary: str) -> str:
    base = _qualified(spec.base_class)
    lines = [summary, "", "Args:"]
    for p in spec.signature.parameters.values():
        if p.name in _MEMORY_DOCS:
            text = _MEMORY_DOCS[p.name].format(
                base=base,
                aggregations=", ".join(f'``"{a}"``' for a in AGGREGATIONS),
                key_modes=", ".join(f'``"{k}"``' for k in KEY_MODES),
                selections=", ".join(f'``"{s}"``' for s in SELECTIONS),
            )
        elif p.name == "params":
            text = "parameters to optimize, or dicts defining parameter groups"
        else:
            text = f"as in ``{base}``"
        lines.append(f"    {p.name}: {text} (default: {_format_default(p.default)}).")
    lr = spec.signature.parameters["lr"].default
    lr = 0.01 if lr is _P.empty else lr  # a torch whose lr has no default
    lines += [
        "",
        f"The torch arguments are those of the installed ``{base}``, with its defaults;",
        "see its documentation for their meaning, and :class:`critgrad.CriticalGradients` for the",
        "memory's. ``topC``, ``decay``, ``kappa``, ``aggr``, ``key``, ``store_dtype``,",
        "``selection`` and ``include_current`` can also be set per parameter group.",
        "",
        "Example:",
        "    >>> model = torch.nn.Linear(3, 1)",
        f"    >>> opt = critgrad.{name}(model.parameters(), lr={lr!r}, topC=5, decay=0.7)",
        "    >>> model(torch.ones(2, 3)).sum().backward()",
        "    >>> opt.step()",
    ]
    return "\n".join(lines) + "\n"


def _named(name: str, base_class: type[torch.optim.Optimizer], aggr: str, summary: str) -> type:
    spec = _Spec(base_class, aggr)
    init = _make_init(name, spec)
    doc = _docstring(name, spec, summary)
    namespace = {
        "base_class": base_class,
        "default_aggr": aggr,
        "__init__": init,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": name,
    }
    return type(name, (_MemoryOptimizer,), namespace)


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

# An outside baseline of the paper's experiments, with the memory around it.
AggMo_C = _named(
    "AggMo_C",
    AggMo,
    "sum",
    "AggMo (aggregated momentum, :class:`critgrad.AggMo`) with a critical-gradient memory; "
    "every velocity accumulates the aggregate. ``aggr`` defaults to ``sum`` as for SGD.",
)
