"""Protocols: which configurations each optimizer gets, on which seeds, and how one is selected.

``fair`` (the default)
    Every optimizer gets the same number of configurations. The vanilla optimizer tunes the
    learning rate over ``lrs``; its ``_c`` twin (and any memory optimizer of its own compared
    with it, ``adam_cm``) gets exactly as many configurations, either the
    same learning rates with the reference's recommended memory (topC 10, decay 0.7, kappa 1;
    ``memory_search="fixed"``, the default) or as many (lr, topC, decay) triples drawn without
    replacement, with a fixed seed, from the paper's grid (``memory_search="sampled"``).
    Every configuration runs on the tuning seeds (default: the first seed); the configuration
    with the best mean final *validation* metric is selected and run on all seeds; the table
    reports its final *test* metric, mean and std over those seeds (>= 5 asked for).

``paper``
    The authors' grid: lr in {1e-1 ... 1e-5} for every optimizer, and for the ``_c`` twins also
    decay in {0.7, 0.9, 0.99} x topC in {5, 10, 20} (kappa 1): 9 times more configurations for
    the twins. Seeds 100-104 for every configuration. Selection and the reported number use the
    best *test* metric over epochs, as the authors' scripts did. Both flaws are stated in the
    report.

``fixed``
    One given configuration per optimizer, no tuning (the main job). Reported as such.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from critgrad.bench import optimizer_labels, values
from critgrad.bench.record_format import RunSpec

# ---- Defaults, in one place --------------------------------------------------------------------
PAPER_LRS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
PAPER_DECAYS = (0.7, 0.9, 0.99)
PAPER_TOPCS = (5, 10, 20)
PAPER_KAPPA = 1.0
PAPER_SEEDS = (100, 101, 102, 103, 104)
FAIR_SEEDS = (0, 1, 2, 3, 4)  # the fair protocol's minimum of five seeds
# The reference package's README: topC in {5, 10, 20}, decay in {0.7, 0.9}; its defaults 10 / 0.7.
RECOMMENDED_MEMORY = {"topC": 10, "decay": 0.7, "kappa": 1.0}
PROTOCOLS = ("fair", "paper", "fixed")
# How the fair protocol's twins get their memory settings: "fixed" at the recommended memory, or
# "sampled" from the paper's grid (the sweep file's `memory_search`).
MEMORY_SEARCHES = ("fixed", "sampled")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What to run and how to pick: see the module docstring."""

    name: str
    configs: Mapping[str, Sequence[Mapping[str, Any]]]  # optimizer label -> configurations
    seeds: tuple[int, ...]  # the seeds of the reported numbers
    tune_seeds: tuple[int, ...]  # the seeds the selection looks at
    selection_split: str  # "valid" or "test"
    selection_reduce: str  # "final" or "best"
    notes: str  # the protocol in words, printed beside every table

    def budget(self) -> dict[str, int]:
        """Configurations per optimizer label."""
        return {label: len(configs) for label, configs in self.configs.items()}

    def reported(self) -> tuple[str, str]:
        """(split, reduce) of the reported numbers: test, final (fair) or best (paper)."""
        return "test", self.selection_reduce

    def tuning_specs(
        self,
        problem: str,
        size: str = "cpu",
        overrides: Mapping[str, Any] | None = None,
        evals_per_epoch: int = 1,
    ) -> list[RunSpec]:
        """Every configuration on the tuning seeds."""
        return [
            RunSpec(
                problem=problem,
                optimizer=label,
                hyperparameters=dict(config),
                seed=seed,
                size=size,
                overrides=dict(overrides or {}),
                evals_per_epoch=evals_per_epoch,
            )
            for label, configs in self.configs.items()
            for config in configs
            for seed in self.tune_seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["configs"] = {
            label: [dict(c) for c in configs] for label, configs in self.configs.items()
        }
        data["budget"] = self.budget()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        return cls(
            name=data["name"],
            configs={k: [dict(c) for c in v] for k, v in data["configs"].items()},
            seeds=tuple(data["seeds"]),
            tune_seeds=tuple(data["tune_seeds"]),
            selection_split=data["selection_split"],
            selection_reduce=data["selection_reduce"],
            notes=data["notes"],
        )


def _check_seeds(seeds: Sequence[int], name: str = "seeds") -> tuple[int, ...]:
    """Distinct integers >= 0 (torch and numpy seed generators with them)."""
    return tuple(values.integers(name, seeds, minimum=0))


def _check_optimizers(optimizers: Sequence[str]) -> list[str]:
    optimizers = values.strings("optimizers", optimizers)
    for label in optimizers:
        optimizer_labels.entry(label)  # UnknownOptimizer lists the known labels
    if len(set(optimizers)) != len(optimizers):
        raise ValueError(f"optimizers has duplicates: {list(optimizers)}")
    return list(optimizers)


def seed_note(seeds: Sequence[int]) -> str:
    """The seeds in words, as the protocols' notes write them."""
    note = f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return note + (" - fewer than the 5 the fair protocol asks for" if len(seeds) < 5 else "")


_seed_note = seed_note


def extra_hyperparameters(
    extra: Mapping[str, Mapping[str, Any]] | None, label: str
) -> dict[str, Any]:
    """Fixed extra hyperparameters for ``label``: under "all", its vanilla label, or the label.

    Memory settings under "all" reach only the memory optimizers that take them (the _c ones,
    and ``adam_cm`` all but ``aggr``); under a label's own name they are kept, so that creating
    the optimizer reports the mistake. A memory optimizer of its own also gets its twin's
    settings (``adam_cm`` those under ``adam``), as a _c twin gets its vanilla's.
    """
    extra = _check_extra(extra)
    merged = _memory_settings_for(label, extra.get("all", {}))
    merged.update(extra.get(optimizer_labels.base_label(label), {}))
    merged.update(extra.get(label, {}))
    return merged


def _memory_settings_for(label: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without the memory settings that ``label``'s optimizer does not take."""
    taken = optimizer_labels.memory_arguments(label)
    return {
        k: v
        for k, v in settings.items()
        if k not in optimizer_labels.MEMORY_ARGUMENTS or k in taken
    }


def _memory_words(optimizers: Sequence[str]) -> str:
    """Who gets the memory settings, in the notes: "the _c twins", plus any memory optimizer of
    its own by name ("the _c twins and Adam_CM")."""
    own = [
        optimizer_labels.display_name(label)
        for label in optimizers
        if optimizer_labels.is_memory(label) and optimizer_labels.pair_key(label) == label
    ]
    twins = [
        label
        for label in optimizers
        if optimizer_labels.is_memory(label) and optimizer_labels.pair_key(label) != label
    ]
    return " and ".join((["the _c twins"] if twins or not own else []) + own)


def _check_extra(extra: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The ``[hyperparameters]`` table: a table of plain values per label (or "all")."""
    extra = values.table("hyperparameters", extra)
    return {
        label: values.plain(
            values.table(f"hyperparameters.{label}", table), f"hyperparameters.{label}"
        )
        for label, table in extra.items()
    }


def _check_memory(memory: Mapping[str, Any]) -> dict[str, Any]:
    return values.plain(values.table("memory", memory), "memory")


def fair(
    optimizers: Sequence[str],
    *,
    lrs: Sequence[float] = PAPER_LRS,
    seeds: Sequence[int] = FAIR_SEEDS,
    tune_seeds: Sequence[int] | None = None,
    memory_search: str = "fixed",
    topCs: Sequence[int] = PAPER_TOPCS,
    decays: Sequence[float] = PAPER_DECAYS,
    memory: Mapping[str, Any] = RECOMMENDED_MEMORY,
    sample_seed: int = 0,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Protocol:
    """The equal-budget protocol (see the module docstring)."""
    optimizers = _check_optimizers(optimizers)
    seeds = _check_seeds(seeds)
    tune_seeds = _check_seeds(tune_seeds if tune_seeds is not None else seeds[:1], "tune_seeds")
    lrs = [float(lr) for lr in values.numbers_list("lrs", lrs, above=0)]
    values.string("memory_search", memory_search, MEMORY_SEARCHES)
    topCs = values.integers("topCs", topCs, minimum=1)
    decays = values.numbers_list("decays", decays, at_least=0, at_most=1)
    memory = _check_memory(memory)
    sample_seed = values.integer("sample_seed", sample_seed)
    grid = list(itertools.product(lrs, topCs, decays))
    configs: dict[str, list[dict[str, Any]]] = {}
    for label in optimizers:
        extras = extra_hyperparameters(extra, label)
        if not optimizer_labels.is_memory(label):
            configs[label] = [{**extras, "lr": lr} for lr in lrs]
        elif memory_search == "fixed":
            own = _memory_settings_for(label, memory)
            configs[label] = [{**own, **extras, "lr": lr} for lr in lrs]
        else:
            # One draw per twin label, all from the same seeded stream order: reproducible.
            draws = sorted(random.Random(f"{sample_seed}:{label}").sample(grid, len(lrs)))
            configs[label] = [
                {
                    "kappa": memory.get("kappa", PAPER_KAPPA),
                    **extras,
                    "lr": lr,
                    "topC": top,
                    "decay": decay,
                }
                for lr, top, decay in draws
            ]
    who = _memory_words(optimizers)
    memory_words = (
        f"{who} use the same learning rates with topC "
        f"{memory.get('topC')}, decay {memory.get('decay')}, kappa "
        f"{memory.get('kappa')}"
        if memory_search == "fixed"
        else f"{who} get {len(lrs)} (lr, topC, decay) triples drawn from lr x topC "
        f"{list(topCs)} x decay {list(decays)} (seed {sample_seed})"
    )
    notes = (
        f"fair: {len(lrs)} configurations per optimizer (lr in {lrs}; {memory_words}); "
        f"selection on the mean final validation metric over seeds {list(tune_seeds)}; "
        f"reported: final test metric of the selected configuration, mean +- std over "
        f"{_seed_note(seeds)}"
    )
    return Protocol("fair", configs, seeds, tune_seeds, "valid", "final", notes)


def paper(
    optimizers: Sequence[str],
    *,
    seeds: Sequence[int] = PAPER_SEEDS,
    lrs: Sequence[float] = PAPER_LRS,
    decays: Sequence[float] = PAPER_DECAYS,
    topCs: Sequence[int] = PAPER_TOPCS,
    kappa: float = PAPER_KAPPA,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Protocol:
    """The authors' grid and test-set selection (see the module docstring)."""
    optimizers = _check_optimizers(optimizers)
    seeds = _check_seeds(seeds)
    lrs = values.numbers_list("lrs", lrs, above=0)
    decays = values.numbers_list("decays", decays, at_least=0, at_most=1)
    topCs = values.integers("topCs", topCs, minimum=1)
    kappa = values.number("kappa", kappa, at_least=0)
    configs: dict[str, list[dict[str, Any]]] = {}
    for label in optimizers:
        extras = extra_hyperparameters(extra, label)
        if optimizer_labels.is_memory(label):
            configs[label] = [
                {**extras, "lr": float(lr), "topC": top, "decay": decay, "kappa": kappa}
                for lr, decay, top in itertools.product(lrs, decays, topCs)
            ]
        else:
            configs[label] = [{**extras, "lr": float(lr)} for lr in lrs]
    vanilla, twin = len(lrs), len(lrs) * len(decays) * len(topCs)
    notes = (
        f"paper: the authors' grid - {vanilla} configurations per vanilla optimizer, {twin} "
        f"per _c twin ({twin / vanilla:.0f}x the budget); every configuration on "
        f"{_seed_note(seeds)}; selection AND reported numbers use the best TEST metric over "
        "epochs, as the authors' scripts did (optimistic, favours the larger grid)"
    )
    return Protocol("paper", configs, seeds, seeds, "test", "best", notes)


def fixed(
    configs: Mapping[str, Mapping[str, Any]], *, seeds: Sequence[int], note: str = ""
) -> Protocol:
    """One given configuration per optimizer label, no tuning."""
    configs = {
        label: values.plain(values.table(f"fixed.{label}", config), f"fixed.{label}")
        for label, config in values.table("fixed", configs).items()
    }
    _check_optimizers(list(configs))
    seeds = _check_seeds(seeds)
    words = "; ".join(f"{label} {dict(config)}" for label, config in configs.items())
    notes = (
        f"fixed: one configuration per optimizer, no tuning ({words}){note}; reported: "
        f"final test metric, mean +- std over {_seed_note(seeds)}"
    )
    return Protocol(
        "fixed",
        {label: [dict(c)] for label, c in configs.items()},
        seeds,
        seeds,
        "valid",
        "final",
        notes,
    )


def default_configs(
    optimizers: Sequence[str], memory: Mapping[str, Any] = RECOMMENDED_MEMORY
) -> dict[str, dict[str, Any]]:
    """The fixed configuration of each label: its default learning rate from the optimizer table
    (the twin: its vanilla's), plus the recommended memory for the twins."""
    configs = {}
    for label in optimizers:
        lr = optimizer_labels.default_lr(label)
        config = {} if lr is None else {"lr": lr}
        if optimizer_labels.is_memory(label):
            config.update(_memory_settings_for(label, memory))
        configs[label] = config
    return configs
