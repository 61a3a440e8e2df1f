"""The harness's optimizer table agrees with the core's registry, and everything reads it."""

from __future__ import annotations

import inspect

import pytest
import torch

from critgrad import registry
from critgrad.bench import optimizer_labels, protocols
from critgrad.bench.optimizer_labels import LABELS, MEMORY_ARGUMENTS, ROWS

CORE_VANILLA = registry.list_optimizers(memory=False)
CORE_MEMORY = registry.list_optimizers(memory=True)
CORE_TWINS = [name for name in CORE_MEMORY if name.endswith(registry.MEMORY_SUFFIX)]
# Memory optimizers of their own (not "<vanilla>_c"): each row names the vanilla twin.
CORE_OWN = [name for name in CORE_MEMORY if name not in CORE_TWINS]


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


@pytest.mark.parametrize("name", CORE_OWN)
def test_every_memory_optimizer_of_its_own_has_a_row_naming_its_vanilla_twin(name):
    assert name in ROWS and ROWS[name].twin in CORE_VANILLA, (
        f"add {name!r} to optimizer_labels.ROWS with twin= its vanilla label"
    )
    entry = LABELS[name]
    assert entry.memory and entry.vanilla == ROWS[name].twin and name + "_c" not in LABELS
    # It takes every memory setting its class has, and only those.
    signature = inspect.signature(registry.optimizer_class(name)).parameters
    assert entry.memory_arguments == tuple(a for a in MEMORY_ARGUMENTS if a in signature)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_every_row_stands_for_a_core_optimizer_or_a_task_method(row):
    entry = ROWS[row]
    if entry.task_method is not None:
        assert entry.alias_of is None and LABELS[row].name == row
        assert row + "_c" not in LABELS  # a task method has no memory twin
    elif entry.twin is not None:
        assert (entry.alias_of or row) in CORE_OWN
    else:
        assert (entry.alias_of or row) in CORE_VANILLA


# label -> (memory, its vanilla label, its pair, the pair's name, display)
TABLE = {
    "sgd": (False, "sgd", "sgd", "SGD", "SGD"),
    "sgdm_c": (True, "sgdm", "sgdm", "SGDm", "SGDm_C"),
    "adam": (False, "adam", "adam", "Adam", "Adam"),
    "adam_c": (True, "adam", "adam", "Adam", "Adam_C"),
    "adam_cm": (True, "adam", "adam_cm", "Adam vs Adam_CM", "Adam_CM"),
    "saga": (False, "saga", "saga", "SAGA", "SAGA"),
}


@pytest.mark.parametrize("label", sorted(TABLE))
def test_each_label_knows_its_memory_its_twin_and_its_pair(label):
    memory, vanilla, key, name, display = TABLE[label]
    assert optimizer_labels.is_memory(label) is memory
    assert optimizer_labels.base_label(label) == vanilla
    assert optimizer_labels.pair_key(label) == key
    assert optimizer_labels.pair_name(key) == name
    assert optimizer_labels.display_name(label) == display


def test_adam_cm_is_adams_memory_optimizer_with_adams_learning_rate():
    entry = LABELS["adam_cm"]
    assert (entry.name, entry.display, entry.default_lr) == ("adam_cm", "Adam_CM", 1e-3)
    assert entry.default_lr == LABELS["adam"].default_lr
    assert "aggr" not in entry.memory_arguments  # Adam_CM averages its buffer
    assert set(entry.memory_arguments) >= {"topC", "decay", "kappa", "key", "store_dtype"}


@pytest.mark.parametrize(
    "labels, expected",
    [
        (
            ["sgd", "adam", "adam_c", "adam_cm"],
            [("sgd", "sgd", None), ("adam", "adam", "adam_c"), ("adam_cm", "adam", "adam_cm")],
        ),
        # Adam alone with Adam_CM: one pair, no empty Adam | - row.
        (["adam", "adam_cm"], [("adam_cm", "adam", "adam_cm")]),
        (["adam_cm", "adam"], [("adam_cm", "adam", "adam_cm")]),
        (["adam_cm", "sgd_c"], [("adam_cm", None, "adam_cm"), ("sgd", None, "sgd_c")]),
        (["sgdm_c", "sgdm"], [("sgdm", "sgdm", "sgdm_c")]),
        (
            ["adam_c", "adam", "adam_cm"],
            [("adam", "adam", "adam_c"), ("adam_cm", "adam", "adam_cm")],
        ),
    ],
)
def test_pairs_set_each_memory_label_beside_its_vanilla_twin(labels, expected):
    assert optimizer_labels.pairs(labels) == expected


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
    with pytest.raises(ValueError, match=f"{argument} apply only to the _c optimizers and adam_cm"):
        optimizer_labels.resolve(label, {argument: None})


@pytest.mark.parametrize("argument", LABELS["adam_cm"].memory_arguments)
def test_adam_cm_takes_the_memory_settings(argument):
    value = {"topC": 5, "decay": 0.9, "kappa": 0.5, "key": "per_tensor"}.get(argument)
    assert optimizer_labels.resolve("adam_cm", {argument: value}) == ("adam_cm", {argument: value})


def test_adam_cm_refuses_a_memory_setting_its_class_lacks_by_name():
    with pytest.raises(ValueError, match="optimizer 'adam_cm' takes no aggr; its memory settings"):
        optimizer_labels.resolve("adam_cm", {"aggr": "sum", "topC": 5})


def test_memory_settings_for_all_reach_only_the_optimizers_that_take_them():
    extra = {"all": {"compile": True, "key": "per_tensor", "aggr": "sum", "lr": 0.5}}
    assert protocols.extra_hyperparameters(extra, "adam") == {"lr": 0.5}
    assert protocols.extra_hyperparameters(extra, "adam_c") == extra["all"]
    assert protocols.extra_hyperparameters(extra, "adam_cm") == {
        "compile": True,
        "key": "per_tensor",
        "lr": 0.5,
    }


def test_adam_cm_follows_its_twins_settings_as_a_c_twin_does():
    extra = {"adam": {"betas": [0.8, 0.99]}, "adam_cm": {"kappa": 0.5}}
    assert protocols.extra_hyperparameters(extra, "adam_c") == {"betas": [0.8, 0.99]}
    assert protocols.extra_hyperparameters(extra, "adam_cm") == {"betas": [0.8, 0.99], "kappa": 0.5}


def test_default_configs_read_the_table():
    configs = protocols.default_configs(["sgdm", "sgdm_c", "aggmo", "saga", "adam_cm"])
    assert configs == {
        "sgdm": {"lr": 0.01},
        "sgdm_c": {"lr": 0.01, **protocols.RECOMMENDED_MEMORY},
        "aggmo": {},  # AggMo's own default
        "saga": {},  # 1/(3L)
        "adam_cm": {"lr": 1e-3, **protocols.RECOMMENDED_MEMORY},
    }
    # A memory setting Adam_CM does not take is left out for it, kept for the _c twins.
    with_aggr = protocols.default_configs(["adam_c", "adam_cm"], {"topC": 5, "aggr": "sum"})
    assert with_aggr == {
        "adam_c": {"lr": 1e-3, "topC": 5, "aggr": "sum"},
        "adam_cm": {"lr": 1e-3, "topC": 5},
    }


def test_a_label_no_longer_in_the_table_shows_as_itself():
    assert optimizer_labels.display_name("lion_c") == "lion_C"
    assert optimizer_labels.default_lr("lion") is None
