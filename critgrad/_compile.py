"""``compile=True``: the whole memory-plus-base step as torch.compile-d code, and proof that it ran.

Inductor fuses the memory's elementwise work into the wrapped optimizer's update (the direction is
never written to memory), as torch's compiled optimizers do. Dynamo keeps its compiled graphs per
code object with a budget of recompilations, after which it runs the function eagerly without a
word; each optimizer therefore compiles its own copy of the step's code, and counts the runs of
its compiled graphs so that it can report which implementation really applied a step.
"""

from __future__ import annotations

import itertools
import operator
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
import torch._dynamo

from . import _native as N
from .memory import resync_

_copies = itertools.count()


def own_code(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with a code object of its own, under a name of its own: dynamo keeps its
    compiled graphs per code object, and what it learnt of the shapes per code name (a second
    optimizer of other shapes would otherwise be compiled for shapes of any size)."""
    if isinstance(function, types.MethodType):
        return types.MethodType(own_code(function.__func__), function.__self__)
    name = f"{function.__code__.co_name}_{next(_copies)}"
    names: dict[str, Any] = (
        {"co_name": name, "co_qualname": name} if sys.version_info >= (3, 11) else {}
    )
    return types.FunctionType(
        function.__code__.replace(**names) if names else function.__code__.replace(co_name=name),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


@torch.library.custom_op("critgrad::materialize", mutates_args=())
def materialize(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of small tensors: in a compiled graph, an opaque step that makes inductor compute
    them once, in a kernel of their own, rather than inside the loops that read them."""
    return [value.clone() for value in values]


@materialize.register_fake
def _(values: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.empty_like(value) for value in values]


SMALL = 64
"""Tensors of at most this many elements are scalars here (coefficients, counts, keys)."""

LARGE = 1 << 18
"""Elementwise loops over at least this many elements read their scalars materialized. Inductor
inlines scalar arithmetic (``beta ** step``, divisions) into the loops that read it, so it runs
once per vector of 16 floats: ~ a third of a fused Adam update on the CPU. A materialization costs
~0.1 ms of dispatch, which pays off from about this size on."""


Resync = tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]
"""A running sum's resync put off until the compiled step has run: store, scaled sum, count, scale
(the arguments of :func:`critgrad.memory.resync_`)."""


def resync_or_defer_(
    store: torch.Tensor,
    scaled_sum: torch.Tensor,
    count: torch.Tensor,
    scale: float,
    deferred: list[Resync] | None,
) -> None:
    """:func:`critgrad.memory.resync_` now, or, for a LARGE sum when ``deferred`` is a list, put
    off to :func:`run_deferred` after the compiled step. Inductor cannot update a running sum in
    place when the resync's scatter follows the elementwise update in the same graph: it writes
    the whole sum to a temporary and copies it back (measured: the commit of a 2M-element tensor
    took 8.3 copy-passes with the resync in its graph, 4.9 without, and the resync run eagerly
    0.8). The values are the same: the resync reads the store after the slot write either way,
    and nothing else in the step reads the sum after it."""
    if deferred is not None and scaled_sum.numel() >= LARGE:
        deferred.append((store, scaled_sum, count, scale))
    else:
        resync_(store, scaled_sum, count, scale)


def run_deferred(deferred: list[Resync]) -> None:
    """The resyncs :func:`resync_or_defer_` put off, eagerly: by the native kernel where it
    takes the tensors (float32 on the CPU: one pass over the chunk instead of a dozen
    operations), else by torch operations."""
    for store, scaled_sum, count, scale in deferred:
        if not N.resync(store, scaled_sum, count, scale):
            resync_(store, scaled_sum, count, scale)


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return max((_numel(v) for v in value), default=0)
    return 0


def materialize_scalars(graph: torch.fx.GraphModule) -> int:
    """Rewrite ``graph`` (dynamo's, in place) so that every operation on LARGE tensors reads its
    SMALL tensor operands through :func:`materialize`, inserted just before it (so it copies
    the values that operation would have read). Returns the number of operations rewritten."""
    rewritten = 0
    for node in list(graph.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        if node.target is torch.ops.critgrad.materialize.default:
            continue
        large = max(_numel(node.meta.get("example_value")), _numel_of_args(node.args))
        if large < LARGE:
            continue
        small: list[torch.fx.Node] = []
        for arg in _flat_nodes((node.args, node.kwargs)):
            value = arg.meta.get("example_value")
            if (
                isinstance(value, torch.Tensor)
                and value.numel() <= SMALL
                and arg.op != "placeholder"
                and arg not in small
            ):
                small.append(arg)
        if not small:
            continue
        with graph.graph.inserting_before(node):
            copies = graph.graph.call_function(torch.ops.critgrad.materialize.default, (small,))
            copies.meta["example_value"] = [arg.meta["example_value"] for arg in small]
            items = []
            for i, arg in enumerate(small):
                item = graph.graph.call_function(operator.getitem, (copies, i))
                item.meta["example_value"] = arg.meta["example_value"]
                items.append(item)
        for arg, item in zip(small, items):
            node.replace_input_with(arg, item)
        rewritten += 1
    if rewritten:
        graph.graph.lint()
        graph.recompile()
    return rewritten


def _flat_nodes(args: Any) -> list[torch.fx.Node]:
    nodes: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, nodes.append)
    return nodes


def _numel_of_args(args: Any) -> int:
    return max((_numel(a.meta.get("example_value")) for a in _flat_nodes(args)), default=0)


def inductor_counting(
    on_compile: Callable[[], None], on_run: Callable[[], None]
) -> Callable[..., Any]:
    """A dynamo backend: inductor, calling ``on_compile()`` for every graph it compiles and
    ``on_run()`` every time a compiled graph runs. Small operands of large elementwise work are
    materialized first (:func:`materialize_scalars`)."""

    def backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        on_compile()
        materialize_scalars(graph)
        # Rounding to a low-precision store must happen where eager rounds (before the running
        # sum adds the value); inductor would otherwise keep the intermediate in float32.
        # compile_fx is typed to return str, list[str] or Weights too: those are its ahead-of-time
        # outputs, never produced for a graph compiled to run.
        inner = cast(
            "Callable[..., Any]",
            compile_fx(graph, example_inputs, config_patches={"emulate_precision_casts": True}),
        )

        def run(*args: Any) -> Any:
            on_run()
            return inner(*args)

        run._boxed_call = getattr(inner, "_boxed_call", False)  # type: ignore[attr-defined]
        return run

    return backend


class CompiledStep:
    """Calls ``torch.compile(function)``; ``ran_compiled`` says whether the last call ran compiled
    code, ``compiles`` counts the graphs compiled. Where no compiler works, warns once and runs
    ``function`` itself from then on."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function
        self.failed = False
        self.compiles = 0
        self.runs = 0
        self.ran_compiled = False
        backend = inductor_counting(self._count_compile, self._count_run)
        self._compiled = torch.compile(own_code(function), backend=backend)

    def _count_compile(self) -> None:
        self.compiles += 1

    def _count_run(self) -> None:
        self.runs += 1

    def __call__(self) -> Any:
        before = self.runs
        if self.failed:
            result = self.function()
        else:
            try:
                result = self._compiled()
            except torch._dynamo.exc.BackendCompilerFailed as error:
                # A compiler failure happens while tracing, before the step touched any tensor.
                self.failed = True
                warnings.warn(
                    f"critgrad: torch.compile is unavailable here ({error.inner_exception!r}); "
                    "compile=True runs the eager step instead",
                    RuntimeWarning,
                    stacklevel=4,
                )
                result = self.function()
        self.ran_compiled = self.runs > before
        return result
