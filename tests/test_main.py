"""The main job end to end with tiny configs: checkpoints, resume, results, clear errors."""

import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from kdad_jax import main as kdad_main
from tests.conftest import PROJECT
from tests.test_efficientad import efficientad_config

RESULT_KEYS = {"method", "dataset", "categories", "teacher", "image_size", "train_steps", "image_auroc",
               "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max", "seconds", "per_category"}


def _run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "kdad_jax.main", *args], cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout)


def test_train_resume_and_eval(tiny_tree, tmp_path):
    workdir = str(tmp_path / "run")
    config = efficientad_config.get_config("smoke")
    config.data.root = tiny_tree
    config.train.lr_drop_fraction = 1.0  # one learning rate: 3 steps + 2 resumed = 5 straight
    results = kdad_main.run(config, workdir)
    assert RESULT_KEYS <= set(results)
    assert results["teacher"] == "random-init" and results["categories"] == ["widget"]
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["per_category"]["widget"]["train_steps"] == 3
    environment = on_disk["environment"]  # what a figure can be traced to
    for package in ("jax", "jaxlib", "numpy", "Pillow", "scikit-image", "grain"):
        assert environment["versions"][package] == importlib.metadata.version(package)
    assert environment["device_kind"] == jax.devices()[0].device_kind and environment["cpu"]
    assert set(os.listdir(os.path.join(workdir, "checkpoints", "widget"))) >= {"3"}
    assert os.listdir(os.path.join(workdir, "heatmaps", "widget"))
    _check_tables_and_plots(workdir, on_disk)
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in logged] == [1, 2, 3]
    _check_tensorboard_events(os.path.join(workdir, "tensorboard"), [r["loss"] for r in logged],
                              results["per_category"]["widget"]["image_auroc"])

    # A rerun with more steps resumes from step 3 instead of starting over.
    config.train.steps = 5
    results = kdad_main.run(config, workdir)
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    assert results["per_category"]["widget"]["train_steps"] == 5
    # ... and carries on exactly: params and optimizer state (Adam's moments, its step count)
    # equal those of 5 steps straight through.
    kdad_main.run(config, str(tmp_path / "straight"))
    resumed, straight = _saved_state(config, workdir), _saved_state(config, str(tmp_path / "straight"))
    assert int(resumed.step) == int(straight.step) == 5
    for name in ("params", "opt_state"):
        leaves = jax.tree_util.tree_leaves_with_path(getattr(straight, name))
        assert leaves, name
        for (path, want), got in zip(leaves, jax.tree_util.tree_leaves(getattr(resumed, name))):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{name}{path}")

    # Eval-only reproduces the final numbers from the checkpoint.
    again = kdad_main.run(config, workdir, mode="eval")
    assert again["image_auroc"] == pytest.approx(results["image_auroc"])
    assert again["pixel_auroc"] == pytest.approx(results["pixel_auroc"], abs=1e-6)


def _saved_state(config, workdir):
    """The newest train state saved in ``workdir`` for the category ``widget``."""
    from kdad_jax.training import train
    from kdad_jax.methods import get_method
    method = get_method(config)
    mesh, frozen, _, rng, mngr = train._open_category(config, workdir, "widget", method)
    state, _ = train.restore(mngr, method, train.make_optimizer(config), frozen, rng, mesh)
    return state


def _check_tables_and_plots(workdir, results):
    """results.csv holds results.json's numbers; results.md the same in %; one curve PNG per category."""
    import csv

    from PIL import Image
    rows = {r["category"]: r for r in csv.DictReader(open(os.path.join(workdir, "results.csv")))}
    assert set(rows) == {"widget", "mean"}
    for key in ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max"):
        assert float(rows["widget"][key]) == pytest.approx(results["per_category"]["widget"][key], abs=1e-6)
        assert float(rows["mean"][key]) == pytest.approx(results[key], abs=1e-6)
    markdown = open(os.path.join(workdir, "results.md")).read()
    assert f"| widget | {100 * results['image_auroc']:.1f} |" in markdown
    assert "## Image AUROC per defect type" in markdown and "| widget | square |" in markdown
    plot = Image.open(os.path.join(workdir, "plots", "widget.png"))
    assert plot.size == (1200, 400) and np.asarray(plot).std() > 10  # three drawn panels


