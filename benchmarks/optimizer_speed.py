#!/usr/bin/env python
"""Speed and memory of critgrad's optimizers against their torch twins, in one process.

Sections (all run by default; pick some with ``--only``):

``step``
    ``optimizer.step()`` alone on a float32 MLP of ``--params`` parameters (default 4.2M) with
    gradients set once by hand. For SGD, SGD with momentum 0.9, Adam, AdamW and RMSprop, and for
    each torch implementation (for-loop ``foreach=False``, ``foreach=True``, ``fused=True`` where
    torch offers it), the torch optimizer and critgrad's at each ``--topc`` are timed, alternating
    between them within every repeat. By default the gradients are multiplied by a different
    scalar before every step (outside the timed region), so each step offers a new gradient to
    the memory, as in training; ``--grads constant`` keeps them fixed.
``train``
    A full training step (forward, backward, step, zero_grad) of two MNIST-sized MLPs
    (784-32-10 as in the paper, and 784-256-256-10) on random batches of 64: Adam against
    critgrad.Adam at topC 10, for each implementation.
``memory``
    Bytes held by the memory (every tensor in ``opt.memory``) against topC x parameters x bytes of
    the store dtype + one running sum, for float32 and bfloat16 stores, and the transient bytes a
    step allocates, read from the allocation trace of torch's profiler.
``profile``
    Where the time of one critgrad.Adam step (topC 10, fused base) goes: torch operators by self
    time (torch.profiler) and critgrad's Python phases (cProfile).

Timings are medians over repeats (also IQR and min); ratios are taken within each repeat against
the torch optimizer measured in the same repeat, then their median is reported. Absolute times on
a shared machine drift between runs; ratios measured in one run hold much better.

Run ``python benchmarks/optimizer_speed.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import functools
import gc
import inspect
import json
import math
import os
import pstats
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import critgrad
from critgrad.bench.runner import machine_info as harness_machine_info

SECTIONS = ("step", "train", "memory", "profile")
DEFAULT_OUT = os.path.join("benchmarks", "results", "optimizer_speed.json")
RESULT_FORMAT = 1


def _pair(name: str, **kwargs: Any) -> tuple[type, type, dict[str, Any]]:
    """The registry's vanilla class of ``name`` and its _c twin, with shared keyword arguments."""
    twin = name + critgrad.registry.MEMORY_SUFFIX
    return critgrad.optimizer_class(name), critgrad.optimizer_class(twin), kwargs


# name -> (torch class, critgrad class, keyword arguments shared by both)
OPTIMIZERS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "sgd": _pair("sgd", lr=1e-3),
    "sgd_momentum": _pair("sgd", lr=1e-3, momentum=0.9),
    "adam": _pair("adam", lr=1e-3),
    "adamw": _pair("adamw", lr=1e-3),
    "rmsprop": _pair("rmsprop", lr=1e-3),
    # Adam with critical momenta, against Adam: its twin has no `fused` (the row says so), and
    # its "vs fastest torch" is still against torch's fastest Adam.
    "adam_cm": (
        critgrad.optimizer_class("adam"),
        critgrad.optimizer_class("adam_cm"),
        {"lr": 1e-3},
    ),
}

# implementation name -> keyword arguments of the torch optimizer (critgrad passes them through)
IMPLS: dict[str, dict[str, bool]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}

TRAIN_MODELS: dict[str, tuple[int, ...]] = {
    "small 784-32-10": (784, 32, 10),
    "medium 784-256-256-10": (784, 256, 256, 10),
}

# Per-step gradient multipliers for --grads perturbed: a fixed cycle whose product is 1, so the
# gradients' scale wanders in roughly [0.7, 1.4] without drifting.
_SCALE_CYCLE = 64


# ------------------------------------------------------------------------------ small helpers


