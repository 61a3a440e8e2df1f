"""compile=True's graph pass: small operands of large elementwise work are computed once, in a
kernel of their own (inductor would otherwise recompute them in every vector iteration)."""

import torch

import critgrad
from critgrad import _compile
from critgrad._compile import inductor_counting, materialize_scalars


def bias_corrected(x, step):
    # As in torch's Adam: a power of a device counter, applied to a large tensor.
    step.add_(1)
    return x * (1 - 0.9**step) / (1 - 0.999**step).sqrt()


def captured_graph(function, *args):
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch.compile(function, backend=backend)(*args)
    torch._dynamo.reset()
    return graphs[0]


def materialized(graph):
    target = torch.ops.critgrad.materialize.default
    return [n for n in graph.graph.nodes if n.target is target]


def test_scalars_of_large_work_are_materialized_before_it():
    graph = captured_graph(bias_corrected, torch.ones(_compile.LARGE), torch.zeros(()))
    assert materialize_scalars(graph) >= 1
    copies = materialized(graph)
    assert copies
    for node in copies:  # each feeds, through getitem, an operation on the large tensor
        assert all(user.target.__name__ == "getitem" for user in node.users)


def test_small_work_is_left_alone():
    graph = captured_graph(bias_corrected, torch.ones(_compile.LARGE - 1), torch.zeros(()))
    assert materialize_scalars(graph) == 0
    assert not materialized(graph)


def test_the_rewritten_graph_computes_the_same_values():
    x, step_a, step_b = torch.randn(_compile.LARGE), torch.zeros(()), torch.zeros(())
    compiled = torch.compile(bias_corrected, backend=inductor_counting(lambda: None, lambda: None))
    for _ in range(3):
        expected = bias_corrected(x, step_a)
        # Inductor computes the scalar chain in float64 and fuses the multiplications: the
        # float32 result differs from eager's in the last bit or so.
        torch.testing.assert_close(compiled(x, step_b), expected, rtol=2e-6, atol=0)
    assert step_a == step_b == 3
    torch._dynamo.reset()


def test_compiled_adam_step_has_its_coefficients_materialized(monkeypatch):
    counts = []
    original = _compile.materialize_scalars

    def counting(graph):
        counts.append(original(graph))
        return counts[-1]

    monkeypatch.setattr(_compile, "materialize_scalars", counting)
    params = [torch.nn.Parameter(torch.randn(_compile.LARGE)), torch.nn.Parameter(torch.randn(8))]
    opt = critgrad.Adam(params, lr=1e-3, topC=3, foreach=True, compile=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert opt.last_step_implementation == "compiled"
    assert counts and counts[-1] >= 1
    torch._dynamo.reset()
