"""The running sum of the stored gradients (updated as sum += new - evicted) is recomputed from the
store in chunks, one per step a gradient is offered, so that every element is exact again within
RESYNC_PER_SLOT * topC steps, whether or not anything is admitted in those steps."""

import torch
from torch import nn

import critgrad
from critgrad import memory as M


def test_sum_is_exact_within_a_period_of_rejected_steps():
    topC = 2  # two entries: their float32 sum is one rounding, in any order
    p = nn.Parameter(torch.zeros(1000))
    opt = critgrad.SGD([p], lr=0.0, topC=topC, decay=1.0)
    gen = torch.Generator().manual_seed(0)
    # Growing keys: each gradient is admitted and evicts the older entry, and the running sum
    # drifts away from the sum of what is stored.
    for step in range(40):
        p.grad = torch.randn(1000, generator=gen) * (1.0 + step)
        opt.step()
    memory = opt.memory[p]
    exact = memory["critical_store"][0] + memory["critical_store"][1]
    assert not torch.equal(memory["critical_sum"], exact)  # drifted: the check below can fail
    # Small gradients: all rejected (decay 1 keeps the stored keys), the store stays as it is.
    admitted = opt.memory_stats()[0]["admitted"]
    for _ in range(M.RESYNC_PER_SLOT * topC):
        p.grad = torch.randn(1000, generator=gen) * 1e-3
        opt.step()
    assert opt.memory_stats()[0]["admitted"] == admitted
    assert torch.equal(opt.memory[p]["critical_sum"], exact)
