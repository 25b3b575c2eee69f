"""The MVTec reader on trees built here and on the real bottle category; pipeline; embedded set."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kdad_jax.data import dataset, embedded, penalty, pipeline
from kdad_jax.errors import UserError
from tests.conftest import PROJECT, build_tree, optional_module


def test_reader_counts_modes_and_masks(tiny_tree):
    data = dataset.read_category("mvtec", tiny_tree, "widget", 32)
    assert data.train.shape == (6, 32, 32, 3) and data.train.dtype == np.uint8  # RGB, gray and RGBA
    assert data.test.shape == (4, 32, 32, 3)
    assert list(data.test_labels) == [0, 0, 1, 1]
    assert data.test_defects == ["good", "good", "square", "square"]
    assert not data.test_masks[:2].any() and data.test_masks[2:].any()
    # Mask alignment: the bright square is where the mask is.
    image, mask = data.test[2].mean(-1), data.test_masks[2]
    assert image[mask].mean() > 200 and image[~mask].mean() < 130


def test_reader_errors_name_the_problem(tmp_path):
    root = tmp_path / "data"
    base = build_tree(root)
    with pytest.raises(UserError, match="dataset root not found"):
        dataset.list_categories("mvtec", str(tmp_path / "nope"), "all")
    with pytest.raises(UserError, match="category not found"):
        dataset.list_categories("mvtec", str(root), "widgetz")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(base / "ground_truth" / "square" / "000_mask.png")
    with pytest.raises(UserError, match="000_mask.png: mask size 20x20 differs from its image"):
        dataset.read_category("mvtec", str(root), "widget", 32)
    for f in (base / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="no training images"):
        dataset.read_category("mvtec", str(root), "widget", 32)


def test_real_bottle_category(bottle_root):
    assert dataset.list_categories("mvtec", bottle_root, "bottle") == ["bottle"]
    data = dataset.read_category("mvtec", bottle_root, "bottle", 64)
    assert len(data.train) == 209 and len(data.test) == 83
    assert int((data.test_labels == 0).sum()) == 20 and int(data.test_labels.sum()) == 63
    assert all(data.test_masks[data.test_labels == 1].reshape(63, -1).any(1))
    assert not data.test_masks[data.test_labels == 0].any()
    # Mask alignment at full resolution: each mask file matches its image's size.
    full = dataset.read_category("mvtec", bottle_root, "bottle", 256)
    assert full.test_masks.shape == (83, 256, 256)


def test_penalty_folder_of_real_imagenet_photos(imagenet_sample):
    source = penalty.penalty_source(imagenet_sample, 64)
    assert len(source) == 300
    assert source[0].shape == (64, 64, 3) and source[0].dtype == np.uint8


def test_penalty_default_is_skimage_photos():
    source = penalty.penalty_source("", 32)
    assert len(source) == len(penalty.SKIMAGE_PHOTOS)
    assert all(source[i].shape == (32, 32, 3) for i in range(len(source)))


def test_split_is_seeded_and_disjoint():
    fit, val = pipeline.split_train_validation(209, 0.1, seed=0)
    assert len(val) == 21 and len(fit) == 188 and not set(fit) & set(val)
    assert np.array_equal(val, pipeline.split_train_validation(209, 0.1, seed=0)[1])


@pytest.mark.parametrize("count", [2, 5, 10, 25, 35, 80, 209, 391])
def test_validation_count_is_the_references(count):
    """The EfficientAD reference trains on int(0.9·N) images and validates on the rest."""
    fit, val = pipeline.split_train_validation(count, 0.1, seed=0)
    assert len(fit) == int(0.9 * count) and len(val) == count - int(0.9 * count)


def test_training_batches_are_deterministic_per_step():
    from tests.test_efficientad import efficientad_config
    config = efficientad_config.get_config("smoke")
    images = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), np.uint8)
    source = penalty.ArraySource([images[0], images[1]])
    batches = list(pipeline.training_batches(images, source, config, start_step=0))
    assert len(batches) == config.train.steps
    resumed = next(pipeline.training_batches(images, source, config, start_step=2))
    for key in ("image", "image_aug", "penalty"):
        assert batches[2][key].shape == (config.train.batch_size, 64, 64, 3)
        np.testing.assert_array_equal(batches[2][key], resumed[key])


def test_embedded_category_layout(tmp_path):
    embedded.write_category(str(tmp_path), "brick", seed=0)
    data = dataset.read_category("mvtec", str(tmp_path), "brick", 64)
    assert len(data.train) == embedded.COUNTS["train"] >= 60
    assert len(data.test) >= 40
    assert int(data.test_labels.sum()) == len(data.test) - embedded.COUNTS["test_good"]
    assert data.test_labels.mean() >= 0.5
    assert all(m.any() for m in data.test_masks[data.test_labels == 1])
    # Deterministic: a second generation is byte-identical.
    embedded.write_category(str(tmp_path / "again"), "brick", seed=0)
    first = (tmp_path / "brick" / "test" / "scratch" / "003.png").read_bytes()
    assert first == (tmp_path / "again" / "brick" / "test" / "scratch" / "003.png").read_bytes()
    assert len(embedded.CATEGORIES) >= 2


def test_heatmap_panel_is_readable_size(tmp_path):
    from kdad_jax.report import visualize
    image = np.zeros((64, 64, 3), np.uint8)
    amap = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    path = str(tmp_path / "panel.png")
    visualize.save_panel(path, image, amap, amap > 0.5, 0.0, 1.0, "title")
    assert Image.open(path).size == (3 * 256, 256 + 16)
    colors = visualize.heat_colors(np.array([0.0, 1.0]))
    assert colors[0, 2] > colors[0, 0] and colors[1, 0] > colors[1, 2]  # low = blue, high = red


def test_sixteen_bit_png_is_scaled_to_eight_bit(tmp_path):
    from kdad_jax.data import images as image_io
    path = str(tmp_path / "deep.png")
    Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16)).save(path)
    rgb = image_io.load_rgb(path, 8)
    assert rgb.shape == (8, 8, 3) and abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_tfds_array_record_dataset_reads_back_as_the_folder(tiny_tree, tmp_path):
    """tfds_build writes an MVTec tree as array_record (no TensorFlow); reading it gives the
    same arrays, labels, masks and order as reading the folders."""
    optional_module("tensorflow_datasets", "tfds")
    out = str(tmp_path / "tfds")
    proc = subprocess.run([sys.executable, "-m", "kdad_jax.data.tfds_build", f"--root={tiny_tree}",
                           f"--out={out}"], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert glob.glob(os.path.join(out, "kdad_mvtec", "widget", "1.0.0", "*.array_record*"))
    assert dataset.list_categories("mvtec", out, "all") == ["widget"]
    folder, stored = dataset.read_category("mvtec", tiny_tree, "widget", 32), dataset.read_category("mvtec", out, "widget", 32)
    np.testing.assert_array_equal(stored.train, folder.train)
    np.testing.assert_array_equal(stored.test, folder.test)
    np.testing.assert_array_equal(stored.test_masks, folder.test_masks)
    np.testing.assert_array_equal(stored.test_labels, folder.test_labels)
    assert stored.test_defects == folder.test_defects
    assert [os.path.basename(p) for p in stored.test_paths] == [os.path.basename(p) for p in folder.test_paths]
    assert folder.test_masks.any()
