"""Every invalid argument raises ValueError at construction, naming it and the allowed values."""

import pytest
import torch

import critgrad

INVALID = [
    (dict(topC=0), "topC"),
    (dict(topC=-3), "topC"),
    (dict(topC=2.5), "topC"),
    (dict(topC=True), "topC"),
    (dict(decay=-0.1), "decay"),
    (dict(decay=1.5), "decay"),
    (dict(decay=float("nan")), "decay"),
    (dict(kappa=-1.0), "kappa"),
    (dict(kappa=float("inf")), "kappa"),
    (dict(aggr="avg"), "aggr"),
    (dict(key="l2"), "key"),
    (dict(store_dtype=torch.int8), "store_dtype"),
    (dict(store_dtype="bfloat16"), "store_dtype"),
    (dict(synced="yes"), "synced"),
]


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    "cls", [critgrad.SGD_C, critgrad.RMSprop_C, critgrad.Adam_C, critgrad.AdamW_C, critgrad.NAdam]
)
@pytest.mark.parametrize(
    "kwargs, name", INVALID, ids=[f"{n}={next(iter(k.values()))}" for k, n in INVALID]
)
def test_invalid_memory_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}|{name}"):
        cls(params(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [(k, n) for k, n in INVALID if n != "synced"])
def test_invalid_argument_in_param_group(kwargs, name):
    with pytest.raises(ValueError, match=name):
        critgrad.Adam([{"params": params(), **kwargs}])
    opt = critgrad.Adam(params())
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": params(), **kwargs})
    assert len(opt.param_groups) == 1 and len(opt.base.param_groups) == 1


def test_base_optimizer_errors_still_raise():
    with pytest.raises(ValueError, match="learning rate"):
        critgrad.Adam(params(), lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        critgrad.SGD(params(), momentum=-0.5)


def test_wrapper_rejects_non_optimizers():
    with pytest.raises(TypeError):
        critgrad.CriticalGradients(params())
    with pytest.raises(TypeError):
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
