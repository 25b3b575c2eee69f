"""The accelerator benchmark runs on whatever device JAX finds (here: the CPU) and its
projections follow from its own measurements."""

import json
import shutil
import math
import subprocess
import sys

import numpy as np
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
    # XLA's count of the program's work covers at least the two PDN-S's convolutions, counted by
    # hand at 64² (61², 27², 11², 8² outputs; teacher 384, student 768 channels out), and not
    # much more (the autoencoder and the rest are small at this size).
    pdn = 61 * 61 * 128 * 48 + 27 * 27 * 256 * 2048 + 11 * 11 * 256 * 2304  # MACs before the last layer
    convolutions = 2 * 2 * (2 * pdn + 8 * 8 * (384 + 768) * 4096) / 1e9  # batch 2, 2 flops per MAC
    assert convolutions <= case["jax_gflop"] <= 1.3 * convolutions
    assert case["jax_gflop_per_s"] == pytest.approx(case["jax_gflop"] / case["jax_s"])
    assert case["conv_gflop_per_s"] > 0
    assert case["onnxruntime_over_torch"] == pytest.approx(case["onnxruntime_s"] / case["torch_s"])
    for side in ("onnxruntime_float16", "onnxruntime_int8"):  # the reduced-precision artifacts
        assert case[f"{side}_s"] > 0 and case[f"{side}_peak_rss_mb"] > 0
        assert case[f"{side}_over_torch"] == pytest.approx(case[f"{side}_s"] / case["torch_s"])


