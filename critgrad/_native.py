"""The eager step's memory work for float32 CPU tensors, in C.

Written as torch operations, a group's step costs about a hundred small operations (admission,
coefficients, bookkeeping) and ~14 passes over the gradients at the speed of a copy or below
(see the README's Performance section). Here, per group and step: :func:`plan` (the keys from
the gradients' norms, admission and coefficients, from each tensor's own priorities, ages and
counts), then either :func:`fused_step` (for torch's Adam, AdamW and SGD: the directions, the
base's update and the memory's writes in one pass) or :func:`directions` (one pass), the base's
own step and :func:`finish` (slot writes and running sums in one pass, resync, bookkeeping). The
memory's results are the torch path's bit for bit, but for two sums taken in an order of their
own (:file:`critgrad/_native.c` says why): each gradient's norm, its float32 squares summed in
float64 in a fixed order whatever the threads and rounded to float32, with float32's range
(torch sums in float32, in an order that depends on its vectorization: the keys and priorities
differ in the last bits of float32; zero and infinite norms are the same), and
the resync's sum over the stored rows, taken in row order. The base's update is the arithmetic
of its for-loop implementation (equal to it for SGD; for Adam, within the rounding of torch's
vectorized square root). The wrapper takes this path wherever :func:`takes` allows it (outside a
traced step, every tensor a plain contiguous CPU tensor, the gradients, stores and sums
float32, ``include_current=True``).

The C file is compiled once per source, compiler and platform, with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``; OpenMP where it has it, so that the kernels share
torch's threads), into a cache folder: ``$CRITGRAD_CACHE``, else ``$XDG_CACHE_HOME/critgrad``
(``~/.cache/critgrad``), else a folder of the user's in the temporary folder. Where no
compiler works, or with ``CRITGRAD_NATIVE=0`` in the environment, every step takes the torch path
(the same values); :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from ._state import AGE, KEY, PRIORITY, SCALED_SUM, STATS, STORE
from .memory import RESYNC_PER_SLOT
from .options import SEED

SOURCE = Path(__file__).with_name("_native.c")
FLAGS = [
    "-O3",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fPIC",
    "-shared",
    "-Wno-unknown-pragmas",
]
"""-ffp-contract=off: no product and sum fused where the source does not say so (fmaf);
-fno-trapping-math: branches on constants become selects (the loops vectorize); values are IEEE
float32 either way."""

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_reason: str | None = None
_loaded = False
calls = 0
"""How many native calls ran in this process (tests read it to know which path a step took)."""


def enabled() -> bool:
    """Whether the environment allows the native path (``CRITGRAD_NATIVE=0`` switches it off)."""
    return os.environ.get("CRITGRAD_NATIVE", "1") != "0"


def _cache_dirs() -> list[Path]:
    """Where the library may be built, in order of preference (the first writable one is)."""
    if os.environ.get("CRITGRAD_CACHE"):
        return [Path(os.environ["CRITGRAD_CACHE"])]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = getattr(os, "getuid", lambda: "user")()
    return [Path(base) / "critgrad", Path(tempfile.gettempdir()) / f"critgrad-{user}"]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str) -> Path:
    """The shared library for this source, compiler, flags and platform: built once (with OpenMP
    where the compiler has it, else without), atomically, in the first writable cache folder."""
    source = SOURCE.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    folders = _cache_dirs()
    folder = next((f for f in folders if _writable(f)), folders[0])
    errors = []
    for flags in (FLAGS + ["-fopenmp"], FLAGS):
        key = hashlib.sha256(
            b"\0".join(
                [source, version.encode(), " ".join(flags).encode(), platform.platform().encode()]
            )
        ).hexdigest()[:20]
        target = folder / f"critgrad_native_{key}.so"
        if target.exists():
            return target
        # Built under a temporary name and renamed: a concurrent process sees no half-written file.
        fd, temporary = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            result = subprocess.run(
                [compiler, *flags, str(SOURCE), "-o", temporary, "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if result.returncode == 0:
                os.chmod(temporary, 0o755)
                os.replace(temporary, target)
                return target
            errors.append(f"{compiler} {' '.join(flags)}: {result.stderr.strip()[-1000:]}")
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    raise RuntimeError("; ".join(errors))


def _load() -> ctypes.CDLL | None:
    global _library, _reason, _loaded
    with _lock:
        if _loaded:
            return _library
        _loaded = True
        if sys.platform == "win32":
            _reason = "the native kernels are built for POSIX systems only"
            return None
        compiler = _compiler()
        if compiler is None:
            _reason = "no C compiler found ($CC, cc, gcc, clang)"
            return None
        try:
            library = ctypes.CDLL(str(_build(compiler)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _reason = f"the native kernels could not be built or loaded: {error}"
            return None
        pointer, int64, float32, double = (
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_float,
            ctypes.c_double,
        )
        functions = {
            "critgrad_directions": [int64] + [pointer] * 7 + [ctypes.c_int],
            "critgrad_plan": [int64, pointer, int64, pointer, pointer, ctypes.c_int, ctypes.c_int]
            + [pointer] * 4
            + [int64, ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int, double, double]
            + [pointer] * 5,
            "critgrad_resync": [pointer, pointer, int64, int64, int64, pointer, float32],
            "critgrad_sgd": [int64]
            + [pointer] * 18
            + [ctypes.c_int, ctypes.c_int, int64, int64, float32, double, ctypes.c_int],
            "critgrad_adam": [int64]
            + [pointer] * 21
            + [ctypes.c_int, ctypes.c_int, ctypes.c_int, int64, int64, float32, double]
            + [pointer, pointer, ctypes.c_int],
            "critgrad_finish": [int64]
            + [pointer] * 13
            + [int64, int64, float32, double, ctypes.c_int],
        }
        for name, argtypes in functions.items():
            function = getattr(library, name)
            function.argtypes = argtypes
            function.restype = None
        _library = library
        return library


def available() -> bool:
    """Whether the native kernels are built and loaded (builds them on the first call)."""
    return enabled() and _load() is not None


def unavailable_reason() -> str | None:
    """Why the native kernels are not used, or None when they are."""
    if not enabled():
        return "switched off by CRITGRAD_NATIVE=0"
    _load()
    return _reason


_PLAIN = (torch.Tensor, torch.nn.Parameter)
MEMORY_NAMES = (STORE, SCALED_SUM, PRIORITY, AGE, STATS, KEY)
_DTYPES = (torch.float32, torch.float32, torch.float64, torch.int64, torch.int64, torch.float64)


def plain_cpu(t: Tensor) -> bool:
    # type(), not isinstance: tensor subclasses (DTensor, FakeTensor) keep their data elsewhere;
    # a negative view's memory holds the values with the other sign
    return type(t) in _PLAIN and t.is_cpu and t.is_contiguous() and not t.is_neg()


_cache: dict[tuple[str, int], tuple[tuple[weakref.ref[Tensor], ...], tuple[int, ...], Any]] = {}


def _cached(kind: str, tensors: list[Tensor], build: Callable[[], Any]) -> Any:
    """``build()`` for these tensors, kept while they are the same tensors at the same addresses
    (the entry goes when the first of them does): what is built from them, the checks of their
    dtypes and layouts and the arrays of their data pointers, is built once."""
    key = (kind, id(tensors[0]))
    cached = _cache.get(key)
    if (
        cached is not None
        and len(cached[0]) == len(tensors)
        and all(ref() is t for ref, t in zip(cached[0], tensors))
        and all(t.data_ptr() == address for t, address in zip(tensors, cached[1]))
    ):
        return cached[2]
    built = build()
    if built is not None:
        refs = tuple(weakref.ref(t) for t in tensors)
        _cache[key] = (refs, tuple(t.data_ptr() for t in tensors), built)
        weakref.finalize(tensors[0], _cache.pop, key, None)
    return built


class Layout(NamedTuple):
    """The data pointers of a group's memories, for the native kernels."""

    capacity: int
    numel: ctypes.Array[ctypes.c_int64]
    offset: ctypes.Array[ctypes.c_int64]  # n + 1 prefix sums of numel
    pointers: dict[str, ctypes.Array[ctypes.c_void_p]]  # per name in MEMORY_NAMES


