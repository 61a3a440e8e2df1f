"""The named optimizers present torch's arguments (with torch's defaults) plus the memory's.

Expectations are read from the installed torch class, never from critgrad's own helpers, so these
tests follow torch versions the same way the classes do.
"""

from __future__ import annotations

import importlib
import inspect
import pydoc
import typing

import pytest
import torch
from torch.optim import optimizer as torch_optimizer

import critgrad
from critgrad import optimizers

# (named class, torch class, reference default aggregation): every named optimizer.
NAMED = [
    (critgrad.SGD, torch.optim.SGD, "sum"),
    (critgrad.RMSprop, torch.optim.RMSprop, "mean"),
    (critgrad.Adam, torch.optim.Adam, "mean"),
    (critgrad.AdamW, torch.optim.AdamW, "mean"),
    (critgrad.Adagrad, torch.optim.Adagrad, "mean"),
    (critgrad.Adamax, torch.optim.Adamax, "mean"),
    (critgrad.NAdam, torch.optim.NAdam, "mean"),
    (critgrad.RAdam, torch.optim.RAdam, "mean"),
]
NAMED_IDS = [cls.__name__ for cls, _, _ in NAMED]

# The paper's names and the class each one is.
ALIASES = [
    ("SGD_C", critgrad.SGD),
    ("RMSprop_C", critgrad.RMSprop),
    ("Adam_C", critgrad.Adam),
    ("AdamW_C", critgrad.AdamW),
]

MEMORY_DEFAULTS = {
    "topC": 10,
    "decay": 0.7,
    "kappa": 1.0,
    "synced": None,
    "key": None,
    "store_dtype": None,
    "selection": "critical",
    "include_current": True,
    "compile": False,
}

# A value other than torch's default for each torch argument, valid for every optimizer that has
# it. Arguments that need another one to be valid get it from REQUIRES.
NON_DEFAULT = {
    "lr": 0.0123,
    "momentum": 0.5,
    "dampening": 0.1,
    "weight_decay": 0.02,
    "nesterov": True,
    "betas": (0.8, 0.95),
    "eps": 1e-6,
    "amsgrad": True,
    "alpha": 0.9,
    "centered": True,
    "lr_decay": 0.01,
    "initial_accumulator_value": 0.1,
    "momentum_decay": 0.005,
    "decoupled_weight_decay": True,
    "foreach": True,
    "fused": True,
    "maximize": True,
    "capturable": True,
    "differentiable": True,
}
REQUIRES = {"nesterov": {"momentum": 0.9}}


def non_default(name: str, default: object) -> object:
    if name in NON_DEFAULT:
        return NON_DEFAULT[name]
    # An argument a newer torch added: flags are the common case.
    if default is None or isinstance(default, bool):
        return not default
    raise AssertionError(f"add a non-default value for the torch argument {name!r} to NON_DEFAULT")


def torch_signature(torch_cls):
    return inspect.signature(torch_cls).parameters


def expected_default(p: inspect.Parameter) -> object:
    # Older torch marks a required lr with a sentinel; the named class makes it required.
    required = getattr(torch_optimizer, "required", object())
    return inspect.Parameter.empty if p.default is required else p.default


def make_params():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 2, generator=gen), torch.randn(3, generator=gen)]


def torch_arguments(torch_cls):
    return [name for name in torch_signature(torch_cls) if name != "params"]


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_signature_has_torch_arguments_in_order_with_torch_defaults(cls, torch_cls, aggr):
    ours = inspect.signature(cls).parameters
    theirs = torch_signature(torch_cls)
    # torch's arguments come first, in torch's order, so positional calls mean the same thing.
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, p in theirs.items():
        q = ours[name]
        assert q.kind == p.kind, name
        default = expected_default(p)
        assert q.default == default and type(q.default) is type(default), name
    # Annotations resolved to objects, as torch's are, so runtime checkers can use them.
    their_hints = typing.get_type_hints(torch_cls.__init__)
    our_hints = typing.get_type_hints(cls.__init__)
    for name in theirs:
        assert our_hints[name] == their_hints[name], name


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_signature_has_memory_arguments_with_reference_defaults(cls, torch_cls, aggr):
    ours = inspect.signature(cls).parameters
    memory = {name: p for name, p in ours.items() if name not in torch_signature(torch_cls)}
    assert set(memory) == set(MEMORY_DEFAULTS) | {"aggr"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in memory.values())
    assert {name: p.default for name, p in memory.items()} == {**MEMORY_DEFAULTS, "aggr": aggr}
    hints = typing.get_type_hints(cls.__init__)
    assert typing.get_args(hints["aggr"]) == critgrad.AGGREGATIONS
    assert typing.get_args(hints["selection"]) == critgrad.SELECTIONS
    assert hints["topC"] is int and hints["compile"] is bool and hints["include_current"] is bool


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_init_is_a_real_function_with_that_signature(cls, torch_cls, aggr):
    init = cls.__init__
    assert inspect.isfunction(init) and init.__qualname__ == f"{cls.__name__}.__init__"
    params = list(inspect.signature(init).parameters)
    assert params[0] == "self" and params[1:] == list(inspect.signature(cls).parameters)
    assert not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(init).parameters.values()
    )


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_no_arguments_gives_torch_defaults(cls, torch_cls, aggr):
    params = make_params()
    opt = cls(params)
    assert opt.base.defaults == torch_cls(make_params()).defaults
    assert type(opt.base) is torch_cls
    group = opt.param_groups[0]
    assert (group["topC"], group["decay"], group["kappa"]) == (10, 0.7, 1.0)
    assert (group["aggr"], group["key"], group["store_dtype"]) == (aggr, "sum_of_norms", None)
    assert (group["selection"], group["include_current"]) == ("critical", True)
    assert "selection_seed" not in group


