"""The records a layout module and the dataset reader hand each other (no reading here)."""

import dataclasses
from typing import List, NamedTuple, Optional, Tuple

import numpy as np


class TestItem(NamedTuple):
    path: str
    defect: str                           # 'good' for normal images
    mask_paths: Optional[Tuple[str, ...]]  # () for good images; None: anomalous, no ground truth


class Layout(NamedTuple):
    """What a layout module finds for one category (paths only, nothing read yet)."""

    train: List[str]
    test: List[TestItem]
    validation: Optional[List[str]] = None  # the dataset's own validation split (LOCO)
    # LOCO: {mask pixel value: loco.DefectType} from defects_config.json (regions for sPRO)
    defect_types: Optional[dict] = None


class Region(NamedTuple):
    """One ground-truth region (a LOCO mask file) for sPRO."""

    mask: np.ndarray      # [S, S] bool (or [H, W] at the original size)
    defect: str           # its defect type's name
    saturation: float     # pixels (at [S, S]) at which its sPRO reaches 1


@dataclasses.dataclass
class Category:
    name: str
    train: np.ndarray          # [N, S, S, 3] uint8 normal training images
    test: np.ndarray           # [M, S, S, 3] uint8
    test_labels: np.ndarray    # [M] int, 1 = anomalous
    test_masks: np.ndarray     # [M, S, S] bool (all False where there is no ground truth)
    test_paths: List[str]
    test_defects: List[str]
    # [V, S, S, 3] the dataset's own normal validation images; None: hold out
    # config.data.validation_fraction of ``train`` instead.
    validation: Optional[np.ndarray] = None
    # [M] bool: False for anomalous images that have an image-level label only (no mask).
    test_has_mask: Optional[np.ndarray] = None
    skipped: List[str] = dataclasses.field(default_factory=list)  # "path: why" per skipped file
    # LOCO with defects_config.json: [M] lists of Region per test image (sPRO); else None.
    test_regions: Optional[List[list]] = None
    # What evaluation at the original size (config.eval.original_size) re-reads: each test
    # image's (width, height) and mask files (None: no ground truth), the LOCO defect types.
    # None where the source has no files (TFDS).
    test_sizes: Optional[List[Tuple[int, int]]] = None
    test_mask_paths: Optional[List[Optional[Tuple[str, ...]]]] = None
    defect_types: Optional[dict] = None

    def __post_init__(self):
        if self.test_has_mask is None:
            self.test_has_mask = np.ones(len(self.test_labels), bool)
