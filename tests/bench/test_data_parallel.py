"""The harness under torchrun: each run trains data-parallel over the processes, and rank 0 alone
writes its one record, equal to what one process writes up to rounding."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from benchtools import TINY_OVERRIDES

from critgrad.bench import cli, data_parallel, runner

OPTIMIZERS = "adam_c,sgdm_c"  # two runs: the other process follows rank 0 from one to the next
# 100 rows in batches of 25: each batch splits 13 / 12, so the parts' weights differ.
ARGS = ["run", "mnist-mlp", "--optimizers", OPTIMIZERS, "--seeds", "3", "--no-report", "--quiet"]
ARGS += [f"--override={key}={value}" for key, value in TINY_OVERRIDES.items()]


def run_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.name != "sweep.json")


def close(a, b, rel: float, path: str = "") -> list[str]:
    """Where two records differ: floats beyond ``rel``, anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [m for k in a for m in close(a[k], b[k], rel, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in close(x, y, rel, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=rel, abs_tol=rel) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.slow  # torchrun starts two processes that import torch: 10-30 s on two busy cores
@pytest.mark.timeout(240)
def test_torchrun_writes_one_record_per_run_equal_to_one_process(tmp_path, mnist_dir, capsys):
    alone, together = tmp_path / "alone", tmp_path / "together"
    data = f"--data-dir={mnist_dir}"
    threads = torch.get_num_threads()
    try:  # as the torchrun processes (OMP_NUM_THREADS=1)
        assert cli.main([*ARGS, f"--out={alone}", data, "--workers=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    # --standalone: torchrun's rendezvous binds a free port of its own choosing (no race).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    finished = subprocess.run(
        [*command, "-m", "critgrad.bench.cli", *ARGS, f"--out={together}", data],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Rank 0 alone speaks: one summary line.
    assert finished.stderr.count("run(s) done") == 1, finished.stderr[-3000:]

    expected = {p.name: json.loads(p.read_text()) for p in run_files(alone)}
    written = {p.name: json.loads(p.read_text()) for p in run_files(together)}
    assert len(expected) == 2 and written.keys() == expected.keys()
    for name, record in written.items():
        assert record["machine"]["processes"] == 2 and "processes" not in expected[name]["machine"]
        # Float32 training: each gradient is the sum of two weighted parts instead of one mean,
        # another order of rounding (6e-8 relative per operation). After 8 steps the losses and
        # priorities differ by at most 1e-7 relative here; 1e-5 leaves a margin of 100x, far below
        # what training on half of each batch moves them (1e-2). Step counts, memory counts,
        # accuracies and divergence are equal.
        differences = close(
            runner.without_timings(record), runner.without_timings(expected[name]), 1e-5
        )
        assert differences == [], name
        assert not record["diverged"] and record["steps"] == 8


def test_the_parts_of_a_batch_weigh_its_rows(monkeypatch):
    x = torch.randn(25, 3, dtype=torch.float64)
    y = torch.randn(25, dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    task = SimpleNamespace(
        model=model, loss=lambda m, b: torch.nn.functional.mse_loss(m(b[0]).squeeze(1), b[1])
    )
    parts = []
    for rank in range(2):
        monkeypatch.setattr(data_parallel, "world", lambda rank=rank: (rank, 2))
        (xs, ys), fraction = data_parallel.share((x, y))
        rows = slice(0, 13) if rank == 0 else slice(13, 25)  # contiguous
        assert torch.equal(xs, x[rows]) and torch.equal(ys, y[rows])
        parts.append((len(xs), fraction, data_parallel.loss(task, (x, y))))
    assert [(n, f) for n, f, _ in parts] == [(13, 13 / 25), (12, 12 / 25)]
    # The parts add up to the batch's mean loss (float64: up to rounding).
    total = parts[0][2] + parts[1][2]
    torch.testing.assert_close(total, task.loss(model, (x, y)), rtol=1e-14, atol=0)
    # More processes than rows: the extra ones add nothing, and still take part.
    monkeypatch.setattr(data_parallel, "world", lambda: (3, 4))
    nothing = data_parallel.loss(task, (x[:3], y[:3]))
    assert nothing.item() == 0 and nothing.requires_grad


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"x": torch.zeros(2)}, "batches are dict: run it as one process"),
        ((torch.zeros(4), torch.zeros(3)), "different numbers of rows: [3, 4]"),
    ],
)
def test_batches_that_cannot_be_split_are_refused(monkeypatch, batch, message):
    monkeypatch.setattr(data_parallel, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        data_parallel.share(batch)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["main"], "critgrad main does not run under torchrun (2 processes); under torchrun: run"),
        (
            ["run", "mnist-mlp", "--optimizers", "sgd", "--workers", "2"],
            "--workers 2: under torchrun each run trains data-parallel over the 2 processes",
        ),
        (["sweep", "x.toml", "--executor", "submitit"], "--executor submitit: under torchrun"),
    ],
)
def test_what_torchrun_cannot_do_is_refused_in_one_line(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(data_parallel, "world", lambda: (0, 2))
    assert cli._main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
