"""Reading image and mask files into uint8 arrays, with errors that name the file.

Dataset folders are read leniently: an unreadable file (corrupt, truncated, empty, not an image,
a broken symbolic link, over Pillow's decompression-bomb limit) is skipped with one warning line
naming it and recorded by the caller; files whose extension is not an image's are listed once per
folder and ignored; hidden files (``.DS_Store``, macOS ``._*`` resource forks) are ignored
silently. Images are turned upright by their EXIF orientation, as a viewer shows them."""

import os
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kdad_jax.errors import UserError, warn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Below this many pixels on a side an image is smaller than a 33x33 PDN patch (the largest
# receptive field a map pixel of ours looks at is bigger still): it is upsampled, with a warning.
SMALL_SIDE = 33


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(folder: str) -> List[str]:
    """Every file under ``folder``, hidden files and folders left out."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not _is_hidden(d)]
        found += [os.path.join(directory, f) for f in files if not _is_hidden(f)]
    return found


def list_images(folder: str, recursive: bool = False, report_others: bool = False) -> List[str]:
    """Sorted image files in ``folder`` (by extension; hidden files left out). A broken symbolic
    link with an image's name is listed, so that reading it reports it. ``report_others``: warn
    once about the other files there and about images in subfolders, which a non-recursive
    listing does not read."""
    if recursive:
        found = _walk(folder)
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder) if not _is_hidden(f)]
    dangling = [p for p in found if os.path.islink(p) and not os.path.exists(p)]
    subfolders = [p for p in found if os.path.isdir(p)]
    found = [p for p in found if os.path.isfile(p)]
    if report_others:
        others = sorted(os.path.basename(p) for p in found if not _is_image_name(p))
        if others:
            warn(f"{folder}: ignored {len(others)} non-image file(s): {', '.join(others[:3])}"
                 f"{', ...' if len(others) > 3 else ''}")
        _report_subfolder_images(folder, subfolders)
    return sorted(p for p in found + dangling if _is_image_name(p))


def _report_subfolder_images(folder: str, subfolders: List[str]) -> None:
    """One warning counting the images under ``subfolders``, which a non-recursive listing skips."""
    counts = {os.path.basename(d): sum(_is_image_name(p) for p in _walk(d)) for d in sorted(subfolders)}
    counts = {d: n for d, n in counts.items() if n}
    if counts:
        listed = ", ".join(f"{d}/ ({n})" for d, n in list(counts.items())[:3])
        warn(f"{folder}: ignored {sum(counts.values())} image(s) in subfolder(s) {listed}"
             f"{', ...' if len(counts) > 3 else ''}: only the folder's own files are read; move "
             f"them up to use them")


class ImageTooLarge(UserError):
    """An image over a pixel limit: the caller's, or Pillow's decompression-bomb limit."""


def open_image(source, name: Optional[str] = None, max_pixels: Optional[int] = None) -> Image.Image:
    """The decoded image, upright by its EXIF orientation, from a path or a binary file object.

    ``UserError`` naming ``name`` (default: the path) when it cannot be read; ``ImageTooLarge``
    over ``max_pixels`` (read from the header, before anything is decoded; Pillow's
    decompression-bomb warning then counts as over too) or over Pillow's bomb limit. A file from
    outside is data: whatever Pillow raises on it becomes that one line."""
    name = name or str(source)
    if isinstance(source, str):
        if os.path.islink(source) and not os.path.exists(source):
            raise UserError(f"{name}: unreadable image (broken symbolic link to {os.readlink(source)})")
        if os.path.isfile(source) and os.path.getsize(source) == 0:
            raise UserError(f"{name}: unreadable image (empty file, 0 bytes)")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageTooLarge(f"{name}: {image.width}x{image.height} px, over the limit of "
                                    f"{max_pixels} pixels")
            image.load()
        return ImageOps.exif_transpose(image)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{name}: unreadable image (not an image format Pillow knows)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{name}: unreadable image (over Pillow's decompression-bomb limit of "
                            f"{Image.MAX_IMAGE_PIXELS} px: {e}; if it is a real image, raise "
                            f"PIL.Image.MAX_IMAGE_PIXELS or downscale it)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name}: unreadable image ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on a broken file
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{name}: unreadable image ({type(e).__name__}: {first})") from None


def _to_eight_bit(values: np.ndarray, full_scale: float) -> Image.Image:
    return Image.fromarray((np.clip(values / full_scale, 0, 1) * 255).round().astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, 16-bit, 32-bit float and RGBA images -> 8-bit RGB (alpha dropped).

    Float images (TIFF mode 'F') in [0, 1] are taken as full scale, ones up to 255 as 8-bit
    values, larger ones as 16-bit; NaN reads as 0."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, np.float64)
        full_scale = 255.0 if image.mode == "I" and values.max() <= 255 else 65535.0
        image = _to_eight_bit(values, full_scale)
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = values.max(initial=0.0)
        image = _to_eight_bit(values, 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0)
    return image.convert("RGB")


def original_size(path: str) -> Tuple[int, int]:
    return open_image(path).size


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
        return resize_short_side(open_image(path), size)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def load_rgb_and_size(path: str, size: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """([size, size, 3] uint8 bilinear resize, the file's (width, height))."""
    image = open_image(path)
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
        self.size, self.load, self.root, self.kind = size, load, root, kind

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        tries = min(self.MAX_SKIPS, len(self.paths))
        for offset in range(tries):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                return self.load(path, self.size)
            except UserError as e:
                warn(f"skipped {e}; using the next file instead")
        if tries == len(self.paths):
            raise UserError(f"{self.root}: none of its {len(self.paths)} {self.kind} image file(s) "
                            f"is readable")
        raise UserError(f"{self.root}: {tries} unreadable {self.kind} image files in a row "
                        f"from {self.paths[index]}")


def mask_values(mask: Image.Image) -> np.ndarray:
    """[H, W] numbers of a mask image: palette indices for palette images (a palette may map
    index 1 to a dark colour), raw values for 16-bit and 32-bit ones, luminance otherwise."""
    if mask.mode in ("P", "I", "I;16", "I;16B", "I;16L", "F", "1", "L"):
        return np.asarray(mask)
    return np.asarray(mask.convert("L"))


def load_mask(path: str, size: Optional[int], expected_size: Optional[Tuple[int, int]]) -> np.ndarray:
    """[size, size] bool, anomalous where the mask is non-zero: 0/255, 0/1 (VisA), 0/65535 and
    LOCO's per-defect values all work. Nearest resize; ``size`` None: the file's own [H, W].
    ``expected_size`` is its image's (width, height), checked when given."""
    mask = open_image(path)
    if expected_size is not None and mask.size != tuple(expected_size):
        raise UserError(f"{path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                        f"({expected_size[0]}x{expected_size[1]})")
    values = mask_values(mask)
    if values.ndim == 3:  # e.g. RGBA masks reach here only through convert("L") above; be safe
        values = values.max(axis=2)
    if size is None:
        return values > 0
    anomalous = Image.fromarray((values > 0).astype(np.uint8) * 255)
    return np.asarray(anomalous.resize((size, size), Image.NEAREST)) > 0