def layout(memories: Sequence[Mapping[str, Tensor]]) -> Layout | None:
    """The memories' layout, or None where the native kernels cannot take them: outside a traced
    step, every memory tensor must be a plain contiguous CPU tensor, the stores and sums float32
    (and the library built: see :func:`available`)."""
    if torch.compiler.is_compiling() or not memories or not enabled():
        return None
    tensors = [m[name] for m in memories for name in MEMORY_NAMES]
    width = len(MEMORY_NAMES)

    def build() -> Layout | None:
        for i, t in enumerate(tensors):
            if t.dtype is not _DTYPES[i % width] or not plain_cpu(t):
                return None
        if not available():
            return None
        numel, offset = _sizes(tensors[1::width])  # the sums: one gradient's shape each
        pointers = {name: _pointers(tensors[i::width]) for i, name in enumerate(MEMORY_NAMES)}
        return Layout(tensors[0].shape[0], numel, offset, pointers)

    return cast("Layout | None", _cached("memory", tensors, build))


def takes(grads: Sequence[Tensor], memories: Sequence[Mapping[str, Tensor]]) -> Layout | None:
    """The memories' layout if the native kernels can take this step (float32 gradients of the
    memories' sizes, plain contiguous CPU tensors), else None."""
    found = layout(memories)
    if found is None:
        return None
    for g, size in zip(grads, found.numel):
        if g.dtype is not torch.float32 or not plain_cpu(g) or g.numel() != size:
            return None
    return found


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _sizes(
    tensors: Sequence[Tensor],
) -> tuple[ctypes.Array[ctypes.c_int64], ctypes.Array[ctypes.c_int64]]:
    """Each tensor's number of elements, and their n + 1 prefix sums."""
    numel = [t.numel() for t in tensors]
    offset = [0]
    for size in numel:
        offset.append(offset[-1] + size)
    return (ctypes.c_int64 * len(numel))(*numel), (ctypes.c_int64 * len(offset))(*offset)


