"""Tuning without test data (data/synthetic.py), the long-run note, pretraining views and hold-out."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from kdad_jax.training import train
from kdad_jax.jobs import pretrain
from kdad_jax.data import augment, dataset, synthetic
from kdad_jax.errors import UserError
from tests.conftest import build_tree, part_on_plain_background


def test_tuning_category_is_made_of_training_images_only(tmp_path):
    build_tree(tmp_path / "data", n_train=12)
    counts = synthetic.write_tuning_category(str(tmp_path / "data"), "widget", str(tmp_path / "tune"),
                                             holdout=0.5, seed=0)
    assert counts["train/good"] == 6 and counts["test/good"] == 3
    assert sum(v for k, v in counts.items() if k not in ("train/good", "test/good")) == 3
    category = dataset.read_category("mvtec", str(tmp_path / "tune"), "widget", 64)
    assert len(category.train) == 6 and len(category.test) == 6 and category.test_labels.sum() == 3
    originals = [np.asarray(Image.open(tmp_path / "data" / "widget" / "train" / "good" / name).convert("RGB")
                             .resize((256, 256), Image.BILINEAR))
                 for name in sorted(os.listdir(tmp_path / "data" / "widget" / "train" / "good"))]
    written = [np.asarray(Image.open(tmp_path / "tune" / "widget" / split / name))
               for split in ("train/good", "test/good")
               for name in sorted(os.listdir(tmp_path / "tune" / "widget" / split))]
    # every normal image is one of the training images, none used twice
    matches = [[i for i, o in enumerate(originals) if np.array_equal(o, w)] for w in written]
    assert all(len(m) == 1 for m in matches) and len({m[0] for m in matches}) == 9
    # each defect differs from the normal image exactly where (and only where) its mask says
    for defect in [d for d in os.listdir(tmp_path / "tune" / "widget" / "test") if d != "good"]:
        for name in os.listdir(tmp_path / "tune" / "widget" / "test" / defect):
            image = np.asarray(Image.open(tmp_path / "tune" / "widget" / "test" / defect / name), np.int32)
            mask = np.asarray(Image.open(tmp_path / "tune" / "widget" / "ground_truth" / defect /
                                         name.replace(".png", "_mask.png"))) > 0
            assert mask.any()
            outside = [np.abs(image - o).max(axis=-1)[~mask].max() for o in originals]
            assert min(outside) == 0  # one original matches outside the mask


def test_tuning_category_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match="train/good"):
        synthetic.write_tuning_category(str(tmp_path), "missing", str(tmp_path / "out"))


def _note_config(steps, preset="configs/efficientad.py:cpu"):
    c = ml_collections.ConfigDict({"train": {"steps": steps}, "cpu_preset": preset})
    return c


def test_duration_note_names_the_cpu_preset(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(train.time, "time", lambda: clock["now"])
    note = train._DurationNote(_note_config(70_000), "bottle", 0)
    lines = []
    for step in range(1, 10):
        clock["now"] += 30.0 if step == 1 else 7.5   # the first step compiles
        lines.append(note.after(step))
    said = [line for line in lines if line]
    assert len(said) == 1
    assert "69995 more steps at 7.50 s/step" in said[0] and "6.1 days" in said[0]
    assert "--config=configs/efficientad.py:cpu" in said[0]


def test_duration_note_is_silent_for_short_runs(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(train.time, "time", lambda: clock["now"])
    note = train._DurationNote(_note_config(300), "bottle", 0)
    for step in range(1, 300):
        clock["now"] += 2.0
        assert note.after(step) is None


def test_random_resized_crop_and_symmetries():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 90, 3), np.uint8)
    crop = augment.random_resized_crop(image, 32, rng, (0.25, 1.0))
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    square_image = image[:, :60]
    whole = augment.random_resized_crop(np.ascontiguousarray(square_image), 60, rng, (1.0, 1.0), (1.0, 1.0))
    assert np.array_equal(whole, square_image)          # the whole image, unchanged
    small = augment.random_resized_crop(image, 32, rng, (0.01, 0.01), (1.0, 1.0))
    assert small.std() > 0 and not np.array_equal(small, augment.random_resized_crop(image, 32, rng, (1.0, 1.0)))
    square = rng.integers(0, 256, (8, 8, 3), np.uint8)
    seen = {augment.flip_and_rotate(square, np.random.default_rng(s)).tobytes() for s in range(200)}
    symmetries = {np.rot90(v, k).tobytes() for v in (square, square[:, ::-1]) for k in range(4)}
    assert seen == symmetries


def test_holdout_split_and_views(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.full((40, 60, 3), i * 10, np.uint8)).save(folder / f"{i:02d}.png")
    config = ml_collections.ConfigDict({
        "image_size": 32, "seed": 0,
        "pretrain": {"crop_scale": 0.5, "flip_rotate": True, "color_jitter": 0.0, "grayscale_prob": 0.0},
        "data": {"root": str(folder), "tfds_name": "", "include_skimage": False, "holdout_every": 5}})
    train_source, held = pretrain.split_holdout(pretrain.image_source(config), 5)
    assert len(train_source) == 16 and len(held) == 4
    assert [int(held[i][0, 0, 0]) for i in range(4)] == [40, 90, 140, 190]   # files 4, 9, 14, 19
    assert held[0].shape == (32, 48, 3)                  # shorter side = image_size, aspect kept
    assert pretrain.center_view(held[0], 32).shape == (32, 32, 3)
    view = pretrain._View(config.pretrain, 32)(train_source[0], np.random.default_rng(0))["image"]
    assert view.shape == (32, 32, 3) and view.dtype == np.float32


@pytest.mark.parametrize("name", ["efficientad", "stfpm", "eca_mskdad", "dskd", "mixed", "students"])
def test_cpu_preset_named_by_each_config_exists(name):
    """The duration note points paper-preset users at config.cpu_preset: it must load, belong to
    the same method and train fewer steps than the paper preset."""
    from kdad_jax import config_files
    from tests.conftest import PROJECT
    paper = config_files.load(os.path.join(PROJECT, "configs", f"{name}.py")).get_config("")
    path, preset = paper.cpu_preset.split(":")
    assert path == f"configs/{name}.py"
    cpu = config_files.load(os.path.join(PROJECT, path)).get_config(preset)
    assert cpu.method == paper.method

    def steps(c):
        return c.train.get("epochs") or c.train.steps
    assert steps(cpu) < steps(paper) or cpu.image_size < paper.image_size


@pytest.mark.parametrize("defect", ["faint", "missing", "misplaced"])
def test_object_defects_change_the_part_exactly_where_their_mask_says(defect):
    from kdad_jax.data import object_defects
    rng = np.random.default_rng(1)
    for _ in range(4):
        image, part = part_on_plain_background(rng)
        found = object_defects.object_mask(image)
        assert (found & part).sum() / (found | part).sum() > 0.8  # the part, not the background
        changed, mask = getattr(object_defects, defect)(image, rng)
        mask = np.asarray(mask) > 0
        difference = np.abs(changed - image).max(axis=-1)
        assert mask.any() and (difference[~mask] == 0).all() and (difference[mask] > 1 / 255).all()
        near_part = ndimage.binary_dilation(part, iterations=4)
        if defect == "faint":  # small, low contrast, on the part
            assert mask.sum() <= np.pi * 9 ** 2 and difference.max() <= 0.12 + 1e-6
            assert near_part[mask].all()
        elif defect == "missing":  # the part's dark pixels become background
            assert near_part[mask].all() and changed[mask & part].mean() > image[mask & part].mean() + 0.1
        else:  # the part moved: pixels left and pixels newly covered both changed
            assert (mask & part).any() and (mask & ~part).any()


def test_object_defects_use_the_interior_when_the_frame_is_not_plain():
    from kdad_jax.data import object_defects
    rng = np.random.default_rng(0)
    board = rng.uniform(0, 1, (256, 256, 3)).astype(np.float32)
    found = object_defects.object_mask(board)
    assert found[object_defects.MARGIN:-object_defects.MARGIN,
                 object_defects.MARGIN:-object_defects.MARGIN].all()
    assert found.sum() == (256 - 2 * object_defects.MARGIN) ** 2


def test_tuning_category_rejects_unknown_defect_kinds(tmp_path):
    build_tree(tmp_path / "data", n_train=12)
    with pytest.raises(UserError, match="--defects: dent"):
        synthetic.write_tuning_category(str(tmp_path / "data"), "widget", str(tmp_path / "tune"),
                                        defects=("faint", "dent"))
