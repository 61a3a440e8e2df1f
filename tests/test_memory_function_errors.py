"""The pure functions of critgrad.memory given a mode they do not know raise a ValueError naming
the option, the value and the allowed values. The wrapper checks its options before calling them;
these messages are for code that calls the functions itself (a distributed key computation)."""

import pytest
import torch

from critgrad import memory as M

CASES = [
    (lambda: M.keys_from_norms(torch.ones(2), "l2"), "key", "'l2'", M.KEY_MODES),
    (
        lambda: M.coefficients("avg", torch.zeros(2, dtype=torch.int64), 1.0),
        "aggr",
        "'avg'",
        M.AGGREGATIONS,
    ),
]


@pytest.mark.parametrize("call, name, value, allowed", CASES, ids=["key", "aggr"])
def test_unknown_mode_is_named_with_the_allowed_values(call, name, value, allowed):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert name in message and value in message, message
    for mode in allowed:
        assert mode in message, (mode, message)
