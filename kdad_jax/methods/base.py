"""The interface every method implements: a NamedTuple of pure functions over pytrees.

``train.py`` and ``evaluate.py`` only call these, so they never branch on the method's name.
Shapes: images are float32 in [0, 1], ``[B, H, W, 3]``; maps are ``[B, H, W]``.
"""

from typing import Any, Callable, Iterable, NamedTuple

import jax.numpy as jnp
import numpy as np

PyTree = Any

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def host_mean_std(arrays: Iterable, channels=None, min_variance: float = 0.0):
    """(mean, std) over every value of ``arrays`` (per channel when ``channels`` is given: the
    last axis), accumulated in float64 on the host one array at a time, so any number of images
    fits. Variance is clipped at ``min_variance`` (0: a constant channel gets std 0)."""
    total, total_sq, count = 0.0, 0.0, 0
    for array in arrays:
        values = np.asarray(array, np.float64)
        values = values.reshape(-1, channels) if channels else values.ravel()
        total, total_sq, count = total + values.sum(0), total_sq + (values * values).sum(0), \
            count + values.shape[0]
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean * mean, min_variance))


def imagenet_normalize(images):
    """[B, H, W, 3] in [0, 1] -> ImageNet-normalized, as the torchvision backbones expect."""
    return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class Method(NamedTuple):
    """A method's pure functions. ``frozen`` holds teacher weights (never optimized);
    ``model_state`` holds the trainable networks' non-trainable collections (BatchNorm running
    statistics; ``{}`` for networks without them), updated by the loss, never by the optimizer."""

    name: str
    # (rng) -> (frozen, teacher_description); description goes to logs and results.json.
    load_frozen: Callable[[Any], tuple]
    # (rng, frozen) -> (trainable params, model_state)
    init: Callable[[Any, PyTree], tuple]
    # (frozen, train image batches) -> stats needed by the loss (e.g. teacher mean/std)
    prepare_stats: Callable[[PyTree, Iterable[np.ndarray]], PyTree]
    # (params, model_state, frozen, stats, batch, rng) -> (loss, (aux dict of scalars, model_state))
    loss: Callable[..., tuple]
    # (params, model_state, frozen, stats, validation image batches) -> stats with map calibration
    fit_stats: Callable[..., PyTree]
    # (params, model_state, frozen, stats, images [B, H, W, 3]) -> maps [B, H, W]
    anomaly_map: Callable[..., Any]
    # what was built (architectures, switches) for logs and results.json
    info: dict = {}
