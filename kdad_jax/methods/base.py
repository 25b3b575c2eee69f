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
