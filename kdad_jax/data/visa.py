"""The VisA layout: one tree per category with both classes, and the split in a CSV.

``<root>/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``; paths relative to
``<root>``), images under ``<category>/Data/Images/{Normal,Anomaly}/``, masks under
``<category>/Data/Masks/Anomaly/`` with values 0/1 (read as non-zero = anomalous). Every anomalous
test image is named 'anomaly' (VisA has no per-defect folders).
"""

import csv
import os
from typing import Dict, List

from kdad_jax.data.records import Layout, TestItem
from kdad_jax.errors import UserError

SPLIT_CSV = os.path.join("split_csv", "1cls.csv")
COLUMNS = ("object", "split", "label", "image", "mask")


def _rows(root: str) -> List[Dict[str, str]]:
    path = os.path.join(root, SPLIT_CSV)
    if not os.path.isfile(path):
        raise UserError(f"{path}: VisA split file not found (format 'visa' expects the VisA tree "
                        f"with its split_csv/ folder)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
        return [{k: (v or "").strip() for k, v in row.items()} for row in reader]


def categories(root: str) -> List[str]:
    return sorted({row["object"] for row in _rows(root)})


def _item(root: str, row: Dict[str, str], csv_line: int) -> TestItem:
    path = os.path.join(root, row["image"])
    if row["label"] == "normal":
        return TestItem(path, "good", ())
    if row["label"] != "anomaly":
        raise UserError(f"{os.path.join(root, SPLIT_CSV)} line {csv_line}: label {row['label']!r} "
                        f"is neither 'normal' nor 'anomaly'")
    return TestItem(path, "anomaly", (os.path.join(root, row["mask"]),) if row["mask"] else None)


def find(root: str, name: str) -> Layout:
    train, test = [], []
    for line, row in enumerate(_rows(root), start=2):
        if row["object"] != name:
            continue
        if row["split"] == "train":
            if row["label"] != "normal":
                raise UserError(f"{os.path.join(root, SPLIT_CSV)} line {line}: an anomalous training "
                                f"image ({row['image']}); training uses normal images only")
            train.append(os.path.join(root, row["image"]))
        elif row["split"] == "test":
            test.append(_item(root, row, line))
    missing = [p for p in train + [i.path for i in test] if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{missing[0]}: listed in {SPLIT_CSV} but not found"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    if not train:
        raise UserError(f"{os.path.join(root, SPLIT_CSV)}: no training images for {name}")
    if not test:
        raise UserError(f"{os.path.join(root, SPLIT_CSV)}: no test images for {name}")
    return Layout(sorted(train), sorted(test, key=lambda i: i.path))
