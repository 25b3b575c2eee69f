"""``--mode=predict``: score new images with the latest checkpoint of a trained category.

    python -m kdad_jax.main --config=configs/efficientad.py:demo --workdir=W --mode=predict \
        --input=/line/camera3 --output=OUT [--threshold=T] [--save_maps]

Writes ``OUT/scores.csv`` (path, overlay, score, is_anomalous, error), one overlay PNG per image
(input | heat map on the category's fixed colour scale with the predicted-defect contour), named
from the input's relative path (``output_names``) and, with ``--save_maps``, the raw maps as
``OUT/maps/<name>.npy``. The decision threshold is the one
evaluation chose and saved in ``W/thresholds.json`` (image F1-max on the test set);
``--threshold`` overrides it. The contour is drawn at the pixel F1-max threshold.
"""

import csv
import hashlib
import json
import os
import urllib.parse
from typing import List, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from kdad_jax import files
from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError, warn
from kdad_jax.evaluation import evaluate
from kdad_jax.jobs import validate
from kdad_jax.report import escape, visualize
from kdad_jax.training import train
from kdad_jax.training.workdir import make as make_folder

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
    table[category] = {**thresholds, "color_range": visualize.color_range(maps),
                       "train_steps": train_steps}
    files.write_text(path, json.dumps(table, indent=2))


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_inputs(spec: str, output: Optional[str] = None) -> List[str]:
    """Comma-separated files and/or folders (searched recursively) -> image paths; files under
    ``output`` (overlays of an earlier run written inside the input folder) are left out."""
    paths = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        if os.path.isdir(item):
            paths += image_io.list_images(item, recursive=True)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    if output is not None:
        ours = [p for p in paths if _inside(p, output)]
        if ours:
            warn(f"left out {len(ours)} image(s) under --output={output} (this command's output)")
            paths = [p for p in paths if not _inside(p, output)]
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


# Characters a file name keeps as they are; every other one (``/``, ``%``, control characters,
# bytes that are not UTF-8) is written as ``%XX``, so ``urllib.parse.unquote`` gives the path back.
_KEPT = " -_.,+=@()[]~"
_LONGEST = 240  # bytes; file systems allow 255


def _encoded(relative: str, upper_too: bool) -> str:
    name = urllib.parse.quote(relative.replace(os.sep, "/"), safe=_KEPT, errors="surrogateescape")
    if name[:1] in "=+-@":  # a spreadsheet would read the scores.csv cell as a formula
        name = f"%{ord(name[0]):02X}{name[1:]}"
    if upper_too:  # for names that differ only in case: unique on case-insensitive disks too
        name = "".join(f"%{ord(c):02X}" if "A" <= c <= "Z" else c for c in name)
    if len(name.encode()) > _LONGEST:  # too long to be reversible: unique, and scores.csv names it
        name = f"{name[:_LONGEST - 50]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return name


def output_names(paths: List[str]) -> List[str]:
    """One distinct overlay stem per input: its path relative to the inputs' common folder,
    percent-encoded (``sub/x.png`` -> ``sub%2Fx.png``, ``sub__x.png`` stays), so
    ``urllib.parse.unquote(stem)`` is the relative path. Stems that differ only in case
    (``a.png``, ``a.PNG``) also encode their capitals, so no overlay replaces another on a
    case-insensitive disk either. ``scores.csv`` names each row's overlay."""
    absolute = [os.path.abspath(p) for p in paths]
    base = os.path.commonpath(absolute) if len(paths) > 1 else os.path.dirname(absolute[0])
    relative = [os.path.relpath(p, base) for p in absolute]
    plain = [_encoded(r, upper_too=False) for r in relative]
    folded = [n.casefold() for n in plain]
    return [_encoded(r, upper_too=folded.count(f) > 1) for r, f in zip(relative, folded)]


def _write_outputs(output, paths, images, maps, threshold, color_range, pixel_threshold,
                   save_maps) -> List[dict]:
    """Overlay PNG (and .npy map) per image; returns the scores.csv rows."""
    rows = []
    for path, name, image, amap in zip(paths, output_names(paths), images, maps):
        score = float(amap.max())
        flag = None if threshold is None else bool(score >= threshold)
        verdict = "" if flag is None else ("ANOMALOUS" if flag else "good")
        visualize.save_png(os.path.join(output, f"{name}.png"), _panel(
            image, amap, color_range, pixel_threshold,
            f"{printable(os.path.basename(path))}  score {score:.3f}  {verdict}"))
        if save_maps:
            os.makedirs(os.path.join(output, "maps"), exist_ok=True)
            with files.replacing(os.path.join(output, "maps", f"{name}.npy"), "wb") as f:
                np.save(f, amap)
        rows.append({"path": escape.csv_cell(printable(path)), "overlay": f"{name}.png", "score": score,
                     "is_anomalous": "" if flag is None else int(flag), "error": ""})
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
    skipped, requested = [], list_inputs(inputs, output)
    images, paths = image_io.read_images(requested, config.image_size, skipped)
    read = set(paths)
    unread = [p for p in requested if p not in read]  # in order, one per ``skipped`` message
    rows = [{"path": escape.csv_cell(printable(p)), "overlay": "", "score": "", "is_anomalous": "",
             "error": escape.csv_cell(printable(message[len(p) + 2:]))}
            for p, message in zip(unread, skipped)]  # unreadable files: a row that says why
    make_folder(output, "--output")
    if images is not None:
        maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                     trained.stats, images, config.eval.batch_size)
        color_range = saved.get("color_range") or visualize.color_range(maps)
        rows += _write_outputs(output, paths, images, maps, threshold, color_range,
                               saved.get("pixel_threshold"), save_maps)
    with files.replacing(os.path.join(output, "scores.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "overlay", "score", "is_anomalous", "error"])
        writer.writeheader()
        writer.writerows(rows)
    note = f"threshold {threshold:.4g}" if threshold is not None else "no threshold (evaluate first or pass --threshold)"
    unreadable = f", {len(skipped)} unreadable (see the error column)" if skipped else ""
    print(f"{category}: scored {len(rows) - len(skipped)} images{unreadable} ({note}); "
          f"{os.path.join(output, 'scores.csv')}", flush=True)
    return rows
