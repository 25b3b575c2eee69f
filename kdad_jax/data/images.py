"""Reading image and mask files into uint8 arrays, with errors that name the file.

Dataset folders are read leniently: an unreadable file (corrupt, truncated, empty, not an image)
is skipped with one warning line naming it and recorded by the caller; files whose extension is
not an image's are listed once per folder and ignored."""

import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdad_jax.errors import UserError, warn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Below this many pixels on a side an image is smaller than a 33x33 PDN patch (the largest
# receptive field a map pixel of ours looks at is bigger still): it is upsampled, with a warning.
SMALL_SIDE = 33


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str, recursive: bool = False, report_others: bool = False) -> List[str]:
    """Sorted image files in ``folder`` (by extension). ``report_others``: warn once about the
    other files there (hidden files such as .DS_Store are ignored silently)."""
    if recursive:
        found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)]
    found = [p for p in found if os.path.isfile(p)]
    if report_others:
        others = sorted(os.path.basename(p) for p in found
                        if not _is_image_name(p) and not os.path.basename(p).startswith("."))
        if others:
            warn(f"{folder}: ignored {len(others)} non-image file(s): {', '.join(others[:3])}"
                 f"{', ...' if len(others) > 3 else ''}")
    return sorted(p for p in found if _is_image_name(p))


def _open(path: str) -> Image.Image:
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UserError(f"{path}: unreadable image (empty file, 0 bytes)")
    try:
        image = Image.open(path)
        image.load()
        return image
    except UnidentifiedImageError:
        raise UserError(f"{path}: unreadable image (not an image format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError) as e:
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


def resize_short_side(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL image -> [h, w, 3] uint8 RGB with its shorter side = ``size`` (aspect kept)."""
    image = to_rgb(image)
    scale = size / min(image.size)
    shape = (max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale)))
    if image.size != shape:
        image = image.resize(shape, Image.BILINEAR)
    return np.asarray(image, np.uint8)


def load_short_side(path: str, size: int) -> np.ndarray:
    """[h, w, 3] uint8 with the shorter side resized to ``size`` (for random crops)."""
    try:
        return resize_short_side(_open(path), size)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def load_rgb_and_size(path: str, size: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """([size, size, 3] uint8 bilinear resize, the file's (width, height))."""
    image = _open(path)
    if min(image.size) < SMALL_SIDE:
        warn(f"{path}: only {image.size[0]}x{image.size[1]} px (smaller than a {SMALL_SIDE}-px "
             f"patch); upsampled to {size}x{size}, so its details are interpolated")
    try:
        return resize_rgb(image, size), image.size
    except (OSError, ValueError) as e:  # e.g. a mode PIL cannot convert to RGB
        raise UserError(f"{path}: unreadable image ({e})") from None


def load_rgb(path: str, size: int) -> np.ndarray:
    """[size, size, 3] uint8, bilinear resize."""
    return load_rgb_and_size(path, size)[0]


def try_load(path: str, size: int, skipped: List[str]):
    """``load_rgb_and_size``, or None for an unreadable file: one warning and a line in ``skipped``."""
    try:
        return load_rgb_and_size(path, size)
    except UserError as e:
        warn(f"skipped {e}")
        skipped.append(str(e))
        return None


def read_images(paths: Sequence[str], size: int, skipped: List[str]):
    """Load ``paths`` as [N, size, size, 3] uint8, skipping unreadable files (see ``try_load``).
    Returns (images or None when nothing was readable, kept paths)."""
    images, kept = [], []
    for path in paths:
        loaded = try_load(path, size, skipped)
        if loaded is not None:
            images.append(loaded[0])
            kept.append(path)
    return (np.stack(images) if images else None), kept


class FolderSource:
    """Random access to the images under ``root`` (recursive), read lazily with ``load(path, size)``:
    ImageNet-sized folders fit. ``kind`` names the folder in error messages.

    Files are only opened when asked for (in data-loading workers), so an unreadable one is
    replaced by the next readable file in order, with a warning: element i stays a pure function
    of i and the folder's contents."""

    MAX_SKIPS = 100  # consecutive unreadable files before giving up on the folder

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
        for offset in range(min(self.MAX_SKIPS, len(self.paths))):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                return self.load(path, self.size)
            except UserError as e:
                warn(f"skipped {e}; using the next file instead")
        raise UserError(f"{os.path.dirname(self.paths[index])}: {self.MAX_SKIPS} unreadable files in "
                        f"a row around {self.paths[index]}")


def mask_values(mask: Image.Image) -> np.ndarray:
    """[H, W] numbers of a mask image: palette indices for palette images (a palette may map
    index 1 to a dark colour), raw values for 16-bit and 32-bit ones, luminance otherwise."""
    if mask.mode in ("P", "I", "I;16", "I;16B", "I;16L", "F", "1", "L"):
        return np.asarray(mask)
    return np.asarray(mask.convert("L"))


def load_mask(path: str, size: int, expected_size: Optional[Tuple[int, int]]) -> np.ndarray:
    """[size, size] bool, anomalous where the mask is non-zero: 0/255, 0/1 (VisA), 0/65535 and
    LOCO's per-defect values all work. Nearest resize. ``expected_size`` is its image's
    (width, height), checked when given."""
    mask = _open(path)
    if expected_size is not None and mask.size != tuple(expected_size):
        raise UserError(f"{path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                        f"({expected_size[0]}x{expected_size[1]})")
    values = mask_values(mask)
    if values.ndim == 3:  # e.g. RGBA masks reach here only through convert("L") above; be safe
        values = values.max(axis=2)
    anomalous = Image.fromarray((values > 0).astype(np.uint8) * 255)
    return np.asarray(anomalous.resize((size, size), Image.NEAREST)) > 0
