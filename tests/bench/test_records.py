"""Records on disk: stable names, atomic writes, round trips, broken files reported."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest

from critgrad.bench import record_format, records
from critgrad.bench.record_format import RunSpec

SPEC = RunSpec("mnist-mlp", "adam_c", {"lr": 1e-3, "topC": 10}, seed=3, overrides={"epochs": 1})


POINT = {
    "epoch": 0.0,
    "step": 0,
    "train_seconds": 0.0,
    "train_loss": None,
    "valid_loss": 2.3,
    "valid_metric": 0.1,
    "test_loss": 2.3,
    "test_metric": 0.1,
    "memory": None,
}


def minimal_record(spec: RunSpec = SPEC, **extra) -> dict:
    """The fields every record has that selection, the report and the plots read."""
    return {
        "format": record_format.RECORD_FORMAT,
        "key": spec.run_id(),
        "spec": spec.to_dict(),
        "metric": "accuracy",
        "higher_is_better": True,
        "history": [dict(POINT)],
        "final": {**{k: POINT[k] for k in record_format.FINAL_FIELDS}, "test_metric": 0.5},
        "diverged": False,
        "steps": 0,
        "wall_seconds": 1.0,
        "train_seconds": 0.5,
        "optimizer_seconds": 0.1,
        **extra,
    }


@pytest.mark.parametrize(
    "other, same",
    [
        (
            RunSpec("mnist-mlp", "adam_c", {"topC": 10, "lr": 1e-3}, 3, overrides={"epochs": 1}),
            True,
        ),
        (
            RunSpec("mnist-mlp", "adam_c", {"lr": 1e-3, "topC": 10}, 4, overrides={"epochs": 1}),
            False,
        ),
        (
            RunSpec("mnist-mlp", "adam_c", {"lr": 1e-3, "topC": 5}, 3, overrides={"epochs": 1}),
            False,
        ),
        (RunSpec("mnist-mlp", "adam", {"lr": 1e-3, "topC": 10}, 3, overrides={"epochs": 1}), False),
        (
            RunSpec(
                "mnist-mlp",
                "adam_c",
                {"lr": 1e-3, "topC": 10},
                3,
                size="full",
                overrides={"epochs": 1},
            ),
            False,
        ),
        (RunSpec("mnist-mlp", "adam_c", {"lr": 1e-3, "topC": 10}, 3), False),
        (
            RunSpec(
                "mnist-mlp",
                "adam_c",
                {"lr": 1e-3, "topC": 10},
                3,
                overrides={"epochs": 1},
                evals_per_epoch=2,
            ),
            False,
        ),
    ],
)
def test_key_depends_on_every_field_but_not_on_dict_order(other, same):
    assert (other.run_id() == SPEC.run_id()) is same
    assert len(SPEC.run_id()) == 16 and SPEC.file_name().startswith("mnist-mlp__adam_c__")


def test_key_is_stable_across_versions_of_this_code():
    # A changed key would make every existing sweep rerun: change RECORD_FORMAT on purpose only.
    canonical = (
        '{"evals_per_epoch":1,"format":1,"hyperparameters":{"lr":0.1},"optimizer":"sgd",'
        '"overrides":{},"problem":"p","seed":0,"size":"cpu"}'
    )
    assert hashlib.sha256(canonical.encode()).hexdigest()[:16] == "7e547e31a6de499c"
    assert RunSpec("p", "sgd", {"lr": 0.1}, 0).run_id() == "7e547e31a6de499c"


def test_spec_round_trips_through_dict():
    assert RunSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))) == SPEC


def test_record_round_trip_with_non_finite_numbers_as_null(tmp_path):
    record = minimal_record(loss=math.nan, curve=[1.0, math.inf, {"x": -math.inf}])
    path = records.write_record(tmp_path, record)
    assert path.name == SPEC.file_name()
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = records.load_record(path)
    assert back["loss"] is None and back["curve"] == [1.0, None, {"x": None}]
    assert records.finished(tmp_path, SPEC) == (True, None)
    assert records.read_records(tmp_path) == ([back], [])


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.json"
    records.atomic_write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        records.atomic_write_json(path, {"new": object()})  # not serialisable, mid-write
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"format": 1, "spec": ', "Expecting value"),  # killed mid-write by something else
        ("[]", "not a format-1 run record"),
        ('{"format": 99}', "not a format-1 run record"),
        ('{"format": 1, "spec": {"problem": "p"}, "history": [], "final": {}}', "missing or bad"),
        ("\udcff", ""),
        ("[" * 100_000, "maximum recursion depth"),
        # Records that parse but lack a field the report reads, or hold the wrong kind of value.
        *(
            (json.dumps({**minimal_record(), **change}), reason)
            for change, reason in (
                ({"higher_is_better": None}, "field 'higher_is_better' should be true or false"),
                ({"metric": 3}, "field 'metric' should be a string"),
                ({"history": []}, "field 'history' should be a non-empty list"),
                ({"final": {"test_metric": 0.5}}, "missing field 'final.train_loss'"),
                (
                    {"final": {**dict.fromkeys(record_format.FINAL_FIELDS), "valid_metric": "x"}},
                    "final.valid_metric",
                ),
                ({"history": [{"step": 0}]}, "missing field 'history[0].epoch'"),
                ({"history": [{**POINT, "step": "0"}]}, "'history[0].step' should be an integer"),
                ({"history": [5]}, "'history[0]' should be a table"),
                ({"steps": -1}, "field 'steps' should be a count"),
                ({"diverged": "no"}, "field 'diverged' should be true or false"),
                ({"spec": {**SPEC.to_dict(), "seed": "x"}}, "missing or bad field spec"),
                ({"spec": {**SPEC.to_dict(), "problem": 5}}, "problem should be a string"),
            )
        ),
        *(
            (json.dumps({k: v for k, v in minimal_record().items() if k != key}), f"'{key}'")
            for key in record_format.RECORD_FIELDS
        ),
    ],
)
def test_broken_records_are_reported_not_fatal(tmp_path, content, reason):
    good = records.write_record(tmp_path, minimal_record())
    bad = tmp_path / SPEC.file_name().replace(SPEC.run_id(), "0" * 16)
    bad.write_bytes(content.encode("utf-8", "surrogateescape"))
    found, broken = records.read_records(tmp_path)
    assert [r["key"] for r in found] == [SPEC.run_id()] and good.exists()
    assert len(broken) == 1 and str(bad) in broken[0] and reason in broken[0]
    assert "\n" not in broken[0]


def test_a_record_under_the_wrong_name_is_broken(tmp_path):
    (tmp_path / "x__y__0123456789abcdef.json").write_text(json.dumps(minimal_record()))
    _, broken = records.read_records(tmp_path)
    assert "does not match its spec" in broken[0]


def test_finished_reports_a_broken_record(tmp_path):
    records.record_path(tmp_path, SPEC).write_text("{")
    done, message = records.finished(tmp_path, SPEC)
    assert not done and SPEC.file_name() in message


def test_manifest_is_not_a_record(tmp_path):
    (tmp_path / records.MANIFEST_NAME).write_text("{}")
    assert records.read_records(tmp_path) == ([], [])
