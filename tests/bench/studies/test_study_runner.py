"""The study contract and runner: stable unit ids, files written, resume that never reruns a
finished unit (after an interruption and after SIGKILL), broken unit files run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from study_toys import load, ran, toy_study, unit_files

from critgrad.bench.studies import catalog
from critgrad.bench.studies.contract import Options, Study, Unit, UnknownStudy, register
from critgrad.bench.studies.runner import run_study

HERE = Path(__file__).parent
REPO = HERE.parents[2]


def quiet(_message: str) -> None:
    pass


# ---- units and options ----------------------------------------------------------------------


def test_unit_id_is_pinned_and_independent_of_key_order():
    # A change of the hashing would orphan every stored unit: the id is pinned.
    assert Unit("demo", "a-b", {"x": 1, "y": [1, 2.5], "z": None}).id == "a-b-6ea5bae946"
    assert Unit("demo", "a-b", {"z": None, "y": [1, 2.5], "x": 1}).id == "a-b-6ea5bae946"


@pytest.mark.parametrize(
    "other",
    [
        Unit("demo", "a-b", {"x": 2, "y": [1, 2.5], "z": None}),  # another configuration
        Unit("other", "a-b", {"x": 1, "y": [1, 2.5], "z": None}),  # another study
        Unit("demo", "a-b", {"x": 1.5, "y": [1, 2.5], "z": None}),
    ],
)
def test_unit_id_changes_with_study_and_config(other):
    assert other.id != "a-b-6ea5bae946"


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("Bad Name", {}, "must be lowercase"),
        ("ok", {"x": float("nan")}, "Out of range float"),
        ("ok", {"x": {1, 2}}, "not JSON serializable"),
    ],
)
def test_unit_refuses_bad_names_and_configs(name, config, message):
    with pytest.raises(ValueError, match=message):
        Unit("demo", name, config)


@pytest.mark.parametrize(
    "seeds, message",
    [((), "at least one"), ((1, 1), "distinct"), ((-1,), ">= 0"), ((1.5,), ">= 0")],
)
def test_options_refuse_bad_seeds(seeds, message):
    with pytest.raises(ValueError, match=message):
        Options(seeds=seeds)


def test_plan_with_duplicate_units_is_refused(tmp_path):
    study = toy_study(tmp_path / "log")
    twice = Study(
        "toy", "", (0,), lambda o: study.plan(o) * 2, study.run_unit, study.summarize, study.figures
    )
    with pytest.raises(ValueError, match="same unit twice"):
        twice.units(Options())


def test_catalog_lists_the_studies_and_names_unknown_ones():
    assert [s.name for s in catalog.list_studies()] == [
        "ablation",
        "aggregation",
        "controls",
        "convex",
        "label-noise",
        "sensitivity",
        "surfaces",
        "tuned",
    ]
    with pytest.raises(UnknownStudy, match="unknown study 'nope'; known: ablation, aggregation"):
        catalog.get_study("nope")


def test_register_wants_the_function_named_after_the_study(tmp_path):
    study = toy_study(tmp_path / "log")

    def not_toy() -> Study:
        return study

    with pytest.raises(ValueError, match="name the function after the study"):
        register(not_toy)


# ---- running and resuming -------------------------------------------------------------------


def test_run_writes_units_summary_table_and_figures(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    outcome = run_study(
        toy_study(log), Options(seeds=(0, 3)), out, progress=False, log=quiet, command="x"
    )
    assert ran(log) == ["a0", "a1", "a2", "a3", "a4", "seed3"]
    assert (outcome.ran, outcome.skipped) == (6, 0)
    assert len(unit_files(out)) == 6
    stored = load(out / "units" / f"{Unit('toy', 'a2', {'value': 2, 'name': 'a2'}).id}.json")
    assert stored["config"] == {"value": 2, "name": "a2"}
    assert stored["result"] == {"square": 4}
    assert stored["study"] == "toy" and stored["format"] == 1 and stored["seconds"] >= 0
    summary = load(out / "summary.json")
    assert summary["summary"] == {
        "total": 0 + 1 + 4 + 9 + 16 + 25,
        "units": ["a0", "a1", "a2", "a3", "a4", "seed3"],
    }
    assert summary["options"] == {"quick": False, "seeds": [0, 3]}
    assert summary["units"] == 6 and summary["figures"] == ["toy.png"]
    assert summary["command"] == "x" and summary["machine"]["torch"]
    assert (out / "table.md").read_text() == "| units | total |\n|---|---|\n| 6 | 55 |\n"
    plan = load(out / "study.json")
    assert plan["study"] == "toy" and len(plan["units"]) == 6


def test_interrupted_study_resumes_without_rerunning_finished_units(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_study(toy_study(log, stop_at="a3"), Options(), out, progress=False, log=quiet)
    assert ran(log) == ["a0", "a1", "a2"]
    before = unit_files(out)
    assert len(before) == 3
    assert not (out / "summary.json").exists()
    outcome = run_study(toy_study(log), Options(), out, progress=False, log=quiet)
    assert ran(log) == ["a0", "a1", "a2", "a3", "a4"]  # a0..a2 not again
    assert (outcome.ran, outcome.skipped) == (2, 3)
    after = unit_files(out)
    assert {name: after[name] for name in before} == before  # finished files untouched
    assert load(out / "summary.json")["summary"]["total"] == 30
    # A third start finds everything finished and runs nothing.
    again = run_study(toy_study(log), Options(), out, progress=False, log=quiet)
    assert (again.ran, again.skipped) == (0, 5)
    assert len(ran(log)) == 5


@pytest.mark.timeout(120)
def test_killed_process_resumes_without_rerunning_finished_units(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path[:0] = [{str(HERE)!r}, {str(REPO)!r}]
        from study_toys import toy_study
        from critgrad.bench.studies.contract import Options
        from critgrad.bench.studies.runner import run_study
        run_study(toy_study(Path({str(log)!r}), stop_at="a2", how="kill"), Options(),
                  Path({str(out)!r}), progress=False)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=110)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    assert ran(log) == ["a0", "a1"]
    before = unit_files(out)
    assert len(before) == 2
    outcome = run_study(toy_study(log), Options(), out, progress=False, log=quiet)
    assert ran(log) == ["a0", "a1", "a2", "a3", "a4"]
    assert (outcome.ran, outcome.skipped) == (3, 2)
    assert {name: unit_files(out)[name] for name in before} == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text[: len(text) // 2], "unreadable"),
        (
            lambda text: text.replace('"square": 1', '"square": 7').replace(
                '"value": 1', '"value": 9'
            ),
            "not this unit's result",
        ),
    ],
)
def test_broken_unit_file_is_reported_and_run_again(tmp_path, damage, message):
    log, out = tmp_path / "log", tmp_path / "out"
    run_study(toy_study(log), Options(), out, progress=False, log=quiet)
    path = out / "units" / f"{Unit('toy', 'a1', {'value': 1, 'name': 'a1'}).id}.json"
    path.write_text(damage(path.read_text()))
    messages = []
    outcome = run_study(toy_study(log), Options(), out, progress=False, log=messages.append)
    assert outcome.ran == 1 and ran(log)[-1] == "a1"
    assert any(message in m for m in messages)
    assert json.loads(path.read_text())["result"] == {"square": 1}


def test_units_of_another_plan_in_the_folder_are_ignored(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    run_study(toy_study(log), Options(seeds=(0, 1, 2)), out, progress=False, log=quiet)
    outcome = run_study(toy_study(log), Options(seeds=(0,)), out, progress=False, log=quiet)
    assert outcome.ran == 0
    assert load(out / "summary.json")["summary"]["units"] == ["a0", "a1", "a2", "a3", "a4"]


@pytest.mark.parametrize("name", [s.name for s in catalog.list_studies()])
def test_every_registered_study_runs_its_quick_size(quick_runs, name):
    # A study added to the catalog is run here even before it has tests of its own.
    out, outcome = quick_runs[name]
    assert (out / "summary.json").is_file() and (out / "table.md").read_text().strip()
    assert json.loads((out / "summary.json").read_text())
    assert outcome.summary.table.strip() and list(out.glob("*.png"))
