"""Optional logging sinks: TensorBoard event files, W&B offline, configuration checks."""

from __future__ import annotations

import pytest

from critgrad.bench import runner, sinks
from critgrad.bench.record_format import RunSpec


def test_tensorboard_sink_writes_event_files(tmp_path, mnist_dir, tiny_overrides):
    pytest.importorskip("tensorboard")
    spec = RunSpec("mnist-logreg", "sgd_c", {"lr": 0.1}, 0, overrides=tiny_overrides)
    runner.run(
        spec,
        data_dir=str(mnist_dir),
        sink_config={"tensorboard": True, "dir": str(tmp_path / "logs")},
    )
    events = list((tmp_path / "logs" / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert spec.run_id() in str(events[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"valid/metric", "train/loss", "memory/admitted_fraction"} <= set(tags)
    assert [e.step for e in accumulator.Scalars("valid/metric")] == [0, 4, 8]


def test_wandb_sink_offline_or_a_clear_error(tmp_path, mnist_dir, tiny_overrides):
    spec = RunSpec("mnist-logreg", "sgd", {"lr": 0.1}, 0, overrides=tiny_overrides)
    config = {"wandb": True, "dir": str(tmp_path / "logs")}
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install wandb"):
            sinks.open_sinks(config, spec)
        return
    runner.run(spec, data_dir=str(mnist_dir), sink_config=config)
    assert list((tmp_path / "logs").rglob("offline-run-*"))


@pytest.mark.parametrize(
    "config, expected", [(None, []), ({}, []), ({"tensorboard": False, "wandb": False}, [])]
)
def test_no_sinks_by_default(config, expected):
    assert sinks.open_sinks(config, RunSpec("p", "sgd", {}, 0)) == expected


def test_unknown_sink_setting_is_an_error():
    with pytest.raises(ValueError, match=r"unknown sink settings \['tensorbord'\]"):
        sinks.check_config({"tensorbord": True})
