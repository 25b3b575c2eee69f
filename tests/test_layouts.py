"""VisA and MVTec LOCO layouts on tiny trees built here (``config.data.format``)."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from kdad_jax import main as kdad_main
from kdad_jax.config_files import load as load_config_file
from kdad_jax.data import dataset
from kdad_jax.errors import UserError
from tests.conftest import PROJECT, assert_metrics_from_checkpoint

SIZE = 48


def _normal(rng):
    return rng.uniform(90, 110, (SIZE, SIZE + 8, 3)).astype(np.uint8)  # not square, as VisA/LOCO


def _defect(rng, value=250):
    image, mask = _normal(rng), np.zeros((SIZE, SIZE + 8), np.uint8)
    y, x = rng.integers(4, SIZE - 16, size=2)
    image[y:y + 12, x:x + 12] = value
    mask[y:y + 12, x:x + 12] = 1
    return image, mask


def build_visa(root, name="pcbx", n_train=5, n_good=2, n_bad=3, seed=0):
    """VisA: Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png (0/1), split_csv/1cls.csv."""
    rng = np.random.default_rng(seed)
    images = root / name / "Data" / "Images"
    (images / "Normal").mkdir(parents=True)
    (images / "Anomaly").mkdir(parents=True)
    (root / name / "Data" / "Masks" / "Anomaly").mkdir(parents=True)
    (root / "split_csv").mkdir()
    rows = []
    for i in range(n_train + n_good):
        Image.fromarray(_normal(rng)).save(images / "Normal" / f"{i:04d}.JPG", quality=95)
        rows.append([name, "train" if i < n_train else "test", "normal",
                     f"{name}/Data/Images/Normal/{i:04d}.JPG", ""])
    for i in range(n_bad):
        image, mask = _defect(rng)
        Image.fromarray(image).save(images / "Anomaly" / f"{i:03d}.JPG", quality=95)
        Image.fromarray(mask).save(root / name / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png")
        rows.append([name, "test", "anomaly", f"{name}/Data/Images/Anomaly/{i:03d}.JPG",
                     f"{name}/Data/Masks/Anomaly/{i:03d}.png"])
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
    return rows


# defects_config.json of the tiny LOCO tree: logical masks hold 10 (saturate at 20 pixels, or the
# whole region when smaller), the extra region 20 (5 pixels), structural ones 255 (the whole region).
LOCO_DEFECTS = [
    {"defect_name": "missing_part", "pixel_value": 10, "saturation_threshold": 20, "relative_saturation": False},
    {"defect_name": "extra_part", "pixel_value": 20, "saturation_threshold": 5, "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
]


def build_loco(root, name="boxes", seed=0):
    """LOCO: train/good, validation/good, test/{good,logical_anomalies,structural_anomalies},
    ground_truth/<type>/<stem>/000.png (+ 001.png: two regions for the first logical image) and
    defects_config.json (``LOCO_DEFECTS``)."""
    rng = np.random.default_rng(seed)
    base = root / name

    def save(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    for split, count in (("train", 5), ("validation", 2)):
        for i in range(count):
            save(base / split / "good" / f"{i:03d}.png", _normal(rng))
    for i in range(2):
        save(base / "test" / "good" / f"{i:03d}.png", _normal(rng))
    for kind in ("logical_anomalies", "structural_anomalies"):
        for i in range(2):
            image, mask = _defect(rng, 250 if kind == "structural_anomalies" else 160)
            save(base / "test" / kind / f"{i:03d}.png", image)
            save(base / "ground_truth" / kind / f"{i:03d}" / "000.png",
                 mask * (10 if kind == "logical_anomalies" else 255))
            if kind == "logical_anomalies" and i == 0:  # a second region in its own mask file
                extra = np.zeros_like(mask)
                extra[-6:, -6:] = 20
                save(base / "ground_truth" / kind / f"{i:03d}" / "001.png", extra)
    (base / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS))
    return base


def test_visa_reader(tmp_path):
    rows = build_visa(tmp_path)
    assert dataset.list_categories("visa", str(tmp_path), "all") == ["pcbx"]
    data = dataset.read_category("visa", str(tmp_path), "pcbx", 32)
    assert data.train.shape == (5, 32, 32, 3) and data.validation is None
    assert list(data.test_labels) == [1, 1, 1, 0, 0] and data.test_defects[:3] == ["anomaly"] * 3
    assert all(data.test_masks[:3].reshape(3, -1).any(1)) and not data.test_masks[3:].any()
    image, mask = data.test[0].mean(-1), data.test_masks[0]  # the 0/1 mask sits on the bright square
    assert image[mask].mean() > 200 and image[~mask].mean() < 130
    assert [os.path.relpath(p, tmp_path) for p in data.test_paths] == sorted(r[3] for r in rows if r[1] == "test")
    with pytest.raises(UserError, match="this looks like VisA: set --config.data.format=visa"):
        dataset.list_categories("mvtec", str(tmp_path), "pcbx")
    os.remove(tmp_path / "pcbx" / "Data" / "Images" / "Anomaly" / "001.JPG")
    with pytest.raises(UserError, match="001.JPG: listed in split_csv/1cls.csv but not found"):
        dataset.read_category("visa", str(tmp_path), "pcbx", 32)


def test_loco_reader_unites_mask_folders_and_uses_its_validation_split(tmp_path):
    base = build_loco(tmp_path)
    data = dataset.read_category("loco", str(tmp_path), "boxes", 32)
    assert data.train.shape == (5, 32, 32, 3) and data.validation.shape == (2, 32, 32, 3)
    assert data.test_defects == ["good"] * 2 + ["logical_anomalies"] * 2 + ["structural_anomalies"] * 2
    first = data.test_masks[2]
    assert first[-2:, -2:].all()  # the region from 001.png is in the united mask
    assert first.sum() > data.test_masks[3].sum()
    with pytest.raises(UserError, match="this looks like MVTec LOCO: set --config.data.format=loco"):
        dataset.list_categories("mvtec", str(tmp_path), "nope")
    for f in (base / "ground_truth" / "structural_anomalies" / "001").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="no ground-truth masks for .*structural_anomalies/001.png"):
        dataset.read_category("loco", str(tmp_path), "boxes", 32)


def test_main_job_on_loco_reports_logical_and_structural_auroc(tmp_path):
    build_loco(tmp_path / "data")
    config = load_config_file(os.path.join(PROJECT, "configs", "stfpm.py")).get_config("smoke")
    config.data.root, config.data.format = str(tmp_path / "data"), "loco"
    config.train.steps = 2
    results = kdad_main.run(config, str(tmp_path / "run"))
    boxes = results["per_category"]["boxes"]
    assert results["data_format"] == "loco"
    assert 0.0 <= boxes["au_pro"] <= 1.0
    assert_metrics_from_checkpoint(config, tmp_path / "run", "boxes", boxes)
    assert set(boxes["image_auroc_per_defect"]) == {"logical_anomalies", "structural_anomalies"}
    header = open(tmp_path / "run" / "results.csv").readline().strip().split(",")
    assert header[-4:] == ["au_spro_logical", "au_spro_structural", "image_auroc_logical",
                           "image_auroc_structural"]
    # LOCO's sPRO from defects_config.json, per anomaly type and FPR limit (tests/test_spro.py
    # checks the values); the table's columns are those at FPR 0.05.
    assert set(boxes["au_spro"]) == {"all", "logical", "structural"}
    assert set(boxes["au_spro"]["logical"]) == {"0.05", "0.1", "0.3", "1.0"}
    assert boxes["au_spro_logical"] == boxes["au_spro"]["logical"]["0.05"]
    assert all(0.0 <= v <= 1.0 for group in boxes["au_spro"].values() for v in group.values())
