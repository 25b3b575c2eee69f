"""Reading an MVTec-layout dataset that ``data/tfds_build.py`` wrote as array_record TFDS
(uint8 tensor features: no TensorFlow needed): the category list, random-access splits for
grain, and a whole category as the folder reader returns it."""

import os
from typing import List

import numpy as np
from PIL import Image

from kdad_jax.data import images as image_io
from kdad_jax.data.records import Category
from kdad_jax.errors import UserError

NAME = "kdad_mvtec"
VERSION = "1.0.0"


def tfds_module():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("TFDS datasets need the 'tfds' extra: pip install -e '.[tfds]'") from None
    return tfds


def is_tfds_root(root: str) -> bool:
    return os.path.isdir(os.path.join(root, NAME))


def categories(root: str) -> List[str]:
    folder = os.path.join(root, NAME)
    return sorted(c for c in os.listdir(folder) if os.path.isdir(os.path.join(folder, c, VERSION)))


def source(root: str, category: str, split: str):
    """Random-access array_record source of one split (what grain's MapDataset.source takes)."""
    tfds = tfds_module()
    builder = tfds.builder_from_directory(os.path.join(root, NAME, category, VERSION))
    return builder.as_data_source(split=split)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_category(root: str, name: str, image_size: int):
    """The same ``mvtec.Category`` the folder reader returns, from the TFDS dataset."""
    # TFDS stores examples in hashed-key order: sort by path, as the folder reader lists them.
    train = source(root, name, "train")
    train_order = np.argsort([_text(train[i]["path"]) for i in range(len(train))], kind="stable")
    train_images = np.stack([image_io.resize_rgb(Image.fromarray(train[int(i)]["image"]), image_size)
                             for i in train_order])
    test = source(root, name, "test")
    images, labels, masks, paths, defects = [], [], [], [], []
    for i in range(len(test)):
        example = test[i]
        images.append(image_io.resize_rgb(Image.fromarray(example["image"]), image_size))
        mask = Image.fromarray(example["mask"]).resize((image_size, image_size), Image.NEAREST)
        masks.append(np.asarray(mask) > 0)
        labels.append(int(example["label"]))
        paths.append(os.path.join(root, NAME, name, _text(example["path"])))
        defects.append(_text(example["defect"]))
    order = np.argsort(paths, kind="stable")
    return Category(name, train_images, np.stack(images)[order], np.array(labels)[order],
                    np.stack(masks)[order], [paths[i] for i in order], [defects[i] for i in order])
