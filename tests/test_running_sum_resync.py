"""The running sum of the stored gradients (updated as sum += new - evicted) is recomputed from the
store in chunks, one per step a gradient is offered, so that every element is exact again within
RESYNC_PER_SLOT * topC steps, whether or not anything is admitted in those steps.

With ``compile=True`` the resync of a large sum runs after the compiled step instead of inside it
(critgrad._compile.resync_or_defer_): the same promise is checked on that path, for the wrapper
and for Adam_CM (whose memory holds momenta)."""

import pytest
import torch
from torch import nn

import critgrad
from critgrad import memory as M
from critgrad._compile import LARGE


def sgd_c(p, compile):
    return critgrad.SGD([p], lr=0.0, topC=2, decay=1.0, compile=compile)


def adam_cm(p, compile):
    return critgrad.Adam_CM([p], lr=0.0, topC=2, decay=1.0, compile=compile)


# (optimizer, elements, compile): a small sum resyncs inside the compiled graph, a large one after.
CASES = [
    pytest.param(sgd_c, 5, False, id="SGD_C-fewer-elements-than-the-period-eager"),
    pytest.param(sgd_c, 1000, False, id="SGD_C-small-eager"),
    pytest.param(sgd_c, 1000, True, id="SGD_C-small-compiled"),
    pytest.param(sgd_c, LARGE, True, id="SGD_C-large-compiled"),
    pytest.param(adam_cm, 1000, False, id="Adam_CM-small-eager"),
    pytest.param(adam_cm, LARGE, True, id="Adam_CM-large-compiled"),
]


@pytest.mark.parametrize(("build", "numel", "compile"), CASES)
def test_sum_is_exact_within_a_period_of_rejected_steps(build, numel, compile):
    topC = 2  # two entries: their float32 sum is one rounding, in any order
    p = nn.Parameter(torch.zeros(numel))
    opt = build(p, compile)
    gen = torch.Generator().manual_seed(0)
    # Growing keys: each gradient is admitted and evicts the older entry, and the running sum
    # drifts away from the sum of what is stored.
    for step in range(40):
        p.grad = torch.randn(numel, generator=gen) * (1.0 + step) ** 2
        opt.step()
    memory = opt.memory[p]
    exact = memory["critical_store"][0] + memory["critical_store"][1]
    assert not torch.equal(memory["critical_sum"], exact)  # drifted: the check below can fail
    # Small gradients: all rejected (decay 1 keeps the stored keys, id="Adam_CM-small-eager"), the store stays as it is.
    admitted = opt.memory_stats()[0]["admitted"]
    for _ in range(M.RESYNC_PER_SLOT * topC):
        p.grad = torch.randn(numel, generator=gen) * 1e-3
        opt.step()
    assert opt.memory_stats()[0]["admitted"] == admitted
    assert opt.last_step_implementation == ("compiled" if compile else "eager")
    assert torch.equal(opt.memory[p]["critical_sum"], exact)
