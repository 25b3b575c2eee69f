"""The MVTec LOCO AD layout.

``<root>/<category>/train/good/*``, ``validation/good/*`` (the dataset's own validation split: it
replaces the held-out fraction of train), ``test/good|logical_anomalies|structural_anomalies/*``
and ``ground_truth/<defect>/<image stem>/*.png``: a folder of one or more masks per anomalous image
(one per defect region; their non-zero pixels are united). Image AUROC is also reported per
anomaly type (good vs logical, good vs structural), as the LOCO paper does. (LOCO's official
pixel metric is sPRO with per-defect saturation; we report the MVTec AU-PRO of the united masks.)
"""

import os
from typing import List

from kdad_jax.data import images as image_io
from kdad_jax.data import mvtec
from kdad_jax.data.records import Layout
from kdad_jax.errors import UserError

ANOMALY_TYPES = ("logical_anomalies", "structural_anomalies")


def categories(root: str) -> List[str]:
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d, "train")) and
                  os.path.isdir(os.path.join(root, d, "validation")))


def _mask_paths(category_root: str, defect: str, image_path: str):
    folder = os.path.join(category_root, "ground_truth", defect,
                          os.path.splitext(os.path.basename(image_path))[0])
    if not os.path.isdir(os.path.join(category_root, "ground_truth", defect)):
        return None
    masks = image_io.list_images(folder) if os.path.isdir(folder) else []
    if not masks:
        raise UserError(f"{folder}: no ground-truth masks for {image_path}")
    return tuple(masks)


def find(root: str, name: str) -> Layout:
    category_root = os.path.join(root, name)
    return Layout(mvtec.normal_images(os.path.join(category_root, "train", "good"), "training"),
                  mvtec.test_items(category_root, _mask_paths),
                  validation=mvtec.normal_images(os.path.join(category_root, "validation", "good"),
                                                 "validation"))
