"""Per-image augmentations in numpy (run in grain worker threads). Images: [H, W, 3] float32 in [0, 1]."""

import numpy as np

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as torchvision


def grayscale(image: np.ndarray) -> np.ndarray:
    return image @ _GRAY_WEIGHTS


def _blend(image, other, factor):
    return np.clip(other + factor * (image - other), 0.0, 1.0).astype(np.float32)


def color_jitter_one(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """One of brightness, contrast or saturation (chosen uniformly), factor U(1−s, 1+s).

    Same blends as torchvision's functional adjust_* ops.
    """
    factor = rng.uniform(1.0 - strength, 1.0 + strength)
    return color_jitter_with(image, factor, int(rng.integers(3)))


def color_jitter_with(image: np.ndarray, factor: float, kind: int) -> np.ndarray:
    """Brightness (kind 0), contrast (1) or saturation (2) with ``factor``."""
    if kind == 0:
        return _blend(image, np.zeros_like(image), factor)
    gray = grayscale(image)[..., None]
    if kind == 1:
        return _blend(image, np.full_like(image, gray.mean()), factor)
    return _blend(image, np.broadcast_to(gray, image.shape), factor)


def random_grayscale(image: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    if rng.uniform() < prob:
        return np.repeat(grayscale(image)[..., None], 3, axis=-1)
    return image


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3] uint8: a crop covering U(scale) of the area with a
    log-uniform aspect ratio in ``ratio`` (torchvision's RandomResizedCrop rule, 10 tries, then
    the largest centred crop in range), resized bilinearly (antialiased when shrinking)."""
    from PIL import Image
    height, width = image.shape[:2]
    area = height * width
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        box = (left, top, left + side, top + side)
    crop = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(crop, np.uint8)


def flip_and_rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 symmetries of the square (random horizontal flip, then k·90° rotation)."""
    if rng.uniform() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(np.rot90(image, k=int(rng.integers(4))))
