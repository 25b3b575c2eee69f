"""One category of an anomaly-detection dataset in memory, whatever the layout on disk.

A layout module (``mvtec``, ``visa``, ``loco``, ``mvtec_ad2``) lists file paths; ``assemble`` reads them the same
way for all: RGB resized to ``image_size`` (masks nearest, non-zero = anomalous, several mask
files per image are united), unreadable files skipped with a warning and recorded in
``Category.skipped``. ``config.data.format`` picks the layout; a TFDS dataset written by
``data/tfds_build.py`` is recognized in the ``mvtec`` format.
"""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from kdad_jax.data import images as image_io
from kdad_jax.data import loco, mvtec, mvtec_ad2, tfds_source, visa
from kdad_jax.data.records import Category, Layout, TestItem  # noqa: F401 - the records, re-exported
from kdad_jax.errors import UserError, warn

FORMATS = ("mvtec", "visa", "loco", "mvtec_ad2")


def _layout_module(data_format: str):
    modules = {"mvtec": mvtec, "visa": visa, "loco": loco, "mvtec_ad2": mvtec_ad2}
    if data_format not in modules:
        raise UserError(f"config.data.format={data_format!r}: choose one of {', '.join(FORMATS)}")
    return modules[data_format]


def list_categories(data_format: str, root: str, category) -> List[str]:
    """Resolve ``category`` ('all', 'a,b' or a list) against what ``root`` holds."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: dataset root not found")
    available = _layout_module(data_format).categories(root)
    if isinstance(category, str):
        wanted = available if category == "all" else [c.strip() for c in category.split(",") if c.strip()]
    else:
        wanted = list(category)
    if not wanted:
        raise UserError(f"{root}: no categories in the {data_format} layout{_layout_hint(root, data_format)}")
    for name in wanted:
        if name not in available:
            raise UserError(f"{os.path.join(root, name)}: category not found "
                            f"(available: {', '.join(available) or 'none'}){_layout_hint(root, data_format)}")
    return wanted


def _layout_hint(root: str, data_format: str) -> str:
    """'; looks like VisA: set --config.data.format=visa' when the tree says so."""
    if data_format != "visa" and os.path.isdir(os.path.join(root, "split_csv")):
        return "; this looks like VisA: set --config.data.format=visa"
    subfolders = [os.path.join(root, d) for d in os.listdir(root)] if os.path.isdir(root) else []
    if data_format != "loco" and any(os.path.isdir(os.path.join(d, "validation")) and
                                     os.path.isdir(os.path.join(d, "test", "logical_anomalies"))
                                     for d in subfolders):
        return "; this looks like MVTec LOCO: set --config.data.format=loco"
    if data_format != "mvtec_ad2" and any(os.path.isdir(os.path.join(d, "test_public")) for d in subfolders):
        return "; this looks like MVTec AD 2: set --config.data.format=mvtec_ad2"
    return ""


def read_category(data_format: str, root: str, name: str, image_size: int) -> Category:
    if data_format == "mvtec" and tfds_source.is_tfds_root(root):
        return tfds_source.read_category(root, name, image_size)
    layout = _layout_module(data_format).find(root, name)
    return assemble(name, layout, image_size)


def _read_normal(paths: Sequence[str], size: int, skipped: List[str], what: str, folder: str):
    images, _ = image_io.read_images(paths, size, skipped)
    if images is None:
        raise UserError(f"{folder}: no readable {what} images")
    flat = images.reshape(len(images), -1)
    if (flat.min(axis=1) == flat.max(axis=1)).all():  # nothing to learn; the loss would be NaN
        raise UserError(f"{folder}: all {len(images)} readable {what} images are one flat colour "
                        f"(value {int(flat[0, 0])} in the first): check the camera export or the folder")
    return images


def _read_mask(item: TestItem, size: int, original_size) -> np.ndarray:
    """[S, S] bool, the union of the item's mask files. A broken mask is an error, not a skip:
    metrics over wrong ground truth would be wrong without anyone noticing."""
    mask = np.zeros((size, size), bool)
    for mask_path in item.mask_paths or ():
        mask |= image_io.load_mask(mask_path, size, original_size)
    return mask


def assemble(name: str, layout: Layout, image_size: int) -> Category:
    """Read what ``layout`` lists into a ``Category`` (see the module docstring)."""
    skipped: List[str] = []
    train_folder = os.path.dirname(layout.train[0]) if layout.train else name
    train = _read_normal(layout.train, image_size, skipped, "training", train_folder)
    validation = None
    if layout.validation is not None:
        validation = _read_normal(layout.validation, image_size, skipped, "validation",
                                  os.path.dirname(layout.validation[0]) if layout.validation else name)
    rows = []
    for item in layout.test:
        loaded = image_io.try_load(item.path, image_size, skipped)
        if loaded is not None:
            rows.append((item, loaded[0], _read_mask(item, image_size, loaded[1]), loaded[1]))
    if not rows:
        raise UserError(f"{name}: no readable test images")
    items, images, masks, sizes = zip(*rows)
    _warn_unlabelled(name, items)
    regions = None
    if layout.defect_types is not None:
        regions = [loco.read_regions(i.mask_paths or (), image_size, layout.defect_types) for i in items]
    return Category(name, train, np.stack(images), np.array([int(i.defect != "good") for i in items]),
                    np.stack(masks), [i.path for i in items], [i.defect for i in items],
                    validation=validation, skipped=skipped,
                    test_has_mask=np.array([i.mask_paths is not None for i in items]),
                    test_regions=regions, test_sizes=[tuple(s) for s in sizes],
                    test_mask_paths=[i.mask_paths for i in items], defect_types=layout.defect_types)


def original_ground_truth(data: Category) -> Tuple[List[np.ndarray], Optional[List[list]]]:
    """Each test image's ground truth at its own size: masks [H_i, W_i] bool (all False without
    ground truth) and, for LOCO, its regions (sPRO) unresized — what MVTec's evaluators score."""
    if data.test_sizes is None:
        raise UserError(f"{data.name}: config.eval.original_size=True needs the test images' files "
                        f"(this source holds resized images only); set it to False")
    masks = []
    for (width, height), paths in zip(data.test_sizes, data.test_mask_paths):
        mask = np.zeros((height, width), bool)
        for path in paths or ():
            mask |= image_io.load_mask(path, None, (width, height))
        masks.append(mask)
    regions = None
    if data.defect_types is not None:
        regions = [loco.read_regions(paths or (), None, data.defect_types) for paths in data.test_mask_paths]
    return masks, regions


def _warn_unlabelled(name: str, items: Sequence[TestItem]) -> None:
    without = sorted({i.defect for i in items if i.mask_paths is None})
    if without:
        count = sum(i.mask_paths is None for i in items)
        warn(f"{name}: {count} anomalous test image(s) have no ground-truth mask ({', '.join(without)}): "
             f"image metrics only, pixel metrics will be null")
