"""The MVTec LOCO AD layout.

``<root>/<category>/train/good/*``, ``validation/good/*`` (the dataset's own validation split: it
replaces the held-out fraction of train), ``test/good|logical_anomalies|structural_anomalies/*``
and ``ground_truth/<defect>/<image stem>/*.png``: a folder of one or more masks per anomalous image
(one per defect region; their non-zero pixels are united). Image AUROC is also reported per
anomaly type (good vs logical, good vs structural), as the LOCO paper does. The pixel metrics are
MVTec AD's on the united masks plus LOCO's own, AU-sPRO: each mask file is one region whose
pixel value names its defect type in ``<category>/defects_config.json``, with the saturation
threshold of that type (``kdad_jax.evaluation.metrics.spro_curve``).
"""

import json

import os
from typing import Dict, List, NamedTuple, Optional

import numpy as np
from PIL import Image

from kdad_jax.data import images as image_io
from kdad_jax.data import mvtec
from kdad_jax.data.records import Layout, Region
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
                                                 "validation"),
                  defect_types=read_defect_types(category_root))


class DefectType(NamedTuple):
    name: str
    saturation_threshold: float
    relative: bool


def read_defect_types(category_root: str) -> Optional[Dict[int, DefectType]]:
    """{mask pixel value: DefectType} from ``defects_config.json``; None when the file is absent
    (then no sPRO)."""
    path = os.path.join(category_root, "defects_config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            entries = json.load(f)
        return {int(e["pixel_value"]): DefectType(str(e["defect_name"]), float(e["saturation_threshold"]),
                                                 bool(e["relative_saturation"])) for e in entries}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: not a LOCO defects config ({type(e).__name__}: {e}); expected a "
                        f"list of {{defect_name, pixel_value, saturation_threshold, "
                        f"relative_saturation}}") from None


def read_regions(mask_paths, size: Optional[int], defect_types: Dict[int, DefectType]) -> List[Region]:
    """One Region per mask file of an image, its mask resized (nearest) to [size, size] (``size``
    None: kept at its own size, with the evaluator's saturation area as it is).

    The saturation area is the evaluator's at the mask's original size, scaled by how much the
    resize changed the region's area (ours: so a relative threshold of 1 still needs the whole
    region, an absolute one the same fraction of it). A region the resize erases is left out."""
    regions = []
    for path in mask_paths:
        values = image_io.mask_values(image_io.open_image(path))
        if values.ndim == 3:
            values = values.max(axis=2)
        present = np.unique(values[values > 0])
        if len(present) != 1:
            raise UserError(f"{path}: a LOCO mask holds one defect value, found {present.tolist()}")
        value = int(present[0])
        if value not in defect_types:
            raise UserError(f"{path}: pixel value {value} is not in defects_config.json "
                            f"(it lists {sorted(defect_types)})")
        kind = defect_types[value]
        original = values > 0
        resized = original if size is None else np.asarray(
            Image.fromarray(original.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
        if not resized.any():
            continue
        saturation = saturation_area(int(original.sum()), kind.saturation_threshold, kind.relative)
        regions.append(Region(resized, kind.name, saturation * resized.sum() / original.sum()))
    return regions


def saturation_area(defect_area: int, threshold: float, relative: bool) -> float:
    """Pixels at which a region's sPRO saturates (the evaluator's rule): ``threshold`` × area
    (truncated) when relative, else min(threshold, area). Ours: at least one pixel (the evaluator
    divides by zero for a relative threshold on a region smaller than 1 / threshold)."""
    area = int(threshold * defect_area) if relative else min(threshold, defect_area)
    return float(max(area, 1))
