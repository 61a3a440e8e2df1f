"""Smoke test of benchmarks/optimizer_speed.py: it runs and writes the JSON it promises.

No timing is asserted: times only have to be positive numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimizer_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("optimizer_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_expected_json(tmp_path):
    script = load_script()
    out = tmp_path / "nested" / "speed.json"
    threads = torch.get_num_threads()
    returned = script.main(
        [
            "--quick",
            "--quiet",
            "--threads",
            "1",
            "--params",
            "3000",
            "--repeats",
            "2",
            "--steps",
            "1",
            "--train-steps",
            "1",
            "--topc",
            "2",
            "--profile-steps",
            "1",
            "--out",
            str(out),
        ]
    )
    assert torch.get_num_threads() == threads  # restored
    data = json.loads(out.read_text())
    assert data["format"] == returned["format"]
    assert not list(out.parent.glob(".*tmp"))  # the temporary file was renamed away
    for key in ("torch", "torch_threads", "cpu", "python"):
        assert key in data["machine"]
    assert data["machine"]["torch_threads"] == 1

    step = data["step"]
    assert step["grads"] == "perturbed" and step["params"] > 0
    seen = {(row["optimizer"], row["impl"]) for row in step["rows"]}
    for name in script.OPTIMIZERS:
        assert (name, "for-loop") in seen and (name, "foreach") in seen
    assert ("adam", "fused") in seen or any(s["impl"] == "fused" for s in step["skipped"])
    assert ("rmsprop", "fused") not in seen
    for row in step["rows"]:
        assert row["topC"] == 2
        for key in (
            "torch_ms",
            "critgrad_ms",
            "torch_min_ms",
            "critgrad_min_ms",
            "ratio",
            "ratio_vs_fastest",
        ):
            assert positive(row[key]), (key, row)
        assert row["torch_iqr_ms"] >= 0 and row["critgrad_iqr_ms"] >= 0
        assert len(row["critgrad_repeats_ms"]) == 2
        assert row["fastest_torch_impl"] in script.IMPLS

    train = data["train"]
    assert {row["model"] for row in train["rows"]} == set(script.TRAIN_MODELS)
    for row in train["rows"]:
        assert positive(row["torch_ms"]) and positive(row["critgrad_ms"]) and positive(row["ratio"])

    memory = data["memory"]
    assert {row["store_dtype"] for row in memory["rows"]} == {"float32", "bfloat16"}
    element = {"float32": 4, "bfloat16": 2}
    for row in memory["rows"]:
        # Exactly topC copies of every parameter in the store's dtype, one float32 running sum,
        # and a little host bookkeeping (priorities, ages, counts per tensor: 480 bytes for this
        # 3000-parameter model, 1.3 %; one more parameter-sized buffer would add 33 %).
        assert row["store_bytes"] == row["topC"] * row["params"] * element[row["store_dtype"]]
        assert row["sum_bytes"] == row["params"] * 4
        assert row["expected_bytes"] == row["store_bytes"] + row["sum_bytes"]
        assert 0 < row["bookkeeping_bytes"] < 0.05 * row["expected_bytes"]
        assert row["memory_bytes"] == row["expected_bytes"] + row["bookkeeping_bytes"]
        assert 1.0 < row["ratio"] < 1.05

    profile = data["profile"]
    assert positive(profile["critgrad_step_ms"]) and positive(profile["torch_step_ms"])
    assert profile["torch_ops"] and profile["critgrad_phases"]


def test_only_filters_sections_and_optimizers(tmp_path):
    script = load_script()
    args = script.parse_args(["--only", "step,adam", "--quick"])
    assert args.sections == ["step"] and args.optimizers == ["adam"]
    assert script.mlp_shapes(4_200_000)[0] == (1024, 2048)
    assert sum(math.prod(s) for s in script.mlp_shapes(4_200_000)) == 4_197_376
