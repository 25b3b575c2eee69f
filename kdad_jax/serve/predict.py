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

from kdad_jax import evaluate, train, validate
from kdad_jax.report import visualize
from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError, warn
from kdad_jax.workdir import make as make_folder

THRESHOLDS_FILE = "thresholds.json"


def read_thresholds(workdir: str) -> dict:
    """``W/thresholds.json`` as {category: record}; raises ``ValueError`` naming the file when it
    is not a JSON object (truncated, overwritten)."""
    path = os.path.join(workdir, THRESHOLDS_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: unreadable (not a JSON object)")
    return table


def save_thresholds(workdir: str, category: str, thresholds: dict, maps: np.ndarray,
                    train_steps: int) -> None:
    """Record, per category, what predict needs from evaluation (merged into one JSON file):
    ``thresholds`` from evaluate.decision_thresholds (anomalous when score >= threshold).
    An unreadable file is rebuilt (with a warning); the write is atomic (temporary file, rename),
    so an interrupted one never leaves a truncated file."""
    path = os.path.join(workdir, THRESHOLDS_FILE)
    try:
        table = read_thresholds(workdir)
    except ValueError as e:
        warn(f"{e}; rebuilding it (other categories' thresholds return when they are evaluated)")
        table = {}
    table[category] = {**thresholds, "color_range": evaluate.color_range(maps),
                       "train_steps": train_steps}
    with open(path + ".tmp", "w") as f:
        json.dump(table, f, indent=2)
    os.replace(path + ".tmp", path)


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


def _saved_thresholds(workdir: str, category: str, threshold: Optional[float]) -> dict:
    """The category's record in ``W/thresholds.json``; an unreadable file is an error unless
    ``--threshold`` replaces what it holds."""
    try:
        return read_thresholds(workdir).get(category, {})
    except ValueError as e:
        if threshold is None:
            raise UserError(f"{e}: run --mode=eval to rebuild it, or pass --threshold") from None
        warn(f"{e}; using --threshold={threshold:g} and this batch's colour scale")
        return {}


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _panel(image: np.ndarray, amap: np.ndarray, color_range, pixel_threshold, title: str) -> Image.Image:
    heat = visualize.overlay(image, amap, *color_range)
    if pixel_threshold is not None:
        heat[_contour(amap >= pixel_threshold)] = (255, 255, 255)
    return visualize.captioned([image, heat], title)


def printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (file names from another system's encoding, read
    by Python as surrogates) written as ``\\udcXX`` escapes, so CSV files and captions take it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def output_names(paths: List[str]) -> List[str]:
    """One distinct file stem per input: the path relative to the inputs' common folder with
    ``__`` for ``/``; when two stems would collide (``a.png`` and ``a.jpg``), those keep their
    extension (``a_png``, ``a_jpg``), so no overlay overwrites another."""
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    relative = [os.path.relpath(p, base).replace(os.sep, "__") for p in paths]
    stems = [os.path.splitext(r)[0] for r in relative]
    clashing = {s for s in stems if stems.count(s) > 1}
    return [(stem + "_" + os.path.splitext(r)[1].lstrip(".").lower()) if stem in clashing else stem
            for stem, r in zip(stems, relative)]


def _write_outputs(output, paths, images, maps, threshold, color_range, pixel_threshold,
                   save_maps) -> List[dict]:
    """Overlay PNG (and .npy map) per image; returns the scores.csv rows."""
    rows = []
    for path, name, image, amap in zip(paths, output_names(paths), images, maps):
        score = float(amap.max())
        flag = None if threshold is None else bool(score >= threshold)
        verdict = "" if flag is None else ("ANOMALOUS" if flag else "good")
        _panel(image, amap, color_range, pixel_threshold,
               f"{printable(os.path.basename(path))}  score {score:.3f}  {verdict}").save(
            os.path.join(output, f"{name}.png"))
        if save_maps:
            os.makedirs(os.path.join(output, "maps"), exist_ok=True)
            np.save(os.path.join(output, "maps", f"{name}.npy"), amap)
        rows.append({"path": printable(path), "score": score, "is_anomalous": "" if flag is None else int(flag),
                     "error": ""})
    return rows


def run(config, workdir: str, inputs: str, output: str, threshold: Optional[float] = None,
        save_maps: bool = False) -> List[dict]:
    from kdad_jax.methods import get_method

    validate.check(config)
    category = _category(config, workdir)
    method = get_method(config)
    trained = train.load_trained(config, workdir, category, method)
    saved = _saved_thresholds(workdir, category, threshold)
    threshold = saved.get("image_threshold") if threshold is None else threshold
    skipped, requested = [], list_inputs(inputs)
    images, paths = image_io.read_images(requested, config.image_size, skipped)
    read = set(paths)
    unread = [p for p in requested if p not in read]  # in order, one per ``skipped`` message
    rows = [{"path": printable(p), "score": "", "is_anomalous": "", "error": printable(message[len(p) + 2:])}
            for p, message in zip(unread, skipped)]  # unreadable files: a row that says why
    make_folder(output, "--output")
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
