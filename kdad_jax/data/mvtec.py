"""The MVTec AD folder layout (also what users' own folders usually look like).

``<root>/<category>/train/good/*``, ``test/good/*``, ``test/<defect>/*`` and
``ground_truth/<defect>/<name>_mask.png`` (no masks for good images). A defect folder without a
``ground_truth/<defect>/`` folder has image-level labels only: its images count for the image
metrics, and the pixel metrics are reported as null with the reason.
"""

import os
from typing import Callable, List, Sequence

from kdad_jax.data import images as image_io
from kdad_jax.data import tfds_source
from kdad_jax.data.records import Layout, TestItem
from kdad_jax.errors import UserError


def categories(root: str) -> List[str]:
    if tfds_source.is_tfds_root(root):
        return tfds_source.categories(root)
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "train")))


def normal_images(folder: str, what: str) -> List[str]:
    paths = image_io.list_images(folder, report_others=True) if os.path.isdir(folder) else []
    if not paths:
        raise UserError(f"{folder}: no {what} images")
    return paths


def _mask_paths(category_root: str, defect: str, image_path: str):
    """(mask path,) for an anomalous image, or None when the defect has no ground-truth folder."""
    folder = os.path.join(category_root, "ground_truth", defect)
    if not os.path.isdir(folder):
        return None
    stem = os.path.splitext(os.path.basename(image_path))[0]
    mask_path = os.path.join(folder, f"{stem}_mask.png")
    if not os.path.isfile(mask_path):
        raise UserError(f"{mask_path}: ground-truth mask missing for {image_path}")
    return (mask_path,)


def test_items(category_root: str, mask_paths: Callable = _mask_paths, test_folder: str = "test",
               not_defects: Sequence[str] = ()) -> List[TestItem]:
    """``<test_folder>/<defect>/*`` with ``mask_paths(category_root, defect, image_path)`` for
    anomalous ones (a tuple of mask files, or None for image-level labels only); LOCO and MVTec
    AD 2 pass their own (AD 2 keeps its masks in ``test_public/ground_truth``: ``not_defects``)."""
    test_root = os.path.join(category_root, test_folder)
    if not os.path.isdir(test_root):
        hint = ("; this looks like MVTec AD 2: set --config.data.format=mvtec_ad2"
                if os.path.isdir(os.path.join(category_root, "test_public")) else "")
        raise UserError(f"{test_root}: no test folder{hint}")
    items = []
    for defect in sorted(os.listdir(test_root)):
        folder = os.path.join(test_root, defect)
        if not os.path.isdir(folder) or defect in not_defects:
            continue
        for path in image_io.list_images(folder, report_others=True):
            masks = () if defect == "good" else mask_paths(category_root, defect, path)
            items.append(TestItem(path, defect, masks))
    if not items:
        raise UserError(f"{test_root}: no test images")
    return items


def find(root: str, name: str) -> Layout:
    category_root = os.path.join(root, name)
    return Layout(normal_images(os.path.join(category_root, "train", "good"), "training"),
                  test_items(category_root))
