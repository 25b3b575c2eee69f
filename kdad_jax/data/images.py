"""Reading image and mask files into uint8 arrays, with errors that name the file."""

import os
from typing import Callable, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdad_jax.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str, recursive: bool = False):
    """Sorted image files in ``folder`` (by extension)."""
    if recursive:
        found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)]
    return sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))


def _open(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, 16-bit and RGBA images -> 8-bit RGB (alpha dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, np.float64)
        full_scale = 255.0 if image.mode == "I" and values.max() <= 255 else 65535.0
        image = Image.fromarray((np.clip(values / full_scale, 0, 1) * 255).round().astype(np.uint8), "L")
    return image.convert("RGB")


def original_size(path: str) -> Tuple[int, int]:
    return _open(path).size


def resize_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL image -> [size, size, 3] uint8 RGB, bilinear resize."""
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, np.uint8)


def load_rgb(path: str, size: int) -> np.ndarray:
    """[size, size, 3] uint8, bilinear resize."""
    return resize_rgb(_open(path), size)


class FolderSource:
    """Random access to the images under ``root`` (recursive), read lazily with ``load(path, size)``:
    ImageNet-sized folders fit. ``kind`` names the folder in error messages."""

    def __init__(self, root: str, size: int, load: Callable[[str, int], np.ndarray] = load_rgb,
                 kind: str = "image"):
        if not os.path.isdir(root):
            raise UserError(f"{root}: {kind} image folder not found")
        self.paths = list_images(root, recursive=True)
        if not self.paths:
            raise UserError(f"{root}: no images in {kind} folder")
        self.size, self.load = size, load

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.load(self.paths[index], self.size)


def load_mask(path: str, size: int, expected_size: Tuple[int, int]) -> np.ndarray:
    """[size, size] bool; nearest resize. ``expected_size`` is its image's (width, height)."""
    mask = _open(path)
    if mask.size != tuple(expected_size):
        raise UserError(f"{path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                        f"({expected_size[0]}x{expected_size[1]})")
    mask = np.asarray(mask.convert("L").resize((size, size), Image.NEAREST))
    return mask > 0
