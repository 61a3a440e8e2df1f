"""``critgrad study``: listing, errors in one line with exit status 2, and a resumed real study."""

from __future__ import annotations

import shutil

import pytest
from study_toys import unit_files

from critgrad.bench.cli import main


def test_list_names_every_study(capsys):
    assert main(["study", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "ablation",
        "convex",
        "label-noise",
        "surfaces",
        "tuned",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["study"],
            "name a study (one of ablation, convex, label-noise, surfaces, tuned) or pass --list",
        ),
        (
            ["study", "nope"],
            "unknown study 'nope'; known: ablation, convex, label-noise, surfaces, tuned",
        ),
        (["study", "surfaces", "--seeds", "1,x"], "expected comma-separated integers >= 0"),
        (["study", "surfaces", "--seeds", "-1"], "expected comma-separated integers >= 0"),
        (["study", "surfaces", "--seeds", "2,2"], "seeds must be distinct"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, argv, message):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("critgrad: error:") and message in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "units").exists()


def test_command_resumes_a_finished_study_without_running_a_unit(quick_runs, tmp_path, capsys):
    source, _ = quick_runs["label-noise"]
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    (out / "summary.json").unlink()
    before = unit_files(out)
    assert main(["study", "label-noise", "--quick", "--quiet", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "0 unit(s) run, 12 already finished" in captured.err
    assert captured.out.startswith("| flipped | SGD | SGD_C | Adam | Adam_C |")
    assert unit_files(out) == before
    assert (out / "summary.json").exists() and (out / "label-noise.png").exists()
