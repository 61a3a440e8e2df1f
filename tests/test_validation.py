"""Every invalid argument raises ValueError at construction, naming it and the allowed values."""

import math

import numpy as np
import pytest
import torch

import critgrad

# (arguments, the argument's name, fragments of the allowed values the message must state)
INVALID = [
    (dict(topC=0), "topC", [">= 1"]),
    (dict(topC=-3), "topC", [">= 1"]),
    (dict(topC=2.5), "topC", [">= 1"]),
    (dict(topC=True), "topC", [">= 1"]),
    (dict(decay=-0.1), "decay", ["[0, 1]"]),
    (dict(decay=1.5), "decay", ["[0, 1]"]),
    (dict(decay=float("nan")), "decay", ["[0, 1]"]),
    (dict(decay=True), "decay", ["[0, 1]"]),  # a bool is not a number here
    (dict(kappa=-1.0), "kappa", [">= 0"]),
    (dict(kappa=float("inf")), "kappa", [">= 0"]),
    (dict(kappa=True), "kappa", [">= 0"]),
    (dict(aggr="avg"), "aggr", ["sum", "mid", "mean"]),
    (dict(key="l2"), "key", ["sum_of_norms", "per_tensor", "global_norm"]),
    (dict(store_dtype=torch.int8), "store_dtype", ["floating"]),
    (dict(store_dtype="bfloat16"), "store_dtype", ["floating"]),
    (dict(selection="fifo"), "selection", ["critical", "recent", "smallest", "random"]),
    (dict(selection=None), "selection", ["critical", "recent", "smallest", "random"]),
    (dict(include_current=1), "include_current", ["True", "False"]),
    (dict(include_current="no"), "include_current", ["True", "False"]),
    (dict(synced="yes"), "synced", ["True", "False"]),
    # bool is a number to Python, never to us; numpy scalars are numbers, but not of any kind
    (dict(decay=True), "decay", ["[0, 1]"]),
    (dict(decay=float("inf")), "decay", ["[0, 1]"]),
    (dict(decay=np.float32("nan")), "decay", ["[0, 1]"]),
    (dict(kappa=False), "kappa", ["finite", ">= 0"]),
    (dict(kappa=float("nan")), "kappa", ["finite", ">= 0"]),
    (dict(kappa=np.float64("inf")), "kappa", ["finite", ">= 0"]),
    (dict(topC=np.float64(5.0)), "topC", ["integer", ">= 1"]),
    (dict(topC=np.int64(0)), "topC", ["integer", ">= 1"]),
    (dict(topC=np.bool_(True)), "topC", ["integer", ">= 1"]),
]
IDS = [f"{n}={next(iter(k.values()))!r}" for k, n, _ in INVALID]


def check_message(error, kwargs, name, allowed):
    """The message names the argument, shows the value given and states the allowed values."""
    message = str(error.value)
    value = next(iter(kwargs.values()))
    assert name in message, message
    # (a refused numpy scalar may be shown as the Python value it was taken for)
    assert repr(value) in message or repr(value.item()) in message, message
    for fragment in allowed:
        assert fragment in message, (fragment, message)


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    "cls", [critgrad.SGD_C, critgrad.RMSprop_C, critgrad.Adam_C, critgrad.AdamW_C, critgrad.NAdam]
)
@pytest.mark.parametrize("kwargs, name, allowed", INVALID, ids=IDS)
def test_invalid_memory_argument(cls, kwargs, name, allowed):
    with pytest.raises(ValueError) as error:
        cls(params(), **kwargs)
    check_message(error, kwargs, name, allowed)


@pytest.mark.parametrize(
    "kwargs, name, allowed",
    [case for case in INVALID if case[1] != "synced"],
    ids=[i for i, case in zip(IDS, INVALID) if case[1] != "synced"],
)
def test_invalid_argument_in_param_group(kwargs, name, allowed):
    with pytest.raises(ValueError) as error:
        critgrad.Adam([{"params": params(), **kwargs}])
    check_message(error, kwargs, name, allowed)
    opt = critgrad.Adam(params())
    with pytest.raises(ValueError) as error:
        opt.add_param_group({"params": params(), **kwargs})
    check_message(error, kwargs, name, allowed)
    assert len(opt.param_groups) == 1 and len(opt.base.param_groups) == 1


