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


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """Resize to 2·size, center crop size. -> [size, size, 3] uint8."""
    image = image_io.to_rgb(image).resize((2 * size, 2 * size), Image.BILINEAR)
    start = size // 2
    return np.asarray(image.crop((start, start, start + size, start + size)), np.uint8)


class FolderSource:
    """Random-access source over an image folder (recursive), read lazily: ImageNet-sized folders fit."""

    def __init__(self, root: str, size: int):
        import os
        if not os.path.isdir(root):
            raise UserError(f"{root}: penalty image folder not found")
        self.paths = image_io.list_images(root, recursive=True)
        if not self.paths:
            raise UserError(f"{root}: no images in penalty folder")
        self.size = size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return prepare(image, self.size)
        except OSError as e:
            raise UserError(f"{path}: unreadable penalty image ({e})") from None


class ArraySource:
    """Random-access source over prepared in-memory images."""

    def __init__(self, arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, index):
        return self.arrays[index]


def skimage_photos(size: int) -> ArraySource:
    """The natural photos and textures scikit-image ships inside its wheel (no download)."""
    import skimage.data
    arrays = []
    for name in SKIMAGE_PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype != np.uint8:
            array = (array > 0).astype(np.uint8) * 255
        arrays.append(prepare(Image.fromarray(array), size))
    return ArraySource(arrays)


def penalty_source(root: str, size: int):
    return FolderSource(root, size) if root else skimage_photos(size)
