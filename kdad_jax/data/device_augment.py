"""On-device augmentations with ``jax.random``, so they run inside the jitted train step.

The augmented copy of ECA-MSKDAD's image pairs (SimCLR-style): colour distortion, random grayscale
and Gaussian blur, each applied to an image with its own probability (0.8 in the paper).
Images: float32 in [0, 1], ``[B, H, W, 3]``; every image draws its own parameters.

Colour distortion (ours, after torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1) as SimCLR uses it):
brightness, contrast and saturation factors U(1 − s, 1 + s) and a hue rotation U(−h, h) of a full
turn, applied in that fixed order (torchvision shuffles the order; a fixed one keeps the step free
of data-dependent control flow). The hue rotation turns the chroma plane of YIQ space, a linear
stand-in for an HSV hue shift. Blur: a separable Gaussian of side ≈ 10 % of the image (odd),
σ ~ U(0.1, 2.0) pixels, reflect padding, as SimCLR.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as torchvision (numpy: no backend at import)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


class PairAugment(NamedTuple):
    """Settings of the augmented copy (config.augment)."""

    color_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.8
    blur_prob: float = 0.8
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0


def crop_at(images, side: int, ys, xs):
    """One side×side crop per image at top-left (ys[b], xs[b]): [B, H, W, C] -> [B, side, side, C]."""
    crop = lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (side, side, image.shape[-1]))
    return jax.vmap(crop)(images, ys, xs)


def grayscale(images):
    """[..., 3] -> [..., 3] luma repeated over the channels."""
    gray = images @ _GRAY_WEIGHTS
    return jnp.repeat(gray[..., None], 3, axis=-1)


def _blend(images, other, factor):
    return jnp.clip(other + factor * (images - other), 0.0, 1.0)


def adjust_brightness(images, factor):
    """factor: [B]. torchvision: blend with black."""
    return _blend(images, jnp.zeros_like(images), factor[:, None, None, None])


def adjust_contrast(images, factor):
    """Blend with the image's mean luma (torchvision's adjust_contrast)."""
    mean = jnp.mean(images @ _GRAY_WEIGHTS, axis=(1, 2))
    return _blend(images, jnp.broadcast_to(mean[:, None, None, None], images.shape),
                  factor[:, None, None, None])


def adjust_saturation(images, factor):
    """Blend with the grayscale image (torchvision's adjust_saturation)."""
    return _blend(images, grayscale(images), factor[:, None, None, None])


def rotate_hue(images, turns):
    """Rotate the chroma (I, Q) plane of YIQ by ``turns`` [B] of a full circle; luma unchanged."""
    angle = 2.0 * jnp.pi * turns
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    yiq = images @ jnp.asarray(_RGB_TO_YIQ).T
    i = cos[:, None, None] * yiq[..., 1] - sin[:, None, None] * yiq[..., 2]
    q = sin[:, None, None] * yiq[..., 1] + cos[:, None, None] * yiq[..., 2]
    rgb = jnp.stack([yiq[..., 0], i, q], axis=-1) @ jnp.asarray(_YIQ_TO_RGB).T
    return jnp.clip(rgb, 0.0, 1.0)


def blur_kernel_size(side: int) -> int:
    """Odd kernel side ≈ 10 % of the image side, at least 3."""
    k = max(3, int(round(0.1 * side)))
    return k if k % 2 else k + 1


def gaussian_kernels(sigma, size: int):
    """sigma [B] -> normalized 1-D Gaussian kernels [B, size]."""
    offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    weights = jnp.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def gaussian_blur(images, sigma, size: int):
    """Separable blur with a per-image σ [B]; reflect padding keeps the size. [B, H, W, 3]."""
    kernels = gaussian_kernels(sigma, size)                                   # [B, k]
    half = size // 2
    padded = jnp.pad(images, ((0, 0), (half, half), (half, half), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    rows = sum(kernels[:, j, None, None, None] * padded[:, j:j + h] for j in range(size))
    return sum(kernels[:, j, None, None, None] * rows[:, :, j:j + w] for j in range(size))


def _uniform_factor(key, batch, strength):
    return jax.random.uniform(key, (batch,), minval=1.0 - strength, maxval=1.0 + strength)


def color_distort(key, images, settings: PairAugment):
    kb, kc, ks, kh = jax.random.split(key, 4)
    b = images.shape[0]
    images = adjust_brightness(images, _uniform_factor(kb, b, settings.brightness))
    images = adjust_contrast(images, _uniform_factor(kc, b, settings.contrast))
    images = adjust_saturation(images, _uniform_factor(ks, b, settings.saturation))
    turns = jax.random.uniform(kh, (b,), minval=-settings.hue, maxval=settings.hue)
    return rotate_hue(images, turns)


def _maybe(key, prob, augmented, images):
    """Per image: ``augmented`` with probability ``prob``, else ``images``."""
    chosen = jax.random.bernoulli(key, prob, (images.shape[0],))
    return jnp.where(chosen[:, None, None, None], augmented, images)


def augment(key, images, settings: PairAugment = PairAugment()):
    """[B, H, W, 3] -> the augmented copies (colour → grayscale → blur, each with its p)."""
    keys = jax.random.split(key, 6)
    images = _maybe(keys[0], settings.color_prob, color_distort(keys[1], images, settings), images)
    images = _maybe(keys[2], settings.grayscale_prob, grayscale(images), images)
    sigma = jax.random.uniform(keys[3], (images.shape[0],), minval=settings.blur_sigma_min,
                               maxval=settings.blur_sigma_max)
    blurred = gaussian_blur(images, sigma, blur_kernel_size(min(images.shape[1:3])))
    return _maybe(keys[4], settings.blur_prob, blurred, images)
