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
    kind = rng.integers(3)
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
