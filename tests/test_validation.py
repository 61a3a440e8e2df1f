"""Every invalid argument raises ValueError at construction, naming it and the allowed values."""

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
    (dict(kappa=-1.0), "kappa", [">= 0"]),
    (dict(kappa=float("inf")), "kappa", [">= 0"]),
    (dict(aggr="avg"), "aggr", ["sum", "mid", "mean"]),
    (dict(key="l2"), "key", ["sum_of_norms", "per_tensor", "global_norm"]),
    (dict(store_dtype=torch.int8), "store_dtype", ["floating"]),
    (dict(store_dtype="bfloat16"), "store_dtype", ["floating"]),
    (dict(synced="yes"), "synced", ["True", "False"]),
]
IDS = [f"{n}={next(iter(k.values()))}" for k, n, _ in INVALID]


def check_message(error, kwargs, name, allowed):
    """The message names the argument, shows the value given and states the allowed values."""
    message = str(error.value)
    assert name in message, message
    assert repr(next(iter(kwargs.values()))) in message, message
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
