"""MVTec AD 2 (``config.data.format=mvtec_ad2``) on a tiny tree in its layout built here: the
reader, AU-PRO at the protocol's FPR ≤ 0.05 (``eval.fpr_limits``) and SegF1 at the threshold
from validation normals, recomputed independently (scikit-learn's F1)."""

import numpy as np
import pytest
from PIL import Image

from kdad_jax.evaluation import evaluate, metrics
from kdad_jax.training import train
from kdad_jax import main as kdad_main
from kdad_jax.data import dataset
from kdad_jax.errors import UserError
from kdad_jax.methods import get_method
from tests.test_efficientad import efficientad_config

WIDTH, HEIGHT = 72, 52  # not square, like the scenes' 2.6–5 MP images


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def build_ad2(root, scene="vial", seed=0):
    rng = np.random.default_rng(seed)
    base = root / scene

    def normal():
        return rng.uniform(90, 110, (HEIGHT, WIDTH, 3)).astype(np.uint8)

    for i in range(6):
        _save(base / "train" / "good" / f"{i:03d}_regular.png", normal())
    for i in range(3):
        _save(base / "validation" / "good" / f"{i:03d}_regular.png", normal())
    for i in range(2):
        _save(base / "test_public" / "good" / f"{i:03d}_regular.png", normal())
    for i in range(3):
        image, mask = normal(), np.zeros((HEIGHT, WIDTH), np.uint8)
        y, x = rng.integers(2, HEIGHT - 14, size=2)
        image[y:y + 12, x:x + 14] = 250
        mask[y:y + 12, x:x + 14] = 255
        _save(base / "test_public" / "bad" / f"{i:03d}_overexposed.png", image)
        _save(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_overexposed_mask.png", mask)
    (base / "test_private").mkdir()  # unlabelled: not read
    _save(base / "test_private" / "000.png", normal())
    return base


def test_reader_takes_validation_normals_and_public_test_masks(tmp_path):
    base = build_ad2(tmp_path)
    assert dataset.list_categories("mvtec_ad2", str(tmp_path), "all") == ["vial"]
    data = dataset.read_category("mvtec_ad2", str(tmp_path), "vial", 32)
    assert data.train.shape == (6, 32, 32, 3) and data.validation.shape == (3, 32, 32, 3)
    assert data.test_defects == ["bad"] * 3 + ["good"] * 2 and list(data.test_labels) == [1, 1, 1, 0, 0]
    assert all(m.any() for m in data.test_masks[:3]) and not data.test_masks[3:].any()
    assert set(data.test_sizes) == {(WIDTH, HEIGHT)}
    with pytest.raises(UserError, match="this looks like MVTec AD 2: set --config.data.format=mvtec_ad2"):
        dataset.read_category("mvtec", str(tmp_path), "vial", 32)
    (base / "test_public" / "ground_truth" / "bad" / "001_overexposed_mask.png").unlink()
    with pytest.raises(UserError, match="ground-truth mask missing for .*001_overexposed.png"):
        dataset.read_category("mvtec_ad2", str(tmp_path), "vial", 32)


def test_segmentation_f1_hand_computed():
    maps = [np.array([[0.9, 0.2], [0.6, 0.1]]), np.array([[0.7, 0.3, 0.8]])]
    masks = [np.array([[True, False], [False, False]]), np.array([[True, True, False]])]
    # At 0.5: predicted 0.9, 0.6, 0.7, 0.8 (4); true 3; hits 0.9, 0.7 (2): F1 = 4 / 7.
    assert evaluate.segmentation_f1(maps, masks, 0.5) == pytest.approx(4 / 7)
    assert evaluate.segmentation_f1(maps, [np.zeros_like(m, bool) for m in masks], 0.5) is None
    validation = [np.array([[1.0, 3.0]]), np.array([[2.0]])]  # mean 2, std sqrt(2/3)
    assert evaluate.validation_threshold(validation) == pytest.approx(2 + 3 * np.sqrt(2 / 3))


@pytest.mark.parametrize("original_size", [False, True])
def test_main_job_reports_au_pro_at_005_and_seg_f1(tmp_path, original_size):
    from sklearn.metrics import f1_score
    build_ad2(tmp_path / "data")
    config = efficientad_config.get_config("smoke")
    config.data.root, config.data.format = str(tmp_path / "data"), "mvtec_ad2"
    config.eval.fpr_limits, config.eval.num_heatmaps = (0.05, 0.3), 0
    config.eval.original_size = original_size
    workdir = str(tmp_path / "run")
    result = kdad_main.run(config, workdir)["per_category"]["vial"]
    header = open(tmp_path / "run" / "results.csv").readline().strip().split(",")
    assert header[-1] == "seg_f1" and "AU-PRO (FPR≤0.05)" in open(tmp_path / "run" / "results.md").read()

    data = dataset.read_category("mvtec_ad2", config.data.root, "vial", 64)
    method = get_method(config)
    trained = train.train_category(config, workdir, "vial", method, data.train, resume_only=True,
                                   validation_images=data.validation)
    maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                 trained.stats, data.test, 4)
    masks = data.test_masks
    if original_size:
        maps, (masks, _) = evaluate.to_original_size(maps, data.test_sizes), dataset.original_ground_truth(data)
        assert maps[0].shape == (HEIGHT, WIDTH)
    validation_maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                            trained.stats, data.validation, 4)
    threshold = validation_maps.astype(np.float64).mean() + 3 * validation_maps.astype(np.float64).std()
    assert result["seg_threshold"] == pytest.approx(threshold, rel=1e-9)
    pixels = np.concatenate([np.ravel(m) for m in maps])
    truth = np.concatenate([np.ravel(m) for m in masks])
    assert result["seg_f1"] == pytest.approx(f1_score(truth, pixels >= threshold), abs=1e-12)
    assert set(result["au_pro_at"]) == {"0.05", "0.3"}
    assert result["au_pro"] == result["au_pro_at"]["0.05"] == pytest.approx(metrics.au_pro(maps, masks, 0.05), abs=1e-9)
    assert result["au_pro_at"]["0.3"] == pytest.approx(metrics.au_pro(maps, masks, 0.3), abs=1e-9)
