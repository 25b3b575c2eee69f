"""Shared fixtures: the real data in ../shared/data and tiny MVTec-layout trees built here."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

PROJECT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("KDAD_SHARED_DATA", PROJECT.parent / "shared" / "data"))


def shared_path(*parts) -> pathlib.Path:
    """A path under ../shared/data: skip when absent, fail when KDAD_REQUIRE_SHARED=1."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing (the real data lives in ../shared/data beside the project)"
        if os.environ.get("KDAD_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def bottle_root():
    shared_path("mvtec_ad_256", "bottle")
    return str(SHARED_DATA / "mvtec_ad_256")


@pytest.fixture
def imagenet_sample():
    return str(shared_path("imagenet_sample_256"))


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def build_tree(root: pathlib.Path, category="widget", size=48, n_train=6, n_good=2, n_bad=2, seed=0):
    """A tiny MVTec-layout tree: RGB, grayscale and RGBA images; a bright square defect + mask.

    Returns the category folder.
    """
    rng = np.random.default_rng(seed)
    base = root / category

    def normal():
        return (rng.uniform(90, 110, (size, size, 3))).astype(np.uint8)

    for i in range(n_train):
        image = normal()
        if i % 3 == 1:  # grayscale
            _save(base / "train" / "good" / f"{i:03d}.png", image[..., 0], "L")
        elif i % 3 == 2:  # RGBA
            _save(base / "train" / "good" / f"{i:03d}.png",
                  np.concatenate([image, np.full((size, size, 1), 255, np.uint8)], -1), "RGBA")
        else:
            _save(base / "train" / "good" / f"{i:03d}.png", image)
    for i in range(n_good):
        _save(base / "test" / "good" / f"{i:03d}.png", normal())
    for i in range(n_bad):
        image, mask = normal(), np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 16, size=2)
        image[y:y + 12, x:x + 12] = 250
        mask[y:y + 12, x:x + 12] = 255
        _save(base / "test" / "square" / f"{i:03d}.png", image)
        _save(base / "ground_truth" / "square" / f"{i:03d}_mask.png", mask, "L")
    return base


def part_on_plain_background(rng, size=256, threads=False):
    """A dark bar (a part) at a random angle and place on a light, slightly noisy plain background,
    [size, size, 3] float32 in [0, 1], and its mask [size, size] bool. ``threads``: stripes across
    the part, so it has structure of its own (like a screw's thread)."""
    from PIL import ImageDraw
    mask = Image.new("L", (size, size), 0)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    c, s = np.cos(angle) * 0.27 * size, np.sin(angle) * 0.27 * size
    ImageDraw.Draw(mask).line((cx - c, cy - s, cx + c, cy + s), fill=255, width=max(2, int(0.094 * size)))
    part = np.asarray(mask) > 0
    image = 0.8 + rng.normal(0, 0.01, (size, size, 3))
    inside = np.full(int(part.sum()), 0.3)
    if threads:
        yy, xx = np.nonzero(part)
        inside = inside + 0.08 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.9)
    image[part] = inside[:, None] + rng.normal(0, 0.01, (int(part.sum()), 3))
    return np.clip(image, 0, 1).astype(np.float32), part


@pytest.fixture
def tiny_tree(tmp_path):
    build_tree(tmp_path / "data")
    return str(tmp_path / "data")


def pytest_configure(config):
    # Compile time dominates the tiny end-to-end runs; tests check values, not speed.
    import jax
    jax.config.update("jax_disable_most_optimizations", True)


def optional_module(name: str, extra: str):
    """Import an optional dependency: skip when missing, fail when KDAD_REQUIRE_EXTRAS=1 (CI)."""
    try:
        return __import__(name)
    except ImportError:
        message = f"{name} is not installed (pip install -e '.[{extra}]')"
        if os.environ.get("KDAD_REQUIRE_EXTRAS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def assert_metrics_from_checkpoint(config, workdir, category, result):
    """Reload ``category``'s checkpoint, score its test images again and recompute image, pixel
    and per-defect image AUROC with scikit-learn: they must equal what the run reported in
    ``result``."""
    from sklearn.metrics import roc_auc_score

    from kdad_jax.evaluation import evaluate
    from kdad_jax.training import train
    from kdad_jax.data import dataset
    from kdad_jax.methods import get_method
    from kdad_jax.jobs.run import resolve_dataset

    root, _ = resolve_dataset(config, str(workdir))
    data = dataset.read_category(config.data.format, root, category, config.image_size)
    method = get_method(config)
    trained = train.load_trained(config, str(workdir), category, method)
    maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                 trained.stats, data.test, config.eval.batch_size)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(data.test_labels, scores), abs=1e-6)
    defects = np.asarray(data.test_defects)
    good = data.test_labels == 0
    for defect, reported in result.get("image_auroc_per_defect", {}).items():
        chosen = good | (defects == defect)  # good images vs this defect type only
        assert reported == pytest.approx(
            roc_auc_score(data.test_labels[chosen], scores[chosen]), abs=1e-6), defect
    for kind in ("logical", "structural"):
        if f"image_auroc_{kind}" in result:
            chosen = good | (defects == f"{kind}_anomalies")
            assert result[f"image_auroc_{kind}"] == pytest.approx(
                roc_auc_score(data.test_labels[chosen], scores[chosen]), abs=1e-6), kind
    for kind in ("logical", "structural"):
        if f"au_spro_{kind}" in result:  # LOCO's sPRO by the literal slow definition
            from tests.test_spro import slow_au_spro
            chosen = np.flatnonzero(good | (defects == f"{kind}_anomalies"))
            regions = [(n, r.mask, r.saturation) for n, i in enumerate(chosen) for r in data.test_regions[i]]
            assert result[f"au_spro_{kind}"] == pytest.approx(
                slow_au_spro(maps[chosen], regions, 0.05), abs=1e-6), kind
    if result.get("pixel_auroc") is not None:
        with_mask = data.test_has_mask
        pixel = roc_auc_score(data.test_masks[with_mask].ravel(), maps[with_mask].ravel())
        assert result["pixel_auroc"] == pytest.approx(pixel, abs=1e-4)


def np_bilinear_upsample(maps, size):
    """Bilinear, half-pixel centres, edges clamped: [B, h, w] -> [B, size, size], float64
    (torch's ``interpolate(mode='bilinear', align_corners=False)``, written out)."""
    def weights(n_in):
        source = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, source - low
    (rows_lo, rows_hi, fy), (cols_lo, cols_hi, fx) = weights(maps.shape[1]), weights(maps.shape[2])
    rows = maps[:, rows_lo] * (1 - fy)[None, :, None] + maps[:, rows_hi] * fy[None, :, None]
    return rows[:, :, cols_lo] * (1 - fx) + rows[:, :, cols_hi] * fx