def _check_tensorboard_events(folder, losses, image_auroc):
    """TensorBoard's own reader loads the event files: losses per step, then the eval metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder)
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"widget/loss", "widget/learning_rate", "widget/eval/image_auroc", "widget/eval/au_pro"} <= set(scalars)
    loss = events.Scalars("widget/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx(losses, rel=1e-6)
    assert events.Scalars("widget/eval/image_auroc")[-1].value == pytest.approx(image_auroc, rel=1e-6)


def test_bad_root_is_one_clear_line(tmp_path):
    proc = _run_cli("--config=configs/efficientad.py:smoke", f"--workdir={tmp_path}",
                    "--config.data.root=/nonexistent")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "error: /nonexistent: dataset root not found"
    assert "Traceback" not in proc.stderr


def test_unknown_config_key_is_rejected(tmp_path):
    proc = _run_cli("--config=configs/efficientad.py:smoke", f"--workdir={tmp_path}",
                    "--config.train.stepz=3")
    assert proc.returncode != 0
    assert "stepz" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_category_is_one_clear_line(tiny_tree, tmp_path):
    proc = _run_cli("--config=configs/efficientad.py:smoke", f"--workdir={tmp_path}",
                    f"--config.data.root={tiny_tree}", "--config.data.category=gizmo")
    assert proc.returncode == 2
    assert "gizmo: category not found (available: widget)" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["efficientad.py", "efficientad.py:m", "stfpm.py", "eca_mskdad.py",
                                  "students.py", "dskd.py", "mixed.py", "efficientad_teacher.py",
                                  "students_teacher.py"])
def test_every_config_key_has_help(name):
    from kdad_jax import config_files
    from kdad_jax.report import describe
    path, _, arg = name.partition(":")
    config_path = str(PROJECT / "configs" / path)
    module = config_files.load(config_path)
    lines = describe.describe(module.get_config(arg) if arg else module.get_config(), config_path)
    bare = [line for line in lines.splitlines()[1:] if "  # " not in line]
    assert not bare, f"keys without help in {name}: {bare}"


def test_help_follows_the_files_a_config_builds_on_and_its_own_wins(tmp_path):
    """a.py builds on b.py, b.py names a.py back: each is read once, a's comment wins."""
    from kdad_jax.report import describe
    (tmp_path / "a.py").write_text('BASE = "b"\n    c.x = 1  # from a\n')
    (tmp_path / "b.py").write_text('BACK = "a"\n    c.x = 2  # from b\n    c.y = 2  # b only\n')
    (tmp_path / "c.py").write_text('    c.z = 3  # not named by a or b\n')
    assert describe.help_from_sources(str(tmp_path / "a.py")) == {"x": "from a", "y": "b only"}


def test_describe_prints_every_key_with_its_help():
    proc = _run_cli("--config=configs/eca_mskdad.py:demo", "--mode=describe")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    from kdad_jax import config_files
    config = config_files.load(str(PROJECT / "configs" / "eca_mskdad.py")).get_config("demo")
    keys = {line.split(" = ")[0] for line in lines[1:]}
    assert {"train.batch_size", "student.eca", "loss.cosine_weight", "data.root"} <= keys
    assert len(keys) == len(lines) - 1 and "image_size" in keys and "image_size" in config
    assert any(l.startswith("student.eca = True") and "# ECA blocks" in l for l in lines)  # from stfpm.py
    assert any(l.startswith("loss.cosine_weight = 1.0") and "# λ (ours" in l for l in lines)  # own file
