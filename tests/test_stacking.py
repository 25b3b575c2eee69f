"""Many models in one program: categories trained together (stacked, vmapped, split over the
``model`` mesh axis) give what each gives trained alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kdad_jax import main as kdad_main
from tests.conftest import PROJECT, build_tree

sys.path.insert(0, str(PROJECT / "configs"))
import efficientad as efficientad_config  # noqa: E402  (configs/ is data, not a package)

METRICS = ("image_auroc", "pixel_auroc", "au_pro")


def _tree(root):
    # Different image counts (7 and 9 training images): the device-resident sets are padded.
    build_tree(root, "widget", n_train=7, seed=0)
    build_tree(root, "gadget", n_train=9, seed=1)
    return str(root)


def _config(root, together, device_data_mb=2048):
    config = efficientad_config.get_config("smoke")
    config.data.root, config.train.steps = root, 4
    config.train.parallel_categories, config.data.device_data_mb = together, device_data_mb
    config.train.checkpoint_every = 2
    return config


def _logged(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {(r["category"], r["step"]): r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("device_data_mb", [2048, 0])
def test_categories_trained_together_equal_each_trained_alone(tmp_path, capsys, device_data_mb):
    root = _tree(tmp_path / "data")
    alone = kdad_main.run(_config(root, 1, device_data_mb), str(tmp_path / "alone"))
    capsys.readouterr()
    together = kdad_main.run(_config(root, 2, device_data_mb), str(tmp_path / "together"))
    out, err = capsys.readouterr()
    assert "2 models" in err and "one at a time" not in out  # the stacked loop ran
    assert together["categories"] == alone["categories"] == ["gadget", "widget"]
    for name in ("gadget", "widget"):
        got, expected = together["per_category"][name], alone["per_category"][name]
        assert got["train_steps"] == expected["train_steps"] == 4
        assert got["trained_with"] == [n for n in ("gadget", "widget") if n != name]
        for key in METRICS:
            assert got[key] == pytest.approx(expected[key], abs=1e-4), (name, key)
        assert got["thresholds"]["image_threshold"] == pytest.approx(
            expected["thresholds"]["image_threshold"], rel=1e-3)
    # Every step's loss of every category, and the checkpoints, as when trained alone.
    logged_alone, logged_together = _logged(tmp_path / "alone"), _logged(tmp_path / "together")
    assert set(logged_together) == set(logged_alone) and len(logged_alone) == 8
    for key, loss in logged_alone.items():
        assert logged_together[key] == pytest.approx(loss, rel=1e-4), key
    for name in ("gadget", "widget"):
        steps = sorted(int(s) for s in os.listdir(tmp_path / "together" / "checkpoints" / name)
                       if s.isdigit())
        assert steps == [2, 4]


def test_a_group_split_over_two_devices_equals_one_device(tmp_path):
    """Two forced host devices, batch 1 (which one model could not split over them): the two
    models go one per device (the ``model`` axis)."""
    root = _tree(tmp_path / "data")
    code = f"""
import json, sys
sys.path.insert(0, {str(PROJECT / 'configs')!r})
import jax, efficientad
from kdad_jax import main
from kdad_jax.training import stacking
assert jax.device_count() == 2 and stacking.group_mesh(2).shape["model"] == 2
c = efficientad.get_config("smoke")
c.data.root, c.train.steps, c.train.parallel_categories = {root!r}, 4, 2
c.train.batch_size = 1  # the paper's batch: one model per device, not split
r = main.run(c, sys.argv[1])
print(json.dumps({{n: r["per_category"][n]["image_auroc"] for n in ("gadget", "widget")}}))
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "two")], cwd=PROJECT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    config = _config(root, 2)
    config.train.batch_size = 1
    one = kdad_main.run(config, str(tmp_path / "one"))
    for name, value in two.items():
        assert value == pytest.approx(one["per_category"][name]["image_auroc"], abs=1e-4)
    logged_two, logged_one = _logged(tmp_path / "two"), _logged(tmp_path / "one")
    assert set(logged_two) == set(logged_one)
    for key, loss in logged_one.items():
        assert logged_two[key] == pytest.approx(loss, rel=1e-4), key


def test_a_group_resumes_from_its_checkpoints(tmp_path):
    """Interrupted after step 2 (a shorter run), a group resumes together; the final losses
    equal an uninterrupted group's."""
    root = _tree(tmp_path / "data")
    config = _config(root, 2)
    config.train.lr_drop_fraction = 1.0  # the same learning rates for a 2- and a 4-step run
    short = config.copy_and_resolve_references()
    short.train.steps = 2
    kdad_main.run(short, str(tmp_path / "resumed"))
    resumed = kdad_main.run(config, str(tmp_path / "resumed"))
    straight = kdad_main.run(config, str(tmp_path / "straight"))
    logged_resumed, logged_straight = _logged(tmp_path / "resumed"), _logged(tmp_path / "straight")
    for name in ("gadget", "widget"):
        assert logged_resumed[(name, 4)] == pytest.approx(logged_straight[(name, 4)], rel=1e-5)
        assert resumed["per_category"][name]["image_auroc"] == pytest.approx(
            straight["per_category"][name]["image_auroc"], abs=1e-4)
    assert np.isfinite(resumed["image_auroc"])


def test_categories_whose_step_counts_differ_train_one_at_a_time(tmp_path, capsys):
    """Steps from epochs differ with the image count (7 vs 9 training images): one line says
    so and each category trains alone, to its own step count."""
    from kdad_jax.config_files import load as load_config_file
    root = _tree(tmp_path / "data")
    config = load_config_file(os.path.join(PROJECT, "configs", "stfpm.py")).get_config("smoke")
    config.data.root, config.train.parallel_categories = root, 2
    config.train.epochs, config.train.steps = 1, 0
    results = kdad_main.run(config, str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "note: gadget, widget train one at a time (their steps differ: gadget 0/4, widget 0/3)" in out
    assert [results["per_category"][n]["train_steps"] for n in ("gadget", "widget")] == [4, 3]
