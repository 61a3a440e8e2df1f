"""The whole step traces as one graph: no host synchronisation, and a user's torch.compile of a
training step keeps it in one piece and gives the eager results."""

import warnings

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads

import critgrad
from critgrad._compile import inductor_counting

# The step with the memory full and evicting: the path every step of a long run takes.
NAMED = {
    "SGD_C": lambda p: critgrad.SGD_C(p, lr=1e-2, topC=4, decay=0.9),
    "SGD_C momentum": lambda p: critgrad.SGD_C(p, lr=1e-2, topC=4, decay=0.9, momentum=0.9),
    "Adam_C": lambda p: critgrad.Adam_C(p, lr=1e-2, topC=4, decay=0.9),
    "AdamW_C": lambda p: critgrad.AdamW_C(p, lr=1e-2, topC=4, decay=0.9, weight_decay=0.1),
    "RMSprop_C": lambda p: critgrad.RMSprop_C(p, lr=1e-3, topC=4, decay=0.9),
}


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    batches = [torch.randn(8, 16) for _ in range(10)]
    return model, batches


def backward(model, batch):
    for p in model.parameters():
        p.grad = None
    model(batch).square().mean().backward()


@pytest.mark.parametrize("name", list(NAMED))
def test_step_is_one_graph_once_the_memory_evicts(name):
    model, batches = model_and_data()
    opt = NAMED[name](model.parameters())
    for batch in batches[:6]:
        backward(model, batch)
        opt.step()
    assert opt.memory_stats()[0]["evicted"] > 0
    backward(model, batches[6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's note that the profiler's record is ignored
        result = torch._dynamo.explain(lambda: opt.step())()
    reasons = [str(r.reason).splitlines()[0] for r in result.break_reasons]
    assert (result.graph_count, result.graph_break_count, reasons) == (1, 0, [])
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["SGD_C momentum", "Adam_C"])
def test_compiled_user_step_gives_the_eager_results(name):
    model_a, batches = model_and_data()
    model_b, _ = model_and_data()
    eager = NAMED[name](model_a.parameters())
    traced = NAMED[name](model_b.parameters())
    graphs = {"compiled": 0, "ran": 0}

    def compiled_once():
        graphs["compiled"] += 1

    def ran():
        graphs["ran"] += 1

    step = torch.compile(traced.step, backend=inductor_counting(compiled_once, ran))
    for batch in batches:
        backward(model_a, batch)
        eager.step()
        backward(model_b, batch)
        step()
    # Compiled graphs ran at every step (the first, which creates the memories, in two pieces
    # around the insertion of the new memories into the state).
    assert graphs["ran"] >= len(batches)
    # torch's own compiled-optimizer tests compare float32 with these (assertEqual's) bounds.
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(eager.memory[a]["critical_age"], traced.memory[b]["critical_age"])
    torch._dynamo.reset()


def test_capturable_base_compiled():
    # torch's capturable optimizers keep their step count on the device and refuse CPU
    # parameters in eager mode; compiled, they run here as on a GPU. The memory has no host
    # state to add.
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    eager = critgrad.Adam(params_a, lr=0.01, topC=3)
    captured = critgrad.Adam(params_b, lr=0.01, topC=3, capturable=True)
    step = torch.compile(captured.step)
    for grads in gradient_sequence(params_a, 8):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        eager.step()
        step()
    assert captured.state[params_b[0]]["step"].device == params_b[0].device
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)
    # The same decisions; the priorities and keys from norms summed in another order (eager:
    # the native kernels' float64 sums; compiled: torch's).
    for a, b in zip(eager.memory_stats(), captured.memory_stats()):
        assert a.keys() == b.keys()
        for name, value in a.items():
            assert value == (
                pytest.approx(b[name], rel=1e-6) if "priority" in name or "key" in name else b[name]
            ), name
    torch._dynamo.reset()
