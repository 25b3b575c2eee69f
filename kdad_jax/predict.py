"""``--mode=predict``: score new images with the latest checkpoint of a trained category.

    python -m kdad_jax.main --config=configs/efficientad.py:demo --workdir=W --mode=predict \
        --input=/line/camera3 --output=OUT [--threshold=T] [--save_maps]

Writes ``OUT/scores.csv`` (path, score, is_anomalous), one overlay PNG per image (input | heat
map on the category's fixed colour scale with the predicted-defect contour) and, with
``--save_maps``, the raw maps as ``OUT/maps/<name>.npy``. The decision threshold is the one
evaluation chose and saved in ``W/thresholds.json`` (image F1-max on the test set);
``--threshold`` overrides it. The contour is drawn at the pixel F1-max threshold.
"""

import csv
import json
import os
from typing import List, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from kdad_jax import evaluate, train, visualize
from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError

THRESHOLDS_FILE = "thresholds.json"


def save_thresholds(workdir: str, category: str, thresholds: dict, maps: np.ndarray,
                    train_steps: int) -> None:
    """Record, per category, what predict needs from evaluation (merged into one JSON file):
    ``thresholds`` from evaluate.decision_thresholds (anomalous when score >= threshold)."""
    path = os.path.join(workdir, THRESHOLDS_FILE)
    table = json.load(open(path)) if os.path.exists(path) else {}
    table[category] = {**thresholds, "color_range": evaluate.color_range(maps),
                       "train_steps": train_steps}
    with open(path, "w") as f:
        json.dump(table, f, indent=2)


def list_inputs(spec: str) -> List[str]:
    """Comma-separated files and/or folders (searched recursively) -> image paths."""
    paths = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        if os.path.isdir(item):
            paths += image_io.list_images(item, recursive=True)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    if not paths:
        raise UserError(f"{spec}: no images found")
    return paths


def _category(config, workdir: str) -> str:
    trained = sorted(os.listdir(os.path.join(workdir, "checkpoints"))) \
        if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    wanted = [c for c in str(config.data.category).split(",") if c and c != "all"]
    if len(wanted) == 1:
        return wanted[0]
    if len(trained) == 1:
        return trained[0]
    raise UserError(f"{workdir}: say which trained category to use with --config.data.category=NAME "
                    f"(trained: {', '.join(trained) or 'none'})")


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _panel(image: np.ndarray, amap: np.ndarray, color_range, pixel_threshold, title: str) -> Image.Image:
    heat = visualize.overlay(image, amap, *color_range)
    if pixel_threshold is not None:
        heat[_contour(amap >= pixel_threshold)] = (255, 255, 255)
    return visualize.captioned([image, heat], title)


def _write_outputs(output, paths, images, maps, threshold, color_range, pixel_threshold,
                   save_maps) -> List[dict]:
    """Overlay PNG (and .npy map) per image; returns the scores.csv rows."""
    rows = []
    for path, image, amap in zip(paths, images, maps):
        score = float(amap.max())
        flag = None if threshold is None else bool(score >= threshold)
        name = os.path.splitext(os.path.relpath(path, os.path.commonpath(paths) if len(paths) > 1
                                                else os.path.dirname(path)))[0].replace(os.sep, "__")
        verdict = "" if flag is None else ("ANOMALOUS" if flag else "good")
        _panel(image, amap, color_range, pixel_threshold,
               f"{os.path.basename(path)}  score {score:.3f}  {verdict}").save(
            os.path.join(output, f"{name}.png"))
        if save_maps:
            os.makedirs(os.path.join(output, "maps"), exist_ok=True)
            np.save(os.path.join(output, "maps", f"{name}.npy"), amap)
        rows.append({"path": path, "score": score, "is_anomalous": "" if flag is None else int(flag),
                     "error": ""})
    return rows


def run(config, workdir: str, inputs: str, output: str, threshold: Optional[float] = None,
        save_maps: bool = False) -> List[dict]:
    from kdad_jax.methods import get_method

    category = _category(config, workdir)
    method = get_method(config)
    trained = train.load_trained(config, workdir, category, method)
    saved = {}
    if os.path.exists(os.path.join(workdir, THRESHOLDS_FILE)):
        saved = json.load(open(os.path.join(workdir, THRESHOLDS_FILE))).get(category, {})
    threshold = saved.get("image_threshold") if threshold is None else threshold
    skipped, requested = [], list_inputs(inputs)
    images, paths = image_io.read_images(requested, config.image_size, skipped)
    read = set(paths)
    unread = [p for p in requested if p not in read]  # in order, one per ``skipped`` message
    rows = [{"path": p, "score": "", "is_anomalous": "", "error": message[len(p) + 2:]}
            for p, message in zip(unread, skipped)]  # unreadable files: a row that says why
    os.makedirs(output, exist_ok=True)
    if images is not None:
        maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                     trained.stats, images, config.eval.batch_size)
        color_range = saved.get("color_range") or evaluate.color_range(maps)
        rows += _write_outputs(output, paths, images, maps, threshold, color_range,
                               saved.get("pixel_threshold"), save_maps)
    with open(os.path.join(output, "scores.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "score", "is_anomalous", "error"])
        writer.writeheader()
        writer.writerows(rows)
    note = f"threshold {threshold:.4g}" if threshold is not None else "no threshold (evaluate first or pass --threshold)"
    unreadable = f", {len(skipped)} unreadable (see the error column)" if skipped else ""
    print(f"{category}: scored {len(rows) - len(skipped)} images{unreadable} ({note}); "
          f"{os.path.join(output, 'scores.csv')}", flush=True)
    return rows
