"""Bad input a user's folders really contain: each is handled, and says so in one line.

What each prints (asserted below):
- corrupt / truncated / zero-byte image files: ``warning: skipped PATH: unreadable image (image
  file is truncated)`` (``(empty file, 0 bytes)``, ``(not an image format Pillow knows)``),
  recorded in results.json ``skipped_files``; predict gives the file a scores.csv row with the
  error; in lazily read penalty/pretraining folders the next file stands in (``...; using the
  next file instead``);
- non-image files in image folders: ``warning: FOLDER: ignored N non-image file(s): a.txt``;
- images smaller than a 33-px patch: ``warning: PATH: only 8x8 px ...; upsampled to 64x64``;
- anomalous test images without ``ground_truth/<defect>/``: ``warning: ...: image metrics only``,
  then ``note: widget: pixel AUROC, AU-PRO ..., undefined: no ground-truth masks for 2 ...``;
- a test set without anomalies: ``note: clean: image AUROC, image F1-max, pixel AUROC, AU-PRO
  (FPR≤0.3), pixel F1-max undefined: no anomalous test images`` and a decision threshold from the
  99th percentile of the validation images' scores;
- NaN/Inf loss: ``error: NAME: the loss became nan at step 5; ... the last good checkpoint
  (step 4) is kept in DIR; rerun to resume from it ...``;
- an image size below what the network can take: ``error: config.image_size=8 is too
  small for ...``.
16-bit PNGs, alpha channels and masks stored as 0/1, 0/255, palette or 16-bit read as expected.
"""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kdad_jax.evaluation import evaluate
from kdad_jax import main as kdad_main
from kdad_jax.training import train
from kdad_jax.config_files import load as load_config_file
from kdad_jax.data import dataset
from kdad_jax.data import images as image_io
from kdad_jax.errors import TrainingDiverged, UserError
from kdad_jax.methods import get_method
from tests.conftest import PROJECT, build_tree

stfpm_config = load_config_file(os.path.join(PROJECT, "configs", "stfpm.py"))


def _write_bad_files(folder):
    """Corrupt, truncated, empty and non-image files among the images of ``folder``."""
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    good = next(p for p in sorted(folder.iterdir()) if p.suffix == ".png" and p.stem.isdigit())
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0")


def test_unreadable_and_non_image_files_are_skipped_with_one_line_each(tmp_path, capsys):
    base = build_tree(tmp_path / "data")
    _write_bad_files(base / "train" / "good")
    _write_bad_files(base / "test" / "good")
    data = dataset.read_category("mvtec", str(tmp_path / "data"), "widget", 32)
    assert len(data.train) == 6 and len(data.test) == 4  # the readable ones only
    assert len(data.skipped) == 6 and all("unreadable image" in s for s in data.skipped)
    err = capsys.readouterr().err.splitlines()
    for name in ("corrupt.png", "truncated.png", "empty.jpg"):
        assert sum(line.startswith("warning: skipped ") and name in line for line in err) == 2
    assert sum("ignored 1 non-image file(s): notes.txt" in line for line in err) == 2
    assert not any(".DS_Store" in line for line in err)


def test_unreadable_file_in_a_lazily_read_folder_is_replaced_by_the_next(tmp_path, capsys):
    """Penalty/pretraining folders are read in workers, element by element."""
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"")
    source = image_io.FolderSource(str(tmp_path), 8, kind="penalty")
    assert len(source) == 3 and (source[1] == 100).all() and (source[0] == 0).all()
    assert "1.png: unreadable image (empty file, 0 bytes); using the next file instead" in capsys.readouterr().err


def test_sixteen_bit_alpha_and_tiny_images(tmp_path, capsys):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(deep)
    assert image_io.load_rgb(str(deep), 16).min() == 255
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the colour is kept, alpha dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(image_io.load_rgb(str(tmp_path / "alpha.png"), 16)[0, 0], [200, 0, 0])
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "tiny.png")
    tiny = image_io.load_rgb(str(tmp_path / "tiny.png"), 64)
    assert tiny.shape == (64, 64, 3) and (tiny == 77).all()
    assert "tiny.png: only 8x8 px (smaller than a 33-px patch); upsampled to 64x64" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["0/255", "0/1", "palette", "16-bit"])
def test_mask_encodings_read_alike(tmp_path, kind):
    truth = np.zeros((40, 40), bool)
    truth[5:20, 10:30] = True
    path = str(tmp_path / "mask.png")
    if kind == "0/255":
        Image.fromarray(truth.astype(np.uint8) * 255).save(path)
    elif kind == "0/1":
        Image.fromarray(truth.astype(np.uint8)).save(path)
    elif kind == "palette":
        mask = Image.fromarray(truth.astype(np.uint8), "P")
        mask.putpalette([0, 0, 0, 10, 0, 0] + [0] * 762)  # index 1 is nearly black
        mask.save(path)
    else:
        Image.fromarray(truth.astype(np.uint16) * 65535).save(path)
    np.testing.assert_array_equal(image_io.load_mask(path, 40, (40, 40)), truth)