def _float64s(values: Tensor) -> Tensor:
    """``values`` as a one-dimensional float64 CPU tensor (its elements ``stride(0)`` apart)."""
    if values.dtype != torch.float64 or values.device.type != "cpu" or values.dim() != 1:
        values = values.to(device="cpu", dtype=torch.float64).reshape(-1)
    return values


class Plan(NamedTuple):
    """What :func:`plan` decided for the n tensors of a group, in arrays of n values."""

    layout: Layout
    grads: ctypes.Array[ctypes.c_void_p]  # the gradients the plan was made for
    keys: ctypes.Array[ctypes.c_double]
    admit: ctypes.Array[ctypes.c_uint8]
    slot: ctypes.Array[ctypes.c_int64]
    filled: ctypes.Array[ctypes.c_int64]  # entries before this step
    b: ctypes.Array[ctypes.c_float]  # the direction is s * g + b * (scaled sum)
    s: ctypes.Array[ctypes.c_float] | None  # None: 1 (aggr "sum")


KEY_CODES = {"sum_of_norms": 0, "per_tensor": 1, "global_norm": 2}
SELECTION_CODES = {"critical": 0, "recent": 1, "smallest": 2, "random": 3}
AGGREGATION_CODES = {"sum": 0, "mid": 1, "mean": 2}


def plan(
    found: Layout,
    grads: Sequence[Tensor],
    keys: Tensor | None = None,
    *,
    key: str,
    selection: str,
    seed: int | None,
    aggr: str,
    kappa: float,
    scale: float,
) -> Plan:
    """The keys of ``grads`` (:func:`critgrad.memory.keys_from_norms` of their L2 norms, the
    float32 squares summed in float64 in a fixed order whatever the threads and rounded to
    float32, infinite past float32's range, as torch's float32 norms are; or ``keys``, ``(n,)``, possibly a broadcast view of one key, where they
    come from elsewhere), then the admission (:func:`critgrad.memory.admission`, with
    :func:`critgrad.memory.random_slots`) and the aggregation coefficients
    (:func:`critgrad.memory.coefficients`) for the n memories of ``found``, read from each
    tensor's own priorities, ages and counts: the torch path's decisions and values."""
    global calls
    library = cast(ctypes.CDLL, _library)
    given = None if keys is None else _float64s(keys)
    decided = _new_plan(found, _pointers(grads), aggr)
    options = dict(key=key, selection=selection, seed=seed, aggr=aggr, kappa=kappa)
    library.critgrad_plan(*_plan_arguments(decided, given, scale, options))
    calls += 1
    return decided