@pytest.mark.parametrize(
    "cls, torch_cls, name",
    [(cls, t, name) for cls, t, _ in NAMED for name in torch_arguments(t)],
    ids=[f"{cls.__name__}-{name}" for cls, t, _ in NAMED for name in torch_arguments(t)],
)
def test_each_torch_keyword_reaches_the_base(cls, torch_cls, name):
    default = expected_default(torch_signature(torch_cls)[name])
    kwargs = {**REQUIRES.get(name, {}), name: non_default(name, default)}
    opt = cls(make_params(), **kwargs)
    assert opt.base.defaults[name] == kwargs[name] != default
    assert opt.base.defaults == torch_cls(make_params(), **kwargs).defaults


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_positional_arguments_mean_what_they_mean_for_torch(cls, torch_cls, aggr):
    positional = [
        p
        for p in torch_signature(torch_cls).values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "params"
    ]
    values = [non_default(p.name, expected_default(p)) for p in positional]
    if torch_cls is torch.optim.SGD:
        values[[p.name for p in positional].index("dampening")] = 0.0  # Nesterov needs it
    opt = cls(make_params(), *values, topC=3)
    assert opt.base.defaults == torch_cls(make_params(), *values).defaults
    assert opt.param_groups[0]["topC"] == 3


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_memory_keywords_reach_the_memory(cls, torch_cls, aggr):
    opt = cls(
        make_params(),
        topC=3,
        decay=0.5,
        kappa=0.25,
        aggr="mid",
        synced=False,
        store_dtype=torch.bfloat16,
        selection="recent",
        include_current=False,
    )
    group = opt.param_groups[0]
    assert (group["selection"], group["include_current"]) == ("recent", False)
    assert (group["topC"], group["decay"], group["kappa"], group["aggr"]) == (3, 0.5, 0.25, "mid")
    assert (group["key"], group["store_dtype"]) == ("per_tensor", torch.bfloat16)
    assert cls(make_params(), key="global_norm").param_groups[0]["key"] == "global_norm"
    assert cls(make_params(), store_dtype=torch.float64).param_groups[0]["store_dtype"] == (
        torch.float64
    )


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
@pytest.mark.parametrize("typo", ["betaz", "topc", "synched"])
def test_unknown_keyword_is_a_type_error_naming_it(cls, torch_cls, aggr, typo):
    with pytest.raises(
        TypeError,
        match=rf"{cls.__name__}\.__init__\(\) got an unexpected keyword argument '{typo}'",
    ):
        cls(make_params(), **{typo: 1})


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_memory_arguments_are_keyword_only(cls, torch_cls, aggr):
    n_positional = sum(
        p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        for p in torch_signature(torch_cls).values()
    )
    with pytest.raises(TypeError, match="positional argument"):
        cls(make_params(), *([None] * n_positional))


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_help_lists_every_argument(cls, torch_cls, aggr):
    doc = inspect.getdoc(cls)
    for name in inspect.signature(cls).parameters:
        assert f"\n    {name}: " in doc, name
    assert f"torch.optim.{torch_cls.__name__}" in doc
    # help() shows the whole signature, torch's arguments and the memory's.
    rendered = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert f"{cls.__name__}{inspect.signature(cls)}" in rendered


@pytest.mark.parametrize("name, cls", ALIASES)
def test_paper_names_take_the_reference_keywords(name, cls):
    alias = getattr(critgrad, name)
    assert alias is cls
    params = make_params()
    kwargs = dict(lr=0.05, topC=5, decay=0.9, kappa=1.0, synced=True)
    if name == "SGD_C":
        kwargs.update(momentum=0.9, aggr="sum")
    else:
        kwargs.update(aggr="mean")
    opt = alias(params, **kwargs)
    group = opt.param_groups[0]
    assert (group["lr"], group["topC"], group["decay"], group["key"]) == (
        0.05,
        5,
        0.9,
        "sum_of_norms",
    )