def test_metrics_say_why_they_are_undefined():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:4, 2:4] = True
    labels = np.array([0, 0, 1, 1])
    unmasked = evaluate.compute_metrics(maps, labels, masks, np.array([1, 1, 0, 1], bool),
                                        ["good", "good", "scratch", "dent"])
    assert unmasked["image_auroc"] is not None and unmasked["pixel_auroc"] is None
    assert unmasked["unavailable"]["au_pro"] == "no ground-truth masks for 1 anomalous test image(s) (scratch)"
    good_only = evaluate.compute_metrics(maps, np.zeros(4, int), np.zeros_like(masks))
    assert all(good_only[k] is None for k in evaluate.METRIC_KEYS)
    assert good_only["unavailable"]["image_auroc"] == "no anomalous test images"
    chosen = evaluate.decision_thresholds(good_only, lambda: np.arange(101.0), 99.0)
    assert chosen["image_threshold"] == pytest.approx(99.0)
    assert chosen["image_rule"].startswith("99th percentile of 101 validation image scores")
    assert chosen["pixel_threshold"] == chosen["image_threshold"]


def test_image_level_labels_and_anomaly_free_test_set_end_to_end(tmp_path, capsys):
    """The main job on a tree whose defects have no masks, with unreadable files, and a second
    category whose test set has no anomalies: both evaluate; the nulls say why."""
    root = tmp_path / "data"
    base = build_tree(root, "widget")
    shutil.rmtree(base / "ground_truth")
    _write_bad_files(base / "test" / "square")
    clean = build_tree(root, "clean", seed=1)
    shutil.rmtree(clean / "test" / "square")
    shutil.rmtree(clean / "ground_truth")
    config = stfpm_config.get_config("smoke")
    config.data.root = str(root)
    config.train.steps = 2
    workdir = tmp_path / "run"
    results = kdad_main.run(config, str(workdir))
    widget, clean_result = results["per_category"]["widget"], results["per_category"]["clean"]
    assert widget["image_auroc"] is not None and widget["pixel_auroc"] is None
    assert "no ground-truth masks for 2" in widget["unavailable"]["pixel_auroc"]
    assert len(widget["skipped_files"]) == 3
    assert clean_result["image_auroc"] is None and clean_result["unavailable"]["image_auroc"] == \
        "no anomalous test images"
    thresholds = json.load(open(workdir / "thresholds.json"))
    assert thresholds["widget"]["image_rule"] == "image F1-max on the test set"
    assert thresholds["clean"]["image_rule"].startswith("99th percentile of 1 validation image scores")
    assert np.isfinite(thresholds["clean"]["image_threshold"])
    out = capsys.readouterr()
    assert ("note: clean: image AUROC, image F1-max, pixel AUROC, AU-PRO (FPR≤0.3), pixel F1-max "
            "undefined: no anomalous test images") in out.out
    assert "note: widget: pixel AUROC, AU-PRO (FPR≤0.3), pixel F1-max undefined: no ground-truth masks" in out.out
    markdown = (workdir / "results.md").read_text()
    assert "| clean | – |" in markdown and "- clean: image AUROC, image F1-max, pixel AUROC" in markdown
    assert (workdir / "plots" / "clean.png").exists() and (workdir / "plots" / "widget.png").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_tree, tmp_path):
    config = stfpm_config.get_config("smoke")
    config.data.root = tiny_tree
    config.train.steps = 4
    config.train.checkpoint_every = 2
    workdir = str(tmp_path / "run")
    method = get_method(config)
    images = dataset.read_category("mvtec", tiny_tree, "widget", config.image_size).train
    train.train_category(config, workdir, "widget", method, images)
    logged = open(os.path.join(workdir, "metrics.jsonl")).read()

    def poisoned_loss(*args):
        loss, aux = method.loss(*args)
        return loss * jnp.nan, aux

    config.train.steps = 8
    with pytest.raises(TrainingDiverged) as raised:
        train.train_category(config, workdir, "widget", method._replace(loss=poisoned_loss), images)
    message = str(raised.value)
    assert "\n" not in message and "the loss became nan at step 5" in message
    assert "the last good checkpoint (step 4) is kept in" in message
    checkpoints = os.path.join(workdir, "checkpoints", "widget")
    assert max(int(s) for s in os.listdir(checkpoints) if s.isdigit()) == 4
    assert open(os.path.join(workdir, "metrics.jsonl")).read().startswith(logged)
    # The kept checkpoint still resumes and finishes with the healthy loss.
    assert train.train_category(config, workdir, "widget", method, images).steps == 8


def test_too_small_image_size_is_one_line(tiny_tree, tmp_path):
    efficientad = load_config_file(os.path.join(PROJECT, "configs", "efficientad.py")).get_config("smoke")
    efficientad.image_size = 24
    with pytest.raises(UserError, match="image_size 24 is too small for PDN-S"):
        get_method(efficientad)
    proc = subprocess.run([sys.executable, "-m", "kdad_jax.main", "--config=configs/stfpm.py:smoke",
                           f"--workdir={tmp_path}/run", f"--config.data.root={tiny_tree}",
                           "--config.image_size=8"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: config.image_size=8 is too small for ")