def test_base_optimizer_errors_still_raise():
    with pytest.raises(ValueError, match="learning rate"):
        critgrad.Adam(params(), lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        critgrad.SGD(params(), momentum=-0.5)


def test_wrapper_rejects_non_optimizers():
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        critgrad.CriticalGradients(params())
    with pytest.raises(TypeError, match="already has a critical-gradient memory"):
        critgrad.CriticalGradients(critgrad.Adam(params()))


def test_changed_group_option_is_checked_at_step():
    p = params()
    opt = critgrad.SGD(p, lr=0.1)
    p[0].grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["decay"] = 2.0
    with pytest.raises(ValueError, match="decay"):
        opt.step()
    opt.param_groups[0]["decay"] = 0.5
    opt.param_groups[0]["topC"] = 4
    with pytest.raises(ValueError, match="topC"):
        opt.step()


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match="Invalid optimizer name: 'adamz'"):
        critgrad.create_optimizer(params(), "adamz")


# ------------------------------------------------------------------------ numbers

# numpy scalars are taken as the Python numbers they hold, as torch.optim takes them:
# (arguments, the option, the value the group holds, its type)
NUMPY_ACCEPTED = [
    (dict(topC=np.int64(5)), "topC", 5, int),
    (dict(topC=np.int32(2)), "topC", 2, int),
    (dict(topC=np.uint8(3)), "topC", 3, int),
    (dict(decay=np.float32(0.5)), "decay", 0.5, float),
    (dict(decay=np.float64(0.7)), "decay", 0.7, float),  # (a subclass of float: still converted)
    (dict(decay=np.int64(1)), "decay", 1, int),
    (dict(kappa=np.float16(2.0)), "kappa", 2.0, float),
    (dict(kappa=np.int8(0)), "kappa", 0, int),
]
NUMPY_IDS = [f"{n}={next(iter(k.values()))!r}" for k, n, _, _ in NUMPY_ACCEPTED]


@pytest.mark.parametrize("kwargs, name, value, kind", NUMPY_ACCEPTED, ids=NUMPY_IDS)
def test_numpy_scalars_are_taken_as_python_numbers(kwargs, name, value, kind):
    built = [
        critgrad.Adam(params(), **kwargs),
        critgrad.create_optimizer(params(), "sgd_c", lr=0.1, **kwargs),
        critgrad.Adam([{"params": params(), **kwargs}]),
        critgrad.CriticalGradients(torch.optim.SGD([{"params": params(), **kwargs}], lr=0.1)),
    ]
    added = critgrad.Adam(params())
    added.add_param_group({"params": params(), **kwargs})
    built.append(added)
    for opt in built:
        group = opt.param_groups[-1]
        assert group[name] == value and type(group[name]) is kind, (opt, group[name])


def test_numpy_scalars_set_between_steps_become_python_numbers():
    p = params()
    opt = critgrad.SGD(p, lr=0.1, topC=2, selection="random")
    p[0].grad = torch.ones(3)
    opt.step()
    group = opt.param_groups[0]
    group.update(kappa=np.float32(0.5), decay=np.float64(0.25), topC=np.int64(2))
    group["selection_seed"] = np.uint64(group["selection_seed"])
    opt.step()
    assert [type(group[n]) for n in ("kappa", "decay", "topC", "selection_seed")] == [
        float,
        float,
        int,
        int,
    ]


# lr: (value, whether it is refused); the message names lr and the allowed values
LR = [
    (True, True),
    (False, True),
    (math.inf, True),
    (-math.inf, True),
    (math.nan, True),
    (np.float32("inf"), True),
    (np.bool_(True), True),
    ("0.1", True),
    (np.float32(0.25), False),
    (np.int64(1), False),
    (0.5, False),
]


@pytest.mark.parametrize("lr, refused", LR, ids=[repr(lr) for lr, _ in LR])
@pytest.mark.parametrize("name", ["sgd", "adam", "sgd_c", "adamw_c"])
def test_create_optimizer_learning_rates(name, lr, refused):
    if refused:
        with pytest.raises(
            ValueError, match=r"Invalid lr: .*\(must be a finite learning rate >= 0"
        ):
            critgrad.create_optimizer(params(), name, lr=lr)
        return
    group = critgrad.create_optimizer(params(), name, lr=lr).param_groups[0]
    assert group["lr"] == float(lr) and type(group["lr"]) in (int, float)


@pytest.mark.parametrize("lr, refused", LR, ids=[repr(lr) for lr, _ in LR])
def test_named_classes_learning_rates(lr, refused):
    for cls in (critgrad.SGD, critgrad.Adam_C, critgrad.RMSprop):
        if refused:
            with pytest.raises(ValueError, match=r"Invalid lr: .*\(must be"):
                cls(params(), lr=lr)
        else:
            assert cls(params(), lr=lr).param_groups[0]["lr"] == float(lr)


def test_tensor_learning_rate_still_accepted():
    lr = torch.tensor(0.01)
    assert critgrad.create_optimizer(params(), "adam_c", lr=lr).param_groups[0]["lr"] is lr
