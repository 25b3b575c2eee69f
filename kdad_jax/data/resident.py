"""Training images kept in device memory: the host sends indices, the jitted step does the rest.

A category's training images (~300 at 256², ~60 MB as uint8) are copied to the device once
(replicated over the mesh). Each step the host sends only ``[B]`` int32 indices (which image,
which penalty image, which element of the endless shuffled stream); the step gathers the images,
scales them to [0, 1] and applies EfficientAD's colour jitter and the penalty's random grayscale
with ``jax.random`` keys folded from the element index, so batch k is the same whatever ran
before it (resume stays bit-exact) and however the batch is split over devices or processes.

The order of images is the host pipeline's (``pipeline.training_batches``: the same grain
shuffles), and the colour jitter draws from the same distribution (one of brightness, contrast or
saturation, factor U(1 − s, 1 + s)); only the random stream differs. Penalty images live on the
device too when they fit the budget (``config.data.device_data_mb``), else the host sends them
as uint8 and only their grayscale runs on the device.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax.data import device_augment


class Augment(NamedTuple):
    """What the step makes of an index batch (static: part of the compiled step)."""

    color_jitter: Optional[float]   # strength s of the one-of-three jitter ('image_aug'); None: none
    penalty: bool                   # the batch has penalty images
    grayscale_prob: float = 0.0     # chance that a penalty image is made grayscale


class Resident(NamedTuple):
    """Device arrays: training images ``[N, H, W, 3]`` uint8, penalty images ``[P, H, W, 3]``
    uint8 (or None: the host sends them), and the key the per-element keys fold from."""

    images: jax.Array
    penalty: Optional[jax.Array]
    key: jax.Array


def color_jitter_one(images, factors, kinds):
    """``[B, H, W, 3]`` in [0, 1]: per image, brightness (kind 0), contrast (1) or saturation (2)
    with factor ``factors[b]`` — the numpy pipeline's ``augment.color_jitter_one`` per image."""
    choices = jnp.stack([device_augment.adjust_brightness(images, factors),
                         device_augment.adjust_contrast(images, factors),
                         device_augment.adjust_saturation(images, factors)])
    return jnp.take_along_axis(choices, kinds[None, :, None, None, None], axis=0)[0]


# uint8 -> float32 in [0, 1] by table: the host's ``x / 255.0`` exactly (XLA turns a division by
# a constant into a multiplication by its reciprocal, one ulp off for some values).
_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def to_unit(images):
    """uint8 ``[..., 3]`` -> float32 in [0, 1], bit-equal to numpy's ``images / 255.0``."""
    return jnp.asarray(_TO_UNIT)[images]


def _element_keys(key, elements, salt: int):
    return jax.vmap(lambda e: jax.random.fold_in(jax.random.fold_in(key, e), salt))(elements)


def materialize(resident: Resident, batch: dict, augment: Augment) -> dict:
    """Index batch -> what the host pipeline would have sent: 'image' (and 'image_aug',
    'penalty'), float32 ``[B, H, W, 3]`` in [0, 1]. Runs inside the jitted step."""
    images = to_unit(resident.images[batch["image_index"]])
    out = {"image": images}
    if augment.color_jitter is not None:
        keys = _element_keys(resident.key, batch["element"], 0)
        strength = augment.color_jitter
        factors = jax.vmap(lambda k: jax.random.uniform(
            k, (), minval=1.0 - strength, maxval=1.0 + strength))(keys)
        kinds = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, 3))(keys)
        out["image_aug"] = color_jitter_one(images, factors, kinds)
    if augment.penalty:
        if "penalty_index" in batch:
            penalty = resident.penalty[batch["penalty_index"]]
        else:
            penalty = batch["penalty"]
        penalty = to_unit(penalty)
        keys = _element_keys(resident.key, batch["element"], 2)
        gray = jax.vmap(lambda k: jax.random.uniform(k) < augment.grayscale_prob)(keys)
        out["penalty"] = jnp.where(gray[:, None, None, None], device_augment.grayscale(penalty),
                                   penalty)
    return out


def penalty_array(source, budget_bytes: int) -> Optional[np.ndarray]:
    """Every penalty image as one uint8 array when they fit ``budget_bytes``, else None."""
    if source is None or len(source) == 0:
        return None
    first = np.asarray(source[0])
    if len(source) * first.nbytes > budget_bytes:
        return None
    return np.stack([first] + [np.asarray(source[i]) for i in range(1, len(source))])
