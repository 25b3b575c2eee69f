"""The MVTec AD 2 layout (8 scenes, 2.6–5 MP images).

``<root>/<scene>/train/good/*``, ``validation/good/*`` (normal images that calibrate the maps and
set the segmentation threshold; they replace the held-out fraction of train),
``test_public/good/*``, ``test_public/bad/*`` and ``test_public/ground_truth/bad/<stem>_mask.png``.
The private test sets (``test_private``, ``test_private_mixed``) have no labels here: MVTec's
server scores them. Images are resized as they are read, one at a time, so a scene's 5 MP files
never sit in memory together. Its protocol's metrics: AU-PRO at FPR ≤ 0.05 (put 0.05 in
``config.eval.fpr_limits``) and SegF1, the pixel F1 of the maps thresholded at a value taken from
the validation images alone (``evaluate.segmentation_f1``).
"""

import os
from typing import List

from kdad_jax.data import mvtec
from kdad_jax.data.records import Layout
from kdad_jax.errors import UserError

TEST_SPLIT = "test_public"


def categories(root: str) -> List[str]:
    return sorted(d for d in os.listdir(root)
                  if all(os.path.isdir(os.path.join(root, d, split))
                         for split in ("train", "validation", TEST_SPLIT)))


def _mask_paths(category_root: str, defect: str, image_path: str):
    stem = os.path.splitext(os.path.basename(image_path))[0]
    mask_path = os.path.join(category_root, TEST_SPLIT, "ground_truth", defect, f"{stem}_mask.png")
    if not os.path.isfile(mask_path):
        raise UserError(f"{mask_path}: ground-truth mask missing for {image_path}")
    return (mask_path,)


def find(root: str, name: str) -> Layout:
    category_root = os.path.join(root, name)
    return Layout(mvtec.normal_images(os.path.join(category_root, "train", "good"), "training"),
                  mvtec.test_items(category_root, _mask_paths, test_folder=TEST_SPLIT,
                                   not_defects=("ground_truth",)),
                  validation=mvtec.normal_images(os.path.join(category_root, "validation", "good"),
                                                 "validation"))
