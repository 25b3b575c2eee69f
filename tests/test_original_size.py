"""config.eval.original_size: maps brought to each test image's own (non-square, differing) size
and metrics computed there, checked against torch's bilinear resize and scikit-learn."""

import numpy as np
import pytest
from PIL import Image

from kdad_jax.evaluation import evaluate, metrics
from kdad_jax.training import train
from kdad_jax import main as kdad_main
from kdad_jax.data import dataset
from kdad_jax.methods import get_method
from tests.conftest import build_tree, optional_module
from tests.test_efficientad import efficientad_config

SIZES = [(56, 40), (40, 72), (64, 48)]  # (width, height) given to the test images in turn


def _non_square_tree(root):
    """The tiny tree with every test image (and its mask) resized to one of ``SIZES``."""
    base = build_tree(root, size=48, n_good=3, n_bad=3)
    images = sorted((base / "test").rglob("*.png"))
    for i, path in enumerate(images):
        size = SIZES[i % len(SIZES)]
        Image.open(path).resize(size, Image.BILINEAR).save(path)
        mask = base / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if mask.exists():
            Image.open(mask).resize(size, Image.NEAREST).save(mask)
    return str(root)


def test_metrics_at_the_original_size_equal_torch_resized_maps(tmp_path):
    torch = optional_module("torch", "convert")
    from sklearn.metrics import roc_auc_score
    root = _non_square_tree(tmp_path / "data")
    config = efficientad_config.get_config("smoke")
    config.data.root = root
    config.eval.num_heatmaps = 0
    config.eval.original_size = True
    workdir = str(tmp_path / "run")
    result = kdad_main.run(config, workdir)["per_category"]["widget"]
    assert result["evaluated_at"] == "original size"

    data = dataset.read_category("mvtec", root, "widget", 64)
    assert sorted(set(data.test_sizes)) == sorted(SIZES)
    method = get_method(config)
    trained = train.train_category(config, workdir, "widget", method, data.train, resume_only=True)
    maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                 trained.stats, data.test, 4)
    # The reference: torch's bilinear resize (the EfficientAD reference's), masks read by PIL.
    resized = [torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(h, w), mode="bilinear",
                                               align_corners=False)[0, 0].numpy() for m, (w, h) in zip(maps, data.test_sizes)]
    ours = evaluate.to_original_size(maps, data.test_sizes)
    for a, b in zip(ours, resized):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    masks = []
    for path, (w, h) in zip(data.test_paths, data.test_sizes):
        mask_path = path.replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
        masks.append(np.asarray(Image.open(mask_path)) > 0 if "/good/" not in path else np.zeros((h, w), bool))
    pixels = np.concatenate([m.ravel() for m in resized])
    truth = np.concatenate([m.ravel() for m in masks])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(truth, pixels), abs=1e-6)
    scores = np.array([m.max() for m in resized])
    assert result["image_auroc"] == pytest.approx(roc_auc_score(data.test_labels, scores), abs=1e-6)
    assert result["au_pro"] == pytest.approx(metrics.au_pro(resized, masks), abs=1e-6)
    # At config.image_size (the default of the small presets) the figures differ: masks are resized.
    at_size = evaluate.compute_metrics(maps, data.test_labels, data.test_masks)
    assert at_size["pixel_auroc"] != result["pixel_auroc"]


def test_original_size_needs_image_files(tmp_path):
    from kdad_jax.errors import UserError
    data = dataset.read_category("mvtec", _non_square_tree(tmp_path / "data"), "widget", 32)
    masks, regions = dataset.original_ground_truth(data)
    assert [m.shape for m in masks] == [(h, w) for w, h in data.test_sizes] and regions is None
    assert sum(int(m.sum()) for m in masks) > 0
    data.test_sizes = None  # what a TFDS source gives
    with pytest.raises(UserError, match="config.eval.original_size=True needs the test images' files"):
        dataset.original_ground_truth(data)


def test_original_size_that_cannot_fit_stops_before_training(tmp_path, monkeypatch):
    """Scoring at the original size needs memory per test pixel: when this machine lacks it the
    run stops before training, naming the key, instead of failing after hours of training."""
    from kdad_jax.errors import UserError
    monkeypatch.setattr(evaluate, "BYTES_PER_ORIGINAL_PIXEL", 2 ** 50)
    config = efficientad_config.get_config("smoke")
    config.data.root, config.eval.original_size = _non_square_tree(tmp_path / "data"), True
    with pytest.raises(UserError, match=r"widget: config.eval.original_size=True scores 0 M test pixels, about .* GiB"
                                        r".*set --config.eval.original_size=False"):
        kdad_main.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints" / "widget").exists()