def machine_info() -> dict[str, Any]:
    # The harness's description of the machine, plus what matters to timings here.
    return {
        **harness_machine_info(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "critgrad": getattr(critgrad, "__version__", "unknown"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, IQR and min of per-step times (seconds in, milliseconds out)."""
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": percentile(ms, 50),
        "iqr_ms": percentile(ms, 75) - percentile(ms, 25),
        "min_ms": min(ms),
        "repeats_ms": ms,
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median (and IQR) of the per-repeat ratios of two contenders timed in the same repeats."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not ratios:
        return {"ratio": math.nan, "ratio_iqr": math.nan}
    return {
        "ratio": percentile(ratios, 50),
        "ratio_iqr": percentile(ratios, 75) - percentile(ratios, 25),
    }


def supports(torch_class: type, impl: str) -> bool:
    """Whether the torch optimizer class takes the implementation's keyword at all."""
    parameters = inspect.signature(torch_class).parameters
    return all(name in parameters for name in IMPLS[impl])


def critgrad_variants(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The critgrad configurations to time: eager always; compiled with --compile."""
    variants: list[tuple[str, dict[str, Any]]] = [("eager", {})]
    if args.compile:
        variants.append(("compiled", {"compile": True}))
    return variants


def _why(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def tensor_bytes(tensors: Any) -> int:
    """Bytes of every tensor found in a (nested) dict/list of tensors."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(tensor_bytes(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(tensor_bytes(v) for v in tensors)
    return 0


def mlp_shapes(target: int) -> list[tuple[int, ...]]:
    """Shapes of an MLP 2w-w-w-w (weights and biases) with about ``target`` parameters.

    4 w^2 + 3 w parameters: w = 1024 gives 4,197,376 (the default 4.2M).
    """
    width = max(4, round((-3 + math.sqrt(9 + 16 * target)) / 8))
    sizes = [2 * width, width, width, width]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        shapes += [(fan_out, fan_in), (fan_out,)]
    return shapes


def build_mlp(sizes: Sequence[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def scale_ratios(seed: int) -> list[float]:
    """Multipliers g_t = g_{t-1} * r_t whose product over the cycle is exactly 1 in theory."""
    rng = random.Random(seed)
    scales = [math.exp(rng.gauss(0.0, 0.2)) for _ in range(_SCALE_CYCLE)]
    return [scales[(t + 1) % _SCALE_CYCLE] / scales[t] for t in range(_SCALE_CYCLE)]


def admission_counts(opt: Any) -> tuple[int, int] | None:
    """(offered, admitted) summed over groups, or None for a torch optimizer."""
    stats = getattr(opt, "memory_stats", None)
    if stats is None:
        return None
    try:
        rows = stats()
        return (
            sum(int(r.get("offered", 0)) for r in rows),
            sum(int(r.get("admitted", 0)) for r in rows),
        )
    except Exception:  # statistics are informative only
        return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that timings are of work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_syncs(step: Callable[[], Any], device: torch.device) -> int | None:
    """How many times one call of ``step()`` makes the host wait for the GPU, as counted by
    ``torch.cuda.set_sync_debug_mode`` (None on the CPU, where there is nothing to wait for)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".optimizer_speed.", suffix=".json.tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates it private; give it a normal file's mode
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=1, allow_nan=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def print_table(
    title: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    stream=sys.stdout,
) -> None:
    """A plain fixed-width table; ``columns`` are (key, header)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [
        max([len(header)] + [len(c[i]) for c in cells]) for i, (_, header) in enumerate(columns)
    ]
    print(f"\n{title}", file=stream)
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths)), file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)), file=stream)
    stream.flush()


# ------------------------------------------------------------------------------ timing core


class Contender:
    """One optimizer on its own copy of the parameters, with gradients set by hand."""

    def __init__(
        self,
        label: dict[str, Any],
        make: Callable[[list[torch.Tensor]], Any],
        init: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        ratios: Sequence[float] | None,
    ) -> None:
        self.label = label
        self.params = [t.clone().requires_grad_(True) for t in init]
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        self.device = self.params[0].device
        self.opt = make(self.params)
        self.ratios = ratios
        self.tick = 0
        self.seconds: list[float] = []  # mean seconds per step, one entry per repeat
        self.before: tuple[int, int] | None = None  # (offered, admitted) before timing

    def perturb(self) -> None:
        if self.ratios is not None:
            torch._foreach_mul_(
                [p.grad for p in self.params], self.ratios[self.tick % len(self.ratios)]
            )
            self.tick += 1

    def run(self, steps: int) -> float:
        """Mean seconds of ``optimizer.step()`` over ``steps`` steps (perturbation not timed)."""
        total = 0.0
        for _ in range(steps):
            self.perturb()
            synchronize(self.device)
            started = time.perf_counter()
            self.opt.step()
            synchronize(self.device)
            total += time.perf_counter() - started
        return total / steps


def alternate(contenders: Sequence[Any], repeats: int, steps: int, seed: int) -> None:
    """Time every contender once per repeat, in a fresh random order each repeat.

    Python's cyclic garbage collector is off while timing (tensors are freed by reference
    counting as usual); one collection runs before.
    """
    rng = random.Random(seed)
    order = list(contenders)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            rng.shuffle(order)
            for contender in order:
                contender.seconds.append(contender.run(steps))
    finally:
        if gc_was_enabled:
            gc.enable()


# ------------------------------------------------------------------------------ section: step


def bench_step(args: argparse.Namespace, optimizers: Sequence[str], log) -> dict[str, Any]:
    shapes = mlp_shapes(args.params)
    generator = torch.Generator().manual_seed(args.seed)
    init = [(torch.randn(s, generator=generator) * 0.02).to(args.device) for s in shapes]
    grads = [(torch.randn(s, generator=generator) * 1e-3).to(args.device) for s in shapes]
    n_params = sum(t.numel() for t in init)
    ratios = scale_ratios(args.seed) if args.grads == "perturbed" else None
    warmup = max(args.topc) + 3
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for name in optimizers:
        torch_class, critgrad_class, kwargs = OPTIMIZERS[name]
        contenders: list[Contender] = []
        for impl in args.impls:
            if not supports(torch_class, impl):
                skipped.append(
                    {
                        "optimizer": name,
                        "impl": impl,
                        "why": f"torch.optim.{torch_class.__name__} has no "
                        f"{'/'.join(IMPLS[impl])} argument",
                    }
                )
                continue
            options = {**kwargs, **IMPLS[impl]}
            try:
                twin = Contender(
                    {"optimizer": name, "impl": impl, "topC": None, "variant": None},
                    lambda ps, c=torch_class, o=options: c(ps, **o),
                    init,
                    grads,
                    ratios,
                )
                twin.opt.step()
            except Exception as error:  # e.g. an implementation this device lacks
                skipped.append({"optimizer": name, "impl": impl, "why": _why(error)})
                continue
            # The torch twin is timed even where critgrad refuses the implementation: it may be
            # the fastest torch, which every "vs fastest" ratio of this optimizer divides by.
            contenders.append(twin)
            for variant, extra in critgrad_variants(args):
                try:
                    impl_contenders = [
                        Contender(
                            {"optimizer": name, "impl": impl, "topC": topC, "variant": variant},
                            lambda ps, c=critgrad_class, o={**options, **extra}, k=topC: c(
                                ps, topC=k, **o
                            ),
                            init,
                            grads,
                            ratios,
                        )
                        for topC in args.topc
                    ]
                    for contender in impl_contenders:  # also catches step-time refusals
                        contender.opt.step()
                except Exception as error:
                    skipped.append(
                        {"optimizer": name, "impl": impl, "variant": variant, "why": _why(error)}
                    )
                    continue
                contenders += impl_contenders
        if not contenders:
            continue
        log(
            f"step: {name}: {len(contenders)} contenders, {warmup} warm-up steps each, "
            f"{args.repeats} repeats x {args.steps} steps"
        )
        syncs = {}
        for contender in contenders:
            contender.run(warmup - 2)
            syncs[id(contender)] = host_syncs(contender.opt.step, contender.device)
            contender.before = admission_counts(contender.opt)
        alternate(contenders, args.repeats, args.steps, args.seed)
        torch_of = {c.label["impl"]: c for c in contenders if c.label["topC"] is None}
        fastest = min(torch_of.values(), key=lambda c: percentile(c.seconds, 50))
        for impl, twin in torch_of.items():
            twin_summary = summary_ms(twin.seconds)
            for contender in contenders:
                if contender.label["impl"] != impl or contender.label["topC"] is None:
                    continue
                mine = summary_ms(contender.seconds)
                row = {
                    "optimizer": name,
                    "impl": impl,
                    "topC": contender.label["topC"],
                    "variant": contender.label["variant"],
                    "torch_ms": twin_summary["median_ms"],
                    "torch_iqr_ms": twin_summary["iqr_ms"],
                    "torch_min_ms": twin_summary["min_ms"],
                    "critgrad_ms": mine["median_ms"],
                    "critgrad_iqr_ms": mine["iqr_ms"],
                    "critgrad_min_ms": mine["min_ms"],
                    "torch_repeats_ms": twin_summary["repeats_ms"],
                    "critgrad_repeats_ms": mine["repeats_ms"],
                    "ratio_of_medians": mine["median_ms"] / twin_summary["median_ms"],
                    "torch_host_syncs": syncs[id(twin)],
                    "critgrad_host_syncs": syncs[id(contender)],
                    "fastest_torch_impl": fastest.label["impl"],
                    "fastest_torch_ms": percentile(fastest.seconds, 50) * 1e3,
                }
                row.update(paired_ratio(contender.seconds, twin.seconds))
                vs_fastest = paired_ratio(contender.seconds, fastest.seconds)
                row["ratio_vs_fastest"] = vs_fastest["ratio"]
                row["ratio_vs_fastest_iqr"] = vs_fastest["ratio_iqr"]
                after = admission_counts(contender.opt)
                if (
                    contender.before is not None
                    and after is not None
                    and after[0] > contender.before[0]
                ):
                    row["admission_rate"] = (after[1] - contender.before[1]) / (
                        after[0] - contender.before[0]
                    )
                rows.append(row)
        del contenders, torch_of, fastest
        gc.collect()
    return {
        "params": n_params,
        "shapes": [list(s) for s in shapes],
        "dtype": "float32",
        "device": str(args.device),
        "grads": args.grads,
        "warmup_steps": warmup,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "topC": list(args.topc),
        "rows": rows,
        "skipped": skipped,
    }


# ------------------------------------------------------------------------------ section: train


class TrainContender:
    """A full training step of one model copy with one optimizer."""

    def __init__(self, label: dict[str, Any], model: nn.Module, make: Callable, batches) -> None:
        self.label = label
        self.model = model
        self.opt = make(model.parameters())
        self.batches = batches
        self.tick = 0
        self.seconds: list[float] = []

    def run(self, steps: int) -> float:
        total = 0.0
        for _ in range(steps):
            x, y = self.batches[self.tick % len(self.batches)]
            self.tick += 1
            synchronize(x.device)
            started = time.perf_counter()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            synchronize(x.device)
            total += time.perf_counter() - started
        return total / steps


def bench_train(args: argparse.Namespace, log) -> dict[str, Any]:
    topC = 10
    generator = torch.Generator().manual_seed(args.seed)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    models_info = {}
    for model_name, sizes in TRAIN_MODELS.items():
        batches = [
            (
                torch.randn(args.batch, sizes[0], generator=generator).to(args.device),
                torch.randint(0, sizes[-1], (args.batch,), generator=generator).to(args.device),
            )
            for _ in range(8)
        ]
        torch.manual_seed(args.seed)
        reference = build_mlp(sizes)
        models_info[model_name] = sum(p.numel() for p in reference.parameters())
        contenders: list[TrainContender] = []
        for impl in args.impls:
            impl_kwargs = IMPLS[impl]
            if not supports(torch.optim.Adam, impl):
                skipped.append({"model": model_name, "impl": impl, "why": "not supported"})
                continue
            options = {"lr": 1e-3, **impl_kwargs}
            kinds = [("torch", None)] + [
                (variant, extra) for variant, extra in critgrad_variants(args)
            ]
            for kind, extra in kinds:
                model = build_mlp(sizes).to(args.device)
                model.load_state_dict(reference.state_dict())
                if extra is None:
                    make = functools.partial(torch.optim.Adam, **options)
                else:
                    make = functools.partial(critgrad.Adam, topC=topC, **options, **extra)

                try:
                    contender = TrainContender(
                        {"model": model_name, "impl": impl, "kind": kind}, model, make, batches
                    )
                    contender.run(topC + 3)  # warm-up: the memory is full afterwards
                except Exception as error:
                    skipped.append(
                        {
                            "model": model_name,
                            "impl": impl,
                            "variant": kind,
                            "why": f"{type(error).__name__}: {error}",
                        }
                    )
                    if kind == "torch":
                        break
                    continue
                contenders.append(contender)
        log(
            f"train: {model_name}: {len(contenders)} contenders, {args.repeats} repeats x "
            f"{args.train_steps} steps"
        )
        alternate(contenders, args.repeats, args.train_steps, args.seed + 1)
        for impl in args.impls:
            pair = {c.label["kind"]: c for c in contenders if c.label["impl"] == impl}
            for variant in pair:
                if variant == "torch":
                    continue
                rows.append(
                    train_row(
                        model_name,
                        models_info[model_name],
                        impl,
                        variant,
                        topC,
                        args.batch,
                        pair["torch"],
                        pair[variant],
                    )
                )
        del contenders
        gc.collect()
    return {
        "optimizer": "adam",
        "topC": topC,
        "batch": args.batch,
        "models": models_info,
        "repeats": args.repeats,
        "steps_per_repeat": args.train_steps,
        "rows": rows,
        "skipped": skipped,
    }


def train_row(
    model_name: str,
    params: int,
    impl: str,
    variant: str,
    topC: int,
    batch: int,
    torch_contender: TrainContender,
    contender: TrainContender,
) -> dict[str, Any]:
    twin, mine = summary_ms(torch_contender.seconds), summary_ms(contender.seconds)
    row = {
        "model": model_name,
        "params": params,
        "impl": impl,
        "variant": variant,
        "topC": topC,
        "batch": batch,
        "torch_ms": twin["median_ms"],
        "torch_iqr_ms": twin["iqr_ms"],
        "torch_min_ms": twin["min_ms"],
        "critgrad_ms": mine["median_ms"],
        "critgrad_iqr_ms": mine["iqr_ms"],
        "critgrad_min_ms": mine["min_ms"],
        "ratio_of_medians": mine["median_ms"] / twin["median_ms"],
    }
    row.update(paired_ratio(contender.seconds, torch_contender.seconds))
    return row


# ------------------------------------------------------------------------------ section: memory


def transient_peak_bytes(step: Callable[[], Any]) -> int | None:
    """Peak bytes allocated by torch's CPU allocator during ``step()`` above the level at its start.

    Read from the allocation/free trace that ``torch.profiler`` records with ``profile_memory=True``
    (every allocation and free with its time). Returns None if this torch does not expose it.
    Frees of blocks allocated before the trace began are ignored: the peak is of what the step
    itself allocated, which is what a step adds on top of the state it finds.
    """
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        level = peak = 0
        for event in events:
            level += event.nbytes()
            peak = max(peak, level)
        return peak
    except Exception:
        return None


def bench_memory(args: argparse.Namespace, log) -> dict[str, Any]:
    impl = "fused" if supports(torch.optim.Adam, "fused") else "foreach"
    shapes = mlp_shapes(args.params)
    generator = torch.Generator().manual_seed(args.seed)
    init = [torch.randn(s, generator=generator) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=generator) * 1e-3 for s in shapes]
    n_params = sum(t.numel() for t in init)
    ratios = scale_ratios(args.seed)
    options = {"lr": 1e-3, **IMPLS[impl]}
    twin = Contender({}, lambda ps: torch.optim.Adam(ps, **options), init, grads, ratios)
    twin.run(3)
    twin.perturb()
    torch_transient = transient_peak_bytes(twin.opt.step)
    base_state_bytes = tensor_bytes(list(twin.opt.state.values()))
    del twin
    rows = []
    for store_dtype in (torch.float32, torch.bfloat16):
        for topC in args.topc:
            log(f"memory: store {store_dtype}, topC {topC}")
            mine = Contender(
                {},
                lambda ps, k=topC, d=store_dtype: critgrad.Adam(
                    ps, topC=k, store_dtype=d, **options
                ),
                init,
                grads,
                ratios,
            )
            mine.run(topC + 3)
            mine.perturb()
            transient = transient_peak_bytes(mine.opt.step)
            memory = getattr(mine.opt, "memory", {})
            memory_bytes = tensor_bytes(list(memory.values()))
            store_bytes = sum(tensor_bytes(m.get("critical_store")) for m in memory.values())
            sum_bytes = sum(tensor_bytes(m.get("critical_sum")) for m in memory.values())
            element = torch.empty((), dtype=store_dtype).element_size()
            # The running sum is kept in the parameters' float32 (also for a bfloat16 store).
            expected = topC * n_params * element + n_params * 4
            extra_transient = (
                None
                if transient is None or torch_transient is None
                else transient - torch_transient
            )
            row = {
                "store_dtype": str(store_dtype).replace("torch.", ""),
                "topC": topC,
                "impl": impl,
                "params": n_params,
                "memory_bytes": memory_bytes,
                "store_bytes": store_bytes,
                "sum_bytes": sum_bytes,
                "bookkeeping_bytes": memory_bytes - store_bytes - sum_bytes,
                "expected_bytes": expected,
                "ratio": memory_bytes / expected,
                "base_state_bytes": base_state_bytes,
                "step_transient_bytes": transient,
                "torch_step_transient_bytes": torch_transient,
                "extra_transient_bytes": extra_transient,
                "expected_transient_bytes": n_params * 4,
                "memory_mb": memory_bytes / 2**20,
                "expected_mb": expected / 2**20,
                "extra_transient_mb": None if extra_transient is None else extra_transient / 2**20,
            }
            if extra_transient is not None:
                row["peak_extra_bytes"] = memory_bytes + extra_transient
                row["peak_ratio"] = row["peak_extra_bytes"] / expected
            rows.append(row)
            del mine, memory
            gc.collect()
    return {
        "optimizer": "adam",
        "impl": impl,
        "params": n_params,
        "rows": rows,
        "method": "memory_bytes: numel x element size of every tensor in opt.memory after "
        "the memory is full. step_transient_bytes: peak of (allocated - freed) "
        "bytes during one step() in torch's CPU allocator trace (torch.profiler, "
        "profile_memory=True); extra_transient_bytes is that minus the torch "
        "optimizer's own.",
    }


