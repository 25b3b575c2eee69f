"""Pretraining (penalty) images for EfficientAD: an image folder, or scikit-image's photos.

Each image is prepared as the reference does: resize to 2S × 2S, then center crop S × S
(random grayscale is applied later, per step, in the pipeline).
"""

import numpy as np
from PIL import Image

from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                  "immunohistochemistry", "camera", "coins", "brick", "grass", "gravel")
# The textures the embedded dataset is made of: left out where a teacher is distilled, so its
# quality on the embedded categories is measured on textures it never saw.
SKIMAGE_TEXTURES = ("brick", "grass", "gravel")


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """Resize to 2·size, center crop size. -> [size, size, 3] uint8."""
    image = image_io.to_rgb(image).resize((2 * size, 2 * size), Image.BILINEAR)
    start = size // 2
    return np.asarray(image.crop((start, start, start + size, start + size)), np.uint8)


def _load_prepared(path: str, size: int) -> np.ndarray:
    image = image_io.open_image(path)  # one-line UserError naming the file when unreadable
    try:
        return prepare(image, size)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable penalty image ({e})") from None


def folder_source(root: str, size: int) -> image_io.FolderSource:
    """Penalty images under ``root`` (recursive), read lazily: ImageNet-sized folders fit."""
    return image_io.FolderSource(root, size, load=_load_prepared, kind="penalty")


class ArraySource:
    """Random-access source over prepared in-memory images."""

    def __init__(self, arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, index):
        return self.arrays[index]


def skimage_photos(size: int, names=SKIMAGE_PHOTOS, load=prepare) -> ArraySource:
    """The natural photos and textures scikit-image ships inside its wheel (no download), each
    made into an array by ``load(image, size)`` (default: the penalty images' preparation)."""
    import skimage.data
    arrays = []
    for name in names:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype != np.uint8:
            array = (array > 0).astype(np.uint8) * 255
        arrays.append(load(Image.fromarray(array), size))
    return ArraySource(arrays)


def penalty_source(root: str, size: int):
    return folder_source(root, size) if root else skimage_photos(size)