def plan_options(group: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`plan` that a parameter group holds."""
    return dict(
        key=group["key"],
        selection=group["selection"],
        seed=group.get(SEED),
        aggr=group["aggr"],
        kappa=group["kappa"],
    )


def _new_plan(found: Layout, grads: ctypes.Array[ctypes.c_void_p], aggr: str) -> Plan:
    n = len(found.numel)
    return Plan(
        found,
        grads,
        (ctypes.c_double * n)(),
        (ctypes.c_uint8 * n)(),
        (ctypes.c_int64 * n)(),
        (ctypes.c_int64 * n)(),
        (ctypes.c_float * n)(),
        None if aggr == "sum" else (ctypes.c_float * n)(),
    )


_PLAN_THREADS = 6  # the place of the thread count among critgrad_plan's arguments


def _plan_arguments(
    decided: Plan, given: Tensor | None, scale: float, options: Mapping[str, Any]
) -> list[Any]:
    found = decided.layout
    key, aggr, seed = options["key"], options["aggr"], options["seed"]
    return [
        len(found.numel),
        None if given is None else given.data_ptr(),
        0 if given is None else given.stride(0),
        decided.grads,
        found.numel,
        KEY_CODES[key],
        torch.get_num_threads(),
        decided.keys,
        found.pointers[PRIORITY],
        found.pointers[AGE],
        found.pointers[STATS],
        found.capacity,
        SELECTION_CODES[options["selection"]],
        seed or 0,
        key == "per_tensor",
        AGGREGATION_CODES[aggr],
        options["kappa"],
        scale,
        *decided[3:],
    ]


def directions(grads: Sequence[Tensor], decided: Plan) -> list[Tensor]:
    """``s * g + b * T`` for each gradient g and scaled sum T, with the coefficients of
    ``decided``: the same values as :func:`critgrad.memory.directions`, in new tensors."""
    global calls
    library = cast(ctypes.CDLL, _library)
    out = _direction_buffers(decided.layout, grads)
    library.critgrad_directions(*_directions_arguments(decided, _pointers(out)))
    calls += 1
    return out


def _direction_buffers(found: Layout, grads: Sequence[Tensor]) -> list[Tensor]:
    """New tensors for the directions of ``grads``: views of one buffer for the group, so that
    the allocator can reuse one block from step to step (a new block's pages cost more than the
    pass over them on some machines)."""
    flat = torch.empty(found.offset[len(grads)], dtype=torch.float32)
    return [flat.as_strided(g.shape, g.stride(), a) for g, a in zip(grads, found.offset)]


def _directions_arguments(decided: Plan, out: ctypes.Array[ctypes.c_void_p]) -> list[Any]:
    found = decided.layout
    return [
        len(found.numel),
        decided.grads,
        found.pointers[SCALED_SUM],
        out,
        found.numel,
        found.offset,
        decided.b,
        decided.s,
        torch.get_num_threads(),
    ]


def finish(decided: Plan, scale: float, decay: float) -> None:
    """After the base step: where admitted, ``store[slot] = g`` and the scaled sum trades the old
    entry for g (:func:`critgrad.memory.write_slot_`); every sum's resync chunk
    (:func:`critgrad.memory.resync_`, the stored rows summed in row order); then the
    bookkeeping of :func:`critgrad.memory.bookkeeping`, written into each tensor's priorities,
    ages, counts and last key."""
    global calls
    library = cast(ctypes.CDLL, _library)
    library.critgrad_finish(*_finish_arguments(decided, scale, decay))
    calls += 1


def _finish_arguments(decided: Plan, scale: float, decay: float) -> list[Any]:
    capacity = decided.layout.capacity
    return [
        *_memory_arguments(decided),
        capacity,
        RESYNC_PER_SLOT,
        scale,
        decay,
        torch.get_num_threads(),
    ]


def _memory_arguments(decided: Plan) -> tuple[Any, ...]:
    """The leading arguments of critgrad_finish, critgrad_adam and critgrad_sgd: the memories,
    the gradients, the keys and the decisions."""
    found = decided.layout
    return (
        len(found.numel),
        found.pointers[STORE],
        found.pointers[SCALED_SUM],
        decided.grads,
        found.numel,
        found.offset,
        found.pointers[PRIORITY],
        found.pointers[AGE],
        found.pointers[STATS],
        found.pointers[KEY],
        decided.keys,
        decided.admit,
        decided.slot,
        decided.filled,
    )


def resync(store: Tensor, scaled_sum: Tensor, count: Tensor, scale: float) -> bool:
    """:func:`critgrad.memory.resync_` (the stored rows summed in row order) if the kernels can
    take these tensors; returns whether they did."""
    global calls
    if not (
        enabled()
        and store.dtype is torch.float32
        and scaled_sum.dtype is torch.float32
        and count.dtype is torch.int64
        and count.numel() == 1
        and all(plain_cpu(t) for t in (store, scaled_sum, count))
        and available()
    ):
        return False
    library = cast(ctypes.CDLL, _library)
    library.critgrad_resync(
        store.data_ptr(),
        scaled_sum.data_ptr(),
        scaled_sum.numel(),
        store.shape[0],
        RESYNC_PER_SLOT,
        count.data_ptr(),
        scale,
    )
    calls += 1
    return True


def _base_pointers(
    state: Mapping[Tensor, Mapping[str, Any]], params: Sequence[Tensor], names: tuple[str, ...]
) -> dict[str, ctypes.Array[ctypes.c_void_p]] | None:
    """Data pointers of ``params`` ("param") and of their state entries ``names`` ("step": a
    one-element counter, the others: the parameter's size), all plain float32 CPU tensors; None
    where an entry is missing or of another kind."""
    tensors = []
    for p in params:
        entry = state.get(p)
        if entry is None:
            return None
        tensors.append(p)
        for name in names:
            t = entry.get(name)
            if not isinstance(t, Tensor):
                return None
            tensors.append(t)
    width = len(names) + 1

    def build() -> dict[str, ctypes.Array[ctypes.c_void_p]] | None:
        for i in range(0, len(tensors), width):
            size = tensors[i].numel()
            for name, t in zip(("param", *names), tensors[i : i + width]):
                if t.dtype is not torch.float32 or not plain_cpu(t):
                    return None
                if t.numel() != (1 if name == "step" else size):
                    return None
        return {name: _pointers(tensors[j::width]) for j, name in enumerate(("param", *names))}

    return cast("dict[str, ctypes.Array[ctypes.c_void_p]] | None", _cached("base", tensors, build))


def _own_step(optimizer: torch.optim.Optimizer, kinds: tuple[type, ...]) -> bool:
    """``optimizer`` is exactly one of torch's ``kinds``, with torch's own ``step``."""
    return type(optimizer) in kinds and "step" not in optimizer.__dict__


class BaseTensors(NamedTuple):
    """What torch's Adam or SGD keeps for the n tensors of a group (as data pointers), and its
    hyperparameters for this step."""

    kind: str  # "adam", "sgd" or "adam_cm" (critgrad.Adam_CM: the memory holds momenta)
    pointers: dict[str, ctypes.Array[ctypes.c_void_p]]
    scalars: tuple[float, ...]  # as in Hyperparameters (Adam_CM: Adam's)
    flags: tuple[bool, ...]


class Hyperparameters(NamedTuple):
    """What :func:`fused_step` needs of a group's options for torch's Adam, AdamW or SGD."""

    kind: str  # "adam" or "sgd"
    names: tuple[str, ...]  # the state entries the update reads and writes
    scalars: tuple[float, ...]  # adam: lr, beta1, beta2, eps, weight_decay; sgd: lr,
    # weight_decay, momentum, dampening
    flags: tuple[bool, ...]  # adam: amsgrad, decoupled, maximize; sgd: momentum, nesterov,
    # maximize


def hyperparameters(
    optimizer: torch.optim.Optimizer, group: Mapping[str, Any]
) -> Hyperparameters | None:
    """``group``'s hyperparameters if :func:`fused_step` can take its update: ``optimizer`` is
    torch's Adam, AdamW or SGD with its own ``step``, not capturable or differentiable, with
    Python numbers for its hyperparameters; else None."""
    if group.get("capturable") or group.get("differentiable"):
        return None
    if _own_step(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        betas = group["betas"]
        scalars: tuple[Any, ...] = (
            group["lr"],
            betas[0],
            betas[1],
            group["eps"],
            group["weight_decay"],
        )
        amsgrad = bool(group["amsgrad"])
        names: tuple[str, ...] = ("step", "exp_avg", "exp_avg_sq")
        names += ("max_exp_avg_sq",) if amsgrad else ()
        decoupled = group.get("decoupled_weight_decay", type(optimizer) is torch.optim.AdamW)
        flags = (amsgrad, bool(decoupled), bool(group["maximize"]))
        kind = "adam"
    elif _own_step(optimizer, (torch.optim.SGD,)):
        scalars = (group["lr"], group["weight_decay"], group["momentum"], group["dampening"])
        names = ("momentum_buffer",) if group["momentum"] != 0 else ()
        flags = (group["momentum"] != 0, bool(group["nesterov"]), bool(group["maximize"]))
        kind = "sgd"
    else:
        return None
    if not all(type(x) in (float, int) for x in scalars):
        return None
    return Hyperparameters(kind, names, tuple(float(x) for x in scalars), flags)


def base_tensors(
    optimizer: torch.optim.Optimizer, group: Mapping[str, Any], params: Sequence[Tensor]
) -> BaseTensors | None:
    """The state of ``params`` in ``optimizer`` if :func:`fused_step` can take their step: the
    group's :func:`hyperparameters` allow it, every parameter and its state are plain float32
    CPU tensors, and the state exists (the first step is the optimizer's own)."""
    found = hyperparameters(optimizer, group) if params else None
    if found is None:
        return None
    pointers = _base_pointers(optimizer.state, params, found.names)
    if pointers is None:
        return None
    return BaseTensors(found.kind, pointers, found.scalars, found.flags)


def adam_cm_tensors(
    state: Mapping[Tensor, Mapping[str, Any]], group: Mapping[str, Any], params: Sequence[Tensor]
) -> BaseTensors | None:
    """Adam_CM's state of ``params`` for :func:`fused_step` (plain float32 CPU tensors, numbers
    for the hyperparameters), or None."""
    betas = group["betas"]
    scalars = (group["lr"], betas[0], betas[1], group["eps"], group["weight_decay"])
    if not params or not all(type(x) in (float, int) for x in scalars):
        return None
    amsgrad = bool(group["amsgrad"])
    names = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    pointers = _base_pointers(state, params, names)
    if pointers is None:
        return None
    flags = (amsgrad, True, bool(group["maximize"]))
    return BaseTensors("adam_cm", pointers, tuple(float(x) for x in scalars), flags)


def fused_step(decided: Plan, base: BaseTensors, scale: float, decay: float) -> None:
    """The whole step of a group whose base is torch's Adam, AdamW or SGD, in one pass over the
    tensors: the directions, the base's update on them (as torch's for-loop implementation
    computes it, in float32; Adam's step counters count the step), the slot writes and running
    sums; then the resyncs and the bookkeeping of :func:`finish`. With Adam_CM's state, its step
    (:func:`critgrad.adam_cm.adam_cm`): the memory takes the new momenta, the plan's gradients
    are the raw gradients."""
    global calls
    scalars = (ctypes.c_double * len(base.scalars))(*base.scalars)
    function, arguments = _fused_call(decided, base, scalars, scale, decay)
    function(*arguments)
    calls += 1


def _fused_call(
    decided: Plan,
    base: BaseTensors,
    scalars: ctypes.Array[ctypes.c_double],
    scale: float,
    decay: float,
) -> tuple[Any, list[Any]]:
    """The C function of :func:`fused_step` and its arguments (the thread count last)."""
    library = cast(ctypes.CDLL, _library)
    found = decided.layout
    n = len(found.numel)
    memory = (*_memory_arguments(decided), decided.b, decided.s)
    pointers = base.pointers
    if base.kind in ("adam", "adam_cm"):
        amsgrad, decoupled, maximize = base.flags
        return library.critgrad_adam, [
            *memory,
            pointers["param"],
            pointers["exp_avg"],
            pointers["exp_avg_sq"],
            pointers["max_exp_avg_sq"] if amsgrad else None,
            pointers["step"],
            scalars,
            decoupled,
            maximize,
            base.kind == "adam_cm",
            found.capacity,
            RESYNC_PER_SLOT,
            scale,
            decay,
            (ctypes.c_float * n)(),  # scratch: each tensor's step size and bias correction
            (ctypes.c_float * n)(),
            torch.get_num_threads(),
        ]
    momentum, nesterov, maximize = base.flags
    return library.critgrad_sgd, [
        *memory,
        pointers["param"],
        pointers["momentum_buffer"] if momentum else None,
        scalars,
        nesterov,
        maximize,
        found.capacity,
        RESYNC_PER_SLOT,
        scale,
        decay,
        torch.get_num_threads(),
    ]


class BoundStep:
    """A group's native step with every argument converted to its C type once, for a group whose
    tensors, memory options and kind of update stay the same from step to step: ctypes takes
    longer to convert two dozen arguments than the kernels take to step a small model. With the
    ``base``'s tensors, :meth:`plan` then :meth:`update` (:func:`plan`, :func:`fused_step`);
    without (a base that steps on its own), :meth:`plan`, :meth:`directions`, the base's step,
    :meth:`finish`. What may change from step to step is set at each call: the gradients'
    addresses, the base's numbers (a scheduled learning rate), the number of threads."""

    def __init__(
        self,
        found: Layout,
        base: BaseTensors | None,
        group: Mapping[str, Any],
        scale: float,
    ) -> None:
        library = cast(ctypes.CDLL, _library)
        n = len(found.numel)
        self.fused = base is not None
        self._found = found
        self._grads = (ctypes.c_void_p * n)()
        self._directions = (ctypes.c_void_p * n)()
        decided = _new_plan(found, self._grads, group["aggr"])
        self._calls: dict[str, tuple[Any, list[Any]]] = {
            "plan": (
                library.critgrad_plan,
                _plan_arguments(decided, None, scale, plan_options(group)),
            )
        }
        if base is not None:
            self._scalars = (ctypes.c_double * len(base.scalars))(*base.scalars)
            self._calls["update"] = _fused_call(decided, base, self._scalars, scale, group["decay"])
        else:
            self._calls["directions"] = (
                library.critgrad_directions,
                _directions_arguments(decided, self._directions),
            )
            self._calls["finish"] = (
                library.critgrad_finish,
                _finish_arguments(decided, scale, group["decay"]),
            )
        # the arguments as C values (the raw ones are kept: they hold the arrays pointed to)
        self._converted = {
            name: _converted(function.argtypes, arguments)
            for name, (function, arguments) in self._calls.items()
        }
        self._threads = torch.get_num_threads()
        self._kept = (found, base, decided)

    def _call(self, name: str) -> None:
        global calls
        threads = torch.get_num_threads()
        if threads != self._threads:  # (the thread count is each call's last argument but plan's)
            self._threads = threads
            for key, arguments in self._converted.items():
                arguments[_PLAN_THREADS if key == "plan" else -1] = ctypes.c_int(threads)
        self._calls[name][0](*self._converted[name])
        calls += 1

    def plan(self, grads: Sequence[Tensor]) -> None:
        self._grads[:] = [g.data_ptr() for g in grads]
        self._call("plan")

    def update(self, scalars: tuple[float, ...]) -> None:
        self._scalars[:] = list(scalars)
        self._call("update")

    def directions(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """As :func:`directions`, in a new buffer (the base may keep its gradients)."""
        out = _direction_buffers(self._found, grads)
        self._directions[:] = [d.data_ptr() for d in out]
        self._call("directions")
        return out

    def finish(self) -> None:
        self._call("finish")


def _converted(types: Sequence[Any], arguments: Sequence[Any]) -> list[Any]:
    """``arguments`` as instances of ``types`` (arrays as their addresses), which ctypes passes on
    without converting them again."""
    return [
        None
        if argument is None
        else kind(ctypes.addressof(argument))
        if isinstance(argument, ctypes.Array)
        else kind(argument)
        for argument, kind in zip(arguments, types)
    ]
