"""Short real training runs: the real MVTec bottle category, and the embedded dataset's separation.

These compile full-size graphs and run many steps, so compiler optimizations stay on here.
"""

import jax
import pytest

from kdad_jax import main as kdad_main
from kdad_jax.data import embedded
from tests.test_efficientad import efficientad_config


@pytest.fixture
def optimized_jit():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# Measured with this config (shipped teacher, 64², 200 steps) on a 2-core CPU, ~1 min: image
# AUROC 0.934, pixel AUROC 0.737, AU-PRO 0.516 (20 steps: 0.622 / 0.577 / 0.396, near chance).
# The floors sit well above what a broken pipeline gives and leave room for numeric drift.
BOTTLE_FLOORS = {"image_auroc": 0.85, "pixel_auroc": 0.65, "au_pro": 0.42}


def test_short_run_on_real_bottle_detects_defects(bottle_root, imagenet_sample, tmp_path, optimized_jit):
    config = efficientad_config.get_config("demo,category=bottle")
    config.data.root = bottle_root
    config.penalty.root = imagenet_sample
    config.image_size = 64
    config.train.steps = 200
    results = kdad_main.run(config, str(tmp_path / "bottle"))
    bottle = results["per_category"]["bottle"]
    assert bottle["train_steps"] == 200 and results["dataset"] == "mvtec_ad_256"
    for key, floor in BOTTLE_FLOORS.items():
        assert bottle[key] >= floor, (key, bottle[key])


# Measured with this config on a 2-core CPU: brick image AUROC 0.973, pixel AUROC 0.945
# (random-init teacher); the bar leaves room for numeric drift across machines.
SEPARATION_BAR = 0.9


def test_embedded_run_separates_anomalies(tmp_path, optimized_jit):
    """The demo image size and learning rate, one category, a shortened schedule."""
    root = str(tmp_path / "data")
    embedded.write_category(root, "brick", seed=0)
    config = efficientad_config.get_config("demo,category=brick")
    config.teacher.checkpoint = ""  # the figures above are the random-init teacher's
    config.data.root = root
    config.train.steps = 150
    results = kdad_main.run(config, str(tmp_path / "run"))
    assert results["image_auroc"] >= SEPARATION_BAR
    assert results["pixel_auroc"] >= SEPARATION_BAR