# ------------------------------------------------------------------------------ section: profile


def bench_profile(args: argparse.Namespace, log) -> dict[str, Any]:
    topC = 10
    impl = "fused" if supports(torch.optim.Adam, "fused") else "foreach"
    shapes = mlp_shapes(args.params)
    generator = torch.Generator().manual_seed(args.seed)
    init = [torch.randn(s, generator=generator) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=generator) * 1e-3 for s in shapes]
    ratios = scale_ratios(args.seed)
    options = {"lr": 1e-3, **IMPLS[impl]}
    mine = Contender({}, lambda ps: critgrad.Adam(ps, topC=topC, **options), init, grads, ratios)
    twin = Contender({}, lambda ps: torch.optim.Adam(ps, **options), init, grads, ratios)
    mine.run(topC + 3)
    twin.run(3)
    steps = args.profile_steps
    log(f"profile: critgrad.Adam topC {topC} ({impl} base), {steps} steps")
    plain = {"critgrad_step_ms": mine.run(steps) * 1e3, "torch_step_ms": twin.run(steps) * 1e3}
    # The profilers below see only step(): the gradients stay as they are (with decay 0.7 the
    # memory still admits, and evicts, at every step).
    mine.ratios = None
    before = admission_counts(mine.opt)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        mine.run(steps)
    averages = prof.key_averages()
    ops = []
    total_self = sum(a.self_cpu_time_total for a in averages) or 1.0
    for a in sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[: args.top]:
        ops.append(
            {
                "name": a.key,
                "calls_per_step": a.count / steps,
                "self_ms_per_step": a.self_cpu_time_total / 1e3 / steps,
                "share": a.self_cpu_time_total / total_self,
            }
        )

    profiler = cProfile.Profile()
    profiler.enable()
    mine.run(steps)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    package = os.path.dirname(os.path.abspath(critgrad.__file__))
    base_step = inspect.unwrap(type(mine.opt.base).step) if hasattr(mine.opt, "base") else None
    base_key = None
    if base_step is not None and hasattr(base_step, "__code__"):
        code = base_step.__code__
        base_key = (code.co_filename, code.co_firstlineno, code.co_name)
    root = next(
        (
            v[3]
            for k, v in stats.items()
            if k[2] == "step" and os.path.abspath(k[0]).startswith(package) and "wrapper" in k[0]
        ),
        None,
    )
    phases = []
    for key, (_, calls, own, cumulative, _) in stats.items():
        inside = os.path.abspath(key[0]).startswith(package) if key[0] != "~" else False
        if inside or key == base_key:
            label = (
                f"torch.optim.{type(mine.opt.base).__name__}.step (base update)"
                if key == base_key
                else f"critgrad/{os.path.relpath(key[0], package)}:{key[2]}"
            )
            phases.append(
                {
                    "name": label,
                    "calls_per_step": calls / steps,
                    "cumulative_ms_per_step": cumulative * 1e3 / steps,
                    "own_ms_per_step": own * 1e3 / steps,
                    "share_of_step": cumulative / root if root else None,
                }
            )
    phases.sort(key=lambda r: r["cumulative_ms_per_step"], reverse=True)
    builtins = []
    for key, (_, calls, own, _, _) in sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[
        : args.top
    ]:
        builtins.append(
            {
                "name": key[2] if key[0] == "~" else f"{os.path.basename(key[0])}:{key[2]}",
                "calls_per_step": calls / steps,
                "own_ms_per_step": own * 1e3 / steps,
            }
        )
    after = admission_counts(mine.opt)
    if before is not None and after is not None and after[0] > before[0]:
        plain["admission_rate_while_profiled"] = (after[1] - before[1]) / (after[0] - before[0])
    return {
        "optimizer": "adam",
        "impl": impl,
        "topC": topC,
        "params": sum(t.numel() for t in init),
        "steps": steps,
        **plain,
        "torch_ops": ops,
        "critgrad_phases": phases,
        "cprofile_own_time": builtins,
    }


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time critgrad optimizers against their torch twins (step alone, training "
        "step), measure their memory, and profile one step."
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per contender (default 10; --quick 3)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per repeat in the step section (default 5)",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="training steps per repeat in the train section (default 20)",
    )
    parser.add_argument(
        "--params",
        type=int,
        default=None,
        help="parameters of the step/memory/profile MLP (default 4.2M)",
    )
    parser.add_argument(
        "--topc",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="comma-separated topC values (default 5,10,20)",
    )
    parser.add_argument(
        "--grads",
        choices=("perturbed", "constant"),
        default="perturbed",
        help="perturbed (default): gradients scaled by a new factor before "
        "each step, outside the timing; constant: set once",
    )
    parser.add_argument("--batch", type=int, default=64, help="train section batch size")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="steps profiled in the profile section (default 10)",
    )
    parser.add_argument("--top", type=int, default=12, help="rows of the profile tables")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated sections (" + ",".join(SECTIONS) + ") and/or "
        "optimizers (" + ",".join(OPTIMIZERS) + ") to run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats (well under a minute): a smoke test",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time critgrad with compile=True (the whole memory-plus-base step "
        "torch.compile-d) in the step and train sections; the first steps compile",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the run (default: torch's own choice, "
        "left as it is); restored when main() returns",
    )
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="comma-separated torch implementations to time (default: " + ",".join(IMPLS) + ")",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda: runs the step and train sections on the GPU, and counts the "
        "host synchronisations of one step (torch.cuda.set_sync_debug_mode)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "repeats": 3 if quick else 10,
        "steps": 2 if quick else 5,
        "train_steps": 3 if quick else 20,
        "params": 20_000 if quick else 4_200_000,
        "topc": [2, 4] if quick else [5, 10, 20],
        "profile_steps": 2 if quick else 10,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("repeats", "steps", "train_steps", "params", "profile_steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if not args.topc or min(args.topc) < 1:
        parser.error("--topc values must be >= 1")
    sections, optimizers = [], []
    for token in args.only.split(",") if args.only else []:
        token = token.strip().lower()
        if token in SECTIONS:
            sections.append(token)
        elif token in OPTIMIZERS:
            optimizers.append(token)
        elif token:
            parser.error(
                f"--only: unknown {token!r} (sections: {', '.join(SECTIONS)}; "
                f"optimizers: {', '.join(OPTIMIZERS)})"
            )
    args.sections = sections or list(SECTIONS)
    args.optimizers = optimizers or list(OPTIMIZERS)
    args.impls = [impl.strip() for impl in args.impls.split(",") if impl.strip()]
    if not args.impls or any(impl not in IMPLS for impl in args.impls):
        parser.error(f"--impls: choose from {', '.join(IMPLS)}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: unknown device {args.device!r}")
    if args.device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine")
        # The memory section reads the CPU allocator's trace, the profile section the CPU's.
        args.sections = [section for section in args.sections if section in ("step", "train")]
    elif args.device.type != "cpu":
        parser.error("--device: cpu or cuda")
    return args


STEP_COLUMNS = [
    ("optimizer", "optimizer"),
    ("impl", "impl"),
    ("variant", "critgrad"),
    ("topC", "topC"),
    ("torch_ms", "torch ms"),
    ("torch_iqr_ms", "iqr"),
    ("critgrad_ms", "critgrad ms"),
    ("critgrad_iqr_ms", "iqr"),
    ("ratio", "ratio"),
    ("ratio_vs_fastest", "vs fastest torch"),
    ("fastest_torch_impl", "(fastest)"),
    ("admission_rate", "admitted"),
    ("critgrad_host_syncs", "syncs/step"),
]
TRAIN_COLUMNS = [
    ("model", "model"),
    ("params", "params"),
    ("impl", "impl"),
    ("variant", "critgrad"),
    ("torch_ms", "Adam ms"),
    ("torch_iqr_ms", "iqr"),
    ("critgrad_ms", "Adam_C ms"),
    ("critgrad_iqr_ms", "iqr"),
    ("ratio", "ratio"),
]
MEMORY_COLUMNS = [
    ("store_dtype", "store"),
    ("topC", "topC"),
    ("memory_mb", "memory MiB"),
    ("expected_mb", "expected MiB"),
    ("ratio", "ratio"),
    ("extra_transient_mb", "step transient MiB"),
    ("peak_ratio", "peak ratio"),
]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    info = machine_info()
    print(
        f"torch {info['torch']}, critgrad {info['critgrad']}, {info['torch_threads']} threads, "
        f"CPU: {info['cpu']} ({info['cpu_count']} logical cores)"
        + (f", load average {info['load_average'][0]:.1f}" if info["load_average"] else "")
    )
    load, cores = (info["load_average"] or [0.0])[0], info["cpu_count"] or 1
    if load > cores and info["torch_threads"] > 1:
        print(
            f"warning: load average {load:.1f} on {cores} cores: other processes compete for "
            f"the CPU, and torch's {info['torch_threads']} threads then wait on each other at "
            "every parallel operation; timings can be inflated many times. Consider "
            "--threads 1, or a quieter machine."
        )
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "args": {k: str(v) if isinstance(v, torch.device) else v for k, v in vars(args).items()},
    }
    if "step" in args.sections:
        result["step"] = bench_step(args, args.optimizers, log)
        step = result["step"]
        columns = STEP_COLUMNS if args.compile else [c for c in STEP_COLUMNS if c[0] != "variant"]
        print_table(
            f"optimizer.step() alone: {step['params']:,} float32 parameters, grads "
            f"{step['grads']}; median ms per step over {step['repeats']} repeats x "
            f"{step['steps_per_repeat']} steps; ratio = critgrad / torch (same impl), "
            "median of per-repeat ratios",
            columns,
            step["rows"],
        )
        for skip in step["skipped"]:
            what = " ".join(str(skip[k]) for k in ("optimizer", "impl", "variant") if skip.get(k))
            print(f"  skipped {what}: {skip['why']}")
    if "train" in args.sections:
        result["train"] = bench_train(args, log)
        print_table(
            f"training step (forward, backward, step, zero_grad), batch {args.batch}, "
            "Adam vs critgrad.Adam topC 10; median ms",
            TRAIN_COLUMNS if args.compile else [c for c in TRAIN_COLUMNS if c[0] != "variant"],
            result["train"]["rows"],
        )
        for skip in result["train"]["skipped"]:
            what = " ".join(str(skip[k]) for k in ("model", "impl", "variant") if skip.get(k))
            print(f"  skipped {what}: {skip['why']}")
    if "memory" in args.sections:
        result["memory"] = bench_memory(args, log)
        memory = result["memory"]
        print_table(
            f"memory of critgrad.Adam ({memory['impl']} base), {memory['params']:,} "
            "parameters; expected = topC x params x bytes(store) + params x 4 (sum)",
            MEMORY_COLUMNS,
            memory["rows"],
        )
    if "profile" in args.sections:
        result["profile"] = bench_profile(args, log)
        prof = result["profile"]
        print(
            f"\nprofile: critgrad.Adam topC {prof['topC']} ({prof['impl']} base), "
            f"{prof['params']:,} parameters: {prof['critgrad_step_ms']:.2f} ms per step "
            f"unprofiled, torch Adam {prof['torch_step_ms']:.2f} ms; gradients held constant "
            f"while profiled (admission rate "
            f"{prof.get('admission_rate_while_profiled', math.nan):.2f})"
        )
        print_table(
            "torch operators by self time (torch.profiler), per step",
            [
                ("name", "operator"),
                ("calls_per_step", "calls"),
                ("self_ms_per_step", "self ms"),
                ("share", "share"),
            ],
            prof["torch_ops"],
        )
        print_table(
            "critgrad phases (cProfile, cumulative), per step",
            [
                ("name", "function"),
                ("calls_per_step", "calls"),
                ("cumulative_ms_per_step", "cum ms"),
                ("own_ms_per_step", "own ms"),
                ("share_of_step", "share"),
            ],
            prof["critgrad_phases"][: args.top],
        )
    result["wall_seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