def test_signature_follows_the_torch_class():
    """A torch class with other arguments (as another torch version has) gets them all."""

    class Other(torch.optim.SGD):
        def __init__(
            self,
            params,
            lr=torch_optimizer.required,
            gain: float = 0.3,
            /,
            scale: float = 2.0,
            *,
            flag: bool = True,
            **extra,
        ):
            super().__init__(params, lr=lr, momentum=gain, nesterov=flag, **extra)
            self.scale = scale

    cls = optimizers._named("Other", Other, "mean", "A test optimizer.")
    sig = inspect.signature(cls)
    names = list(sig.parameters)
    assert names[:4] == ["params", "lr", "gain", "scale"]
    assert names[-1] == "extra" and sig.parameters["extra"].kind is inspect.Parameter.VAR_KEYWORD
    assert sig.parameters["lr"].default is inspect.Parameter.empty  # torch's "required"
    assert sig.parameters["gain"].kind is inspect.Parameter.POSITIONAL_ONLY
    assert sig.parameters["flag"].default is True
    assert sig.parameters["aggr"].default == "mean"
    opt = cls(make_params(), 0.1, 0.5, 3.0, flag=False, dampening=0.25, topC=2)
    assert opt.base.scale == 3.0
    assert (opt.defaults["momentum"], opt.defaults["nesterov"]) == (0.5, False)
    assert opt.defaults["dampening"] == 0.25 and opt.param_groups[0]["topC"] == 2
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'lr'"):
        cls(make_params())


def test_torch_signatures_that_cannot_be_named_are_refused():
    class Clash(torch.optim.SGD):
        def __init__(self, params, lr=0.1, decay=0.5):
            super().__init__(params, lr=lr, weight_decay=decay)

    with pytest.raises(
        TypeError, match=r"Clash has arguments named like the memory's: \['decay'\]"
    ):
        optimizers._named("Clash", Clash, "mean", "A test optimizer.")

    class Star(torch.optim.SGD):
        def __init__(self, params, lr=0.1, *args):
            super().__init__(params, lr, *args)

    with pytest.raises(TypeError, match=r"Star takes \*args"):
        optimizers._named("Star", Star, "mean", "A test optimizer.")


# --- configuration systems --------------------------------------------------------------------


def build_from_class_path(init):
    # What LightningCLI does with a parsed optimizer: import class_path, call it with init_args.
    module, _, name = init.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(make_params(), **vars(init.init_args))


def optimizer_parser():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    # LightningCLI's optimizer option: any Optimizer subclass, its params given in code.
    parser.add_subclass_arguments(torch.optim.Optimizer, "optimizer", skip={"params"})
    return parser


@pytest.mark.parametrize(
    "source",
    [
        "command_line",
        "config",
    ],
)
def test_jsonargparse_builds_critgrad_adam_as_it_builds_torch_adam(source):
    parser = optimizer_parser()

    def parse(class_path, memory):
        if source == "command_line":
            args = ["--optimizer", class_path, "--optimizer.betas", "[0.8, 0.99]"]
            if memory:
                args += ["--optimizer.topC", "5", "--optimizer.synced", "false"]
            return parser.parse_args(args).optimizer
        init_args = {"betas": [0.8, 0.99], "lr": 0.01}
        if memory:
            init_args.update(topC=5, synced=False)
        return parser.parse_object(
            {"optimizer": {"class_path": class_path, "init_args": init_args}}
        ).optimizer

    theirs = build_from_class_path(parse("torch.optim.Adam", memory=False))
    ours = build_from_class_path(parse("critgrad.Adam", memory=True))
    assert type(ours) is critgrad.Adam
    assert ours.base.defaults == theirs.defaults
    assert tuple(ours.base.defaults["betas"]) == (0.8, 0.99)
    group = ours.param_groups[0]
    assert (group["topC"], group["decay"], group["key"]) == (5, 0.7, "per_tensor")


@pytest.mark.parametrize("cls, torch_cls, aggr", NAMED, ids=NAMED_IDS)
def test_jsonargparse_sees_every_argument_with_its_default(cls, torch_cls, aggr):
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "optimizer", skip={"params"})
    defaults = vars(parser.get_defaults().optimizer)
    expected = {
        name: p.default for name, p in inspect.signature(cls).parameters.items() if name != "params"
    }
    assert defaults == expected


def test_jsonargparse_rejects_unknown_options_and_values():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = optimizer_parser()
    with pytest.raises(jsonargparse.ArgumentError, match="topc"):
        parser.parse_args(["--optimizer", "critgrad.Adam", "--optimizer.topc", "5"])
    with pytest.raises(jsonargparse.ArgumentError, match="aggr"):
        parser.parse_args(["--optimizer", "critgrad.Adam", "--optimizer.aggr", "median"])


def test_hydra_instantiates_a_partial_paper_optimizer():
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        """
        _target_: critgrad.Adam_C
        _partial_: true
        lr: 0.01
        betas: [0.8, 0.99]
        amsgrad: true
        topC: 5
        decay: 0.9
        synced: false
        """
    )
    make = instantiate(config)
    opt = make(make_params())
    assert type(opt) is critgrad.Adam
    theirs = torch.optim.Adam(make_params(), lr=0.01, betas=(0.8, 0.99), amsgrad=True)
    assert opt.base.defaults == {**theirs.defaults, "betas": opt.base.defaults["betas"]}
    assert tuple(opt.base.defaults["betas"]) == (0.8, 0.99)
    group = opt.param_groups[0]
    assert (group["topC"], group["decay"], group["key"]) == (5, 0.9, "per_tensor")
