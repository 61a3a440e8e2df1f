"""``compile=True``: the whole memory-plus-base step as torch.compile-d code, and proof that it ran.

Inductor fuses the memory's elementwise work into the wrapped optimizer's update (the direction is
never written to memory), as torch's compiled optimizers do. Dynamo keeps its compiled graphs per
code object with a budget of recompilations, after which it runs the function eagerly without a
word; each optimizer therefore compiles its own copy of the step's code, and counts the runs of
its compiled graphs so that it can report which implementation really applied a step.
"""

from __future__ import annotations

import itertools
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
import torch._dynamo

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


def inductor_counting(
    on_compile: Callable[[], None], on_run: Callable[[], None]
) -> Callable[..., Any]:
    """A dynamo backend: inductor, calling ``on_compile()`` for every graph it compiles and
    ``on_run()`` every time a compiled graph runs."""

    def backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        on_compile()
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