def test_kernels_benchmark_times_each_cpu_form_against_xla():
    proc = subprocess.run([sys.executable, "benchmarks/kernels.py", "--scale", "0.125", "--repeats", "1"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    names = [case["case"] for case in result["cases"]]
    assert {"conv_grad_7x7_s2_b8", "depthwise_3x3_grad", "max_pool_forward_b1", "max_pool_grad_b8",
            "channel_mean_b8", "conv_4x4_compiler_options"} <= set(names)
    for case in result["cases"]:
        assert case["ours_ms"] > 0 and case["xla_ms"] > 0, case
        assert case["ours_over_xla"] == pytest.approx(case["ours_ms"] / case["xla_ms"], rel=0.01, abs=0.002)


def test_score_rules_rank_an_isolated_frame_pixel_below_a_defect_region():
    """benchmarks/score_rules.py's rules on two 64² maps: a lone hot pixel in the corner (1.0)
    and a 9×9 region in the middle (0.8). The plain maximum ranks the corner first; the smoothed
    maximum, the interior maximum and the top-1 % mean rank the region first; the top mean
    equals numpy's mean of the 41 largest pixels."""
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    import score_rules
    maps = np.zeros((2, 64, 64))
    maps[0, 0, 0] = 1.0
    maps[1, 28:37, 28:37] = 0.8
    scores = score_rules.rule_scores(maps)
    assert scores["max"][0] > scores["max"][1]
    for rule in ("smoothed_max_2", "smoothed_max_4", "smoothed_max_8", "interior_max", "top_mean_1"):
        assert scores[rule][1] > scores[rule][0], rule
    assert scores["top_mean_1"][1] == pytest.approx(np.sort(maps[1].ravel())[-41:].mean())
    assert scores["interior_max"][0] == 0.0


def _toy_project(tmp_path, module: str, tests: str):
    """A git checkout with ``pkg/m.py`` = ``module`` and ``tests/test_m.py`` = ``tests``."""
    project = tmp_path / "toy"
    (project / "pkg").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "tests" / "__init__.py").write_text("")
    (project / "pkg" / "m.py").write_text(module)
    (project / "tests" / "test_m.py").write_text(tests)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    return project


def test_mutation_benchmark_counts_killed_and_surviving_mutants(tmp_path):
    """On a toy project whose test checks ``add`` but never ``clip``'s boundary: mutmut's mutant
    of ``a + b`` is killed, ``x < low`` → ``x <= low`` survives (clip(0) is 0 either way) and is
    reported with its line and change; ``--report`` reads the same from mutmut's cache, also after
    an interrupted run left a mutant in the file and the original beside it as ``.bak``."""
    optional_module("mutmut", "mutation")
    project = _toy_project(
        tmp_path, "def add(a, b):\n    return a + b\n\n\ndef clip(x, low=0):\n    if x < low:\n        return low\n    return x\n",
        "from pkg.m import add, clip\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_clip():\n    assert clip(-1) == 0\n")
    command = [sys.executable, "benchmarks/mutation.py", "--project", str(project),
               "--workdir", str(tmp_path / "work"), "--target", "toy=pkg/m.py:tests/test_m.py"]
    proc = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    toy = json.loads(proc.stdout)["targets"]["toy"]
    assert (toy["tried"], toy["killed"], toy["survived"], toy["untested"]) == (3, 2, 1, 0), toy
    assert toy["kill_rate"] == pytest.approx(2 / 3, abs=1e-4)
    (survivor,) = toy["survivors"]
    assert (survivor["line"], survivor["from"], survivor["to"]) == (6, "if x < low:", "if x <= low:")
    assert (survivor["equivalent"], toy["unexplained_survivors"]) == (None, 1)
    report = subprocess.run(command + ["--report"], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert json.loads(report.stdout)["targets"]["toy"] == toy
    copied = tmp_path / "work" / "tree" / "pkg" / "m.py"
    copied.rename(copied.with_name("m.py.bak"))
    copied.write_text(copied.with_name("m.py.bak").read_text().replace("x < low", "x <= low"))
    interrupted = subprocess.run(command + ["--report"], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert interrupted.returncode == 0, interrupted.stderr[-2000:]
    assert json.loads(interrupted.stdout)["targets"]["toy"] == toy
    reasons = tmp_path / "equivalent.json"
    reasons.write_text(json.dumps([{"path": "pkg/m.py", "from": "if x < low:", "to": "if x <= low:",
                                    "reason": "clip(low) is low either way"}]))
    record = tmp_path / "record.json"
    explained = subprocess.run(command + ["--equivalent", str(reasons), "--record", str(record)],
                               cwd=PROJECT, capture_output=True, text=True, timeout=600)
    toy = json.loads(explained.stdout)["targets"]["toy"]
    assert (toy["equivalent"], toy["unexplained_survivors"]) == (1, 0)
    assert toy["survivors"][0]["equivalent"] == "clip(low) is low either way"
    assert json.loads(record.read_text())["targets"]["toy"] == toy
    # recorded and unchanged: not run again, the record is printed even without mutmut's cache
    shutil.rmtree(tmp_path / "work")
    again = subprocess.run(command + ["--equivalent", str(reasons), "--record", str(record)],
                           cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout)["targets"]["toy"] == toy
    (project / "tests" / "test_m.py").write_text(
        (project / "tests" / "test_m.py").read_text() + "\n\ndef test_clip_at_low():\n    assert clip(0) == 0\n")
    changed = subprocess.run(command + ["--record", str(record)], cwd=PROJECT, capture_output=True,
                             text=True, timeout=600)  # the tests changed: run again
    assert json.loads(changed.stdout)["targets"]["toy"]["sources_sha256"] != toy["sources_sha256"]
    unknown = subprocess.run(command + ["--only", "nope"], cwd=PROJECT, capture_output=True, text=True)
    assert unknown.returncode != 0 and unknown.stderr.strip().splitlines() == [
        "mutation: --only: unknown target(s) nope; known: toy"]


def test_mutation_cache_carries_verdicts_to_a_fresh_workdir(tmp_path):
    """Verdicts exported with ``--cache`` seed a fresh workdir: after a line is inserted above
    the mutated code, only the new line's mutants are run (each test run appends to a log); the
    two killed mutants of the shifted lines keep their verdict."""
    optional_module("mutmut", "mutation")
    source = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    log = tmp_path / "runs.log"
    project = _toy_project(
        tmp_path, source, f"from pkg.m import *\n\n\ndef test_all():\n    open({str(log)!r}, 'a').write('run\\n')\n"
        "    assert add(2, 3) == 5 and sub(2, 3) == -1\n")
    cache = tmp_path / "cache.json"

    def run(workdir):
        proc = subprocess.run([sys.executable, "benchmarks/mutation.py", "--project", str(project),
                               "--workdir", str(tmp_path / workdir), "--cache", str(cache),
                               "--target", "toy=pkg/m.py:tests/test_m.py"],
                              cwd=PROJECT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)["targets"]["toy"]

    first = run("a")
    assert (first["tried"], first["killed"]) == (2, 2)
    assert json.loads(cache.read_text())["files"]["pkg/m.py"]["mutants"]
    (project / "pkg" / "m.py").write_text("SCALE = 1\n\n\n" + source)  # new, unused: 2 survivors
    log.write_text("")
    second = run("b")
    assert (second["tried"], second["killed"], second["survived"], second["untested"]) == (4, 2, 2, 0)
    # mutmut's baseline run and the two new mutants; the two old verdicts came from the cache
    assert log.read_text().count("run") == 3


def test_a_mutant_that_cannot_be_imported_is_killed(tmp_path):
    """mutmut turns ``(0, *t)`` into ``(0, /t)``, a syntax error: pytest exits 2 (collection
    error), which mutmut 2 alone would count as the tests passing; the runner makes it a kill."""
    optional_module("mutmut", "mutation")
    project = _toy_project(
        tmp_path, "def prepend_zero(t):\n    return (0, *t)\n",
        "from pkg.m import prepend_zero\n\n\ndef test_prepend_zero():\n    assert prepend_zero((1,)) == (0, 1)\n")
    proc = subprocess.run([sys.executable, "benchmarks/mutation.py", "--project", str(project),
                           "--workdir", str(tmp_path / "work"), "--target", "toy=pkg/m.py:tests/test_m.py"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    toy = json.loads(proc.stdout)["targets"]["toy"]
    assert (toy["tried"], toy["killed"], toy["survived"]) == (2, 2, 0), toy
