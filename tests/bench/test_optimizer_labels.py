"""The harness's optimizer table agrees with the core's registry, and everything reads it."""

from __future__ import annotations

import inspect

import pytest
import torch

from critgrad import registry
from critgrad.bench import optimizer_labels, protocols
from critgrad.bench.optimizer_labels import LABELS, MEMORY_ARGUMENTS, ROWS

CORE_VANILLA = registry.list_optimizers(memory=False)
CORE_TWINS = registry.list_optimizers(memory=True)


def _extra_arguments(name: str) -> tuple[str, ...]:
    """The keyword arguments of ``name``'s class that its vanilla class does not take."""
    twin = inspect.signature(registry.optimizer_class(name)).parameters
    base = inspect.signature(
        registry.optimizer_class(name[: -len(registry.MEMORY_SUFFIX)])
    ).parameters
    return tuple(argument for argument in twin if argument not in base)


@pytest.mark.parametrize("name", CORE_TWINS)
def test_the_core_exports_the_memory_arguments_of_every_twin(name):
    assert _extra_arguments(name) == MEMORY_ARGUMENTS
    assert set(MEMORY_ARGUMENTS) >= {"topC", "decay", "kappa", "aggr", "key", "store_dtype"}


@pytest.mark.parametrize("name", CORE_VANILLA)
def test_every_core_optimizer_has_a_row_and_both_labels(name):
    assert name in ROWS, f"add {name!r} to optimizer_labels.ROWS (its display name, default lr)"
    assert LABELS[name].name == name and not LABELS[name].memory
    twin = LABELS[name + "_c"]
    assert twin.name == name + "_c" and twin.memory
    assert twin.display == LABELS[name].display + "_C"
    assert twin.default_lr == LABELS[name].default_lr


@pytest.mark.parametrize("row", sorted(ROWS))
def test_every_row_stands_for_a_core_optimizer_or_a_task_method(row):
    entry = ROWS[row]
    if entry.task_method is not None:
        assert entry.alias_of is None and LABELS[row].name == row
        assert row + "_c" not in LABELS  # a task method has no memory twin
    else:
        assert (entry.alias_of or row) in CORE_VANILLA


@pytest.mark.parametrize("label", sorted(LABELS))
def test_every_label_builds_its_registry_class(label):
    entry = LABELS[label]
    probe = torch.nn.Parameter(torch.zeros(2))
    optimizer = optimizer_labels.create(label, [probe], {"lr": 0.1} if entry.default_lr else {})
    if entry.task_method is None:
        assert type(optimizer) is registry.optimizer_class(entry.name)
        assert all(optimizer.param_groups[0][k] == v for k, v in entry.implied.items())
    assert optimizer_labels.display_name(label) == entry.display


@pytest.mark.parametrize("argument", MEMORY_ARGUMENTS)
@pytest.mark.parametrize("label", ["sgd", "sgdm", "adam", "aggmo", "saga"])
def test_vanilla_labels_refuse_every_memory_argument(label, argument):
    with pytest.raises(ValueError, match=f"{argument} apply only to the _c optimizers"):
        optimizer_labels.resolve(label, {argument: None})


def test_memory_settings_for_all_reach_only_the_twins():
    extra = {"all": {"compile": True, "key": "per_tensor", "store_dtype": None, "lr": 0.5}}
    assert protocols.extra_hyperparameters(extra, "adam") == {"lr": 0.5}
    assert protocols.extra_hyperparameters(extra, "adam_c") == extra["all"]


def test_default_configs_read_the_table():
    configs = protocols.default_configs(["sgdm", "sgdm_c", "aggmo", "saga"])
    assert configs == {
        "sgdm": {"lr": 0.01},
        "sgdm_c": {"lr": 0.01, **protocols.RECOMMENDED_MEMORY},
        "aggmo": {},  # AggMo's own default
        "saga": {},  # 1/(3L)
    }


def test_a_label_no_longer_in_the_table_shows_as_itself():
    assert optimizer_labels.display_name("lion_c") == "lion_C"
    assert optimizer_labels.default_lr("lion") is None
