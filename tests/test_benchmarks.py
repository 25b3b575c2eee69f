"""The accelerator benchmark runs on whatever device JAX finds (here: the CPU) and its
projections follow from its own measurements."""

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import PROJECT, optional_module


def test_accelerator_benchmark_prints_its_figures():
    proc = subprocess.run(
        [sys.executable, "benchmarks/accelerator.py", "--models", "s", "--sizes", "64",
         "--train-size", "64", "--dtypes", "float32", "--group", "2", "--steps", "1",
         "--repeats", "1", "--throughput-batch", "2"],
        cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["backend"] == "cpu"
    latency, throughput = result["inference"]
    assert latency["batch"] == 1 and latency["latency_ms"] > 0
    assert throughput["batch"] == 2 and throughput["images_per_s"] > 0
    (step,) = result["train"]
    assert step["projected_70000_steps_min"] == pytest.approx(
        step["step_ms"] * 70 / 60, rel=0.01, abs=0.1)
    (group,) = result["group"]
    assert group["models"] == 2
    assert group["projected_15_categories_min"] == pytest.approx(
        math.ceil(15 / 2) * group["step_ms"] * 70 / 60, rel=0.01, abs=0.1)


def test_inference_benchmark_puts_onnx_runtime_beside_jax_and_torch():
    optional_module("onnxruntime", "onnx")
    optional_module("torch", "convert")
    proc = subprocess.run(
        [sys.executable, "benchmarks/inference.py", "--models", "s", "--batches", "2",
         "--image-size", "64", "--repeats", "1"],
        cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (case,) = json.loads(proc.stdout)["cases"]
    assert "error" not in case, case
    for side in ("jax", "torch", "onnxruntime"):
        assert case[f"{side}_s"] > 0 and case[f"{side}_per_image_s"] == pytest.approx(case[f"{side}_s"] / 2)
    assert case["onnxruntime_over_jax"] == pytest.approx(case["onnxruntime_s"] / case["jax_s"])
    assert case["onnxruntime_over_torch"] == pytest.approx(case["onnxruntime_s"] / case["torch_s"])
