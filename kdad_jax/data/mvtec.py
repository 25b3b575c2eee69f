"""Reader for the MVTec AD folder layout.

``<root>/<category>/train/good/*``, ``test/good/*``, ``test/<defect>/*`` and
``ground_truth/<defect>/<name>_mask.png`` (no masks for good images). Every image is converted to
RGB and resized to ``image_size``; masks are resized with nearest neighbour.
"""

import dataclasses
import os
from typing import List

import numpy as np

from kdad_jax.data import images as image_io
from kdad_jax.data import tfds_build
from kdad_jax.errors import UserError


@dataclasses.dataclass
class Category:
    name: str
    train: np.ndarray          # [N, S, S, 3] uint8 (train/good)
    test: np.ndarray           # [M, S, S, 3] uint8
    test_labels: np.ndarray    # [M] int, 1 = anomalous
    test_masks: np.ndarray     # [M, S, S] bool
    test_paths: List[str]
    test_defects: List[str]


def list_categories(root: str, category) -> List[str]:
    """Resolve ``category`` ('all', 'a,b' or a list) against the folders under ``root`` (or the
    categories of a TFDS dataset written by data/tfds_build.py)."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: dataset root not found")
    if tfds_build.is_tfds_root(root):
        available = tfds_build.categories(root)
    else:
        available = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "train")))
    if isinstance(category, str):
        wanted = available if category == "all" else [c.strip() for c in category.split(",") if c.strip()]
    else:
        wanted = list(category)
    if not wanted:
        raise UserError(f"{root}: no category folders with a train/ subfolder")
    for name in wanted:
        if name not in available and not os.path.isdir(os.path.join(root, name)):
            raise UserError(f"{os.path.join(root, name)}: category not found "
                            f"(available: {', '.join(available) or 'none'})")
    return wanted


def _mask_path(root: str, defect: str, image_path: str) -> str:
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(root, "ground_truth", defect, f"{stem}_mask.png")


def read_train(root: str, image_size: int) -> np.ndarray:
    folder = os.path.join(root, "train", "good")
    paths = image_io.list_images(folder) if os.path.isdir(folder) else []
    if not paths:
        raise UserError(f"{folder}: no training images")
    return np.stack([image_io.load_rgb(p, image_size) for p in paths])


def read_test(root: str, image_size: int):
    test_root = os.path.join(root, "test")
    if not os.path.isdir(test_root):
        raise UserError(f"{test_root}: no test folder")
    images, labels, masks, paths, defects = [], [], [], [], []
    for defect in sorted(os.listdir(test_root)):
        folder = os.path.join(test_root, defect)
        if not os.path.isdir(folder):
            continue
        for path in image_io.list_images(folder):
            images.append(image_io.load_rgb(path, image_size))
            is_good = defect == "good"
            if is_good:
                masks.append(np.zeros((image_size, image_size), bool))
            else:
                mask_path = _mask_path(root, defect, path)
                if not os.path.isfile(mask_path):
                    raise UserError(f"{mask_path}: ground-truth mask missing for {path}")
                masks.append(image_io.load_mask(mask_path, image_size, image_io.original_size(path)))
            labels.append(0 if is_good else 1)
            paths.append(path)
            defects.append(defect)
    if not images:
        raise UserError(f"{test_root}: no test images")
    return np.stack(images), np.array(labels), np.stack(masks), paths, defects


def read_category(root: str, name: str, image_size: int) -> Category:
    if tfds_build.is_tfds_root(root):
        return tfds_build.read_category(root, name, image_size)
    category_root = os.path.join(root, name)
    train = read_train(category_root, image_size)
    test, labels, masks, paths, defects = read_test(category_root, image_size)
    return Category(name, train, test, labels, masks, paths, defects)
