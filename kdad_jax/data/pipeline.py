"""grain pipelines: seeded shuffle, augmentation and batching for training; plain batches for eval.

The training dataset is a ``grain.MapDataset`` indexed by step, so batch k is the same whatever
happened before it: a resumed run continues with exactly the batches it would have seen.
"""

import sys
from typing import Iterator, Tuple

import grain
import numpy as np

from kdad_jax.data import augment


def split_train_validation(count: int, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``count`` training images; at least one validation image.

    The validation count is the EfficientAD reference's ``count − int((1 − fraction)·count)``
    (it keeps ``int(0.9·N)`` images for training), e.g. 3 of 25 where rounding would give 2."""
    if count < 2:
        raise ValueError("need at least 2 training images to hold out a validation image")
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(count - 1, max(1, count - int((1.0 - fraction) * count)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class _Sources:
    """Element k = (shuffled training image k, shuffled penalty image k or None), repeated forever."""

    def __init__(self, train_images, penalty, seed):
        self.images = grain.MapDataset.source(train_images).shuffle(seed).repeat()
        self.penalty = None
        if penalty is not None:
            self.penalty = grain.MapDataset.source(penalty).shuffle(seed + 1).repeat()

    def __call__(self, index):
        return self.images[index], None if self.penalty is None else self.penalty[index]


class _Augment:
    """Host-side per-image work: 'image', plus 'image_aug' (one colour jitter) when
    ``color_jitter`` is set and 'penalty' (random grayscale) when there are penalty images."""

    def __init__(self, color_jitter, penalty_grayscale: float):
        self.color_jitter = color_jitter
        self.penalty_grayscale = penalty_grayscale

    def __call__(self, element, rng: np.random.Generator):
        image, penalty = element
        image = image.astype(np.float32) / 255.0
        out = {"image": image}
        if self.color_jitter is not None:
            out["image_aug"] = augment.color_jitter_one(image, rng, self.color_jitter)
        if penalty is not None:
            penalty = penalty.astype(np.float32) / 255.0
            out["penalty"] = augment.random_grayscale(penalty, rng, self.penalty_grayscale)
        return out


def training_batches(train_images: np.ndarray, penalty, config, start_step: int) -> Iterator[dict]:
    """Batches for steps ``start_step .. config.train.steps - 1``; each a dict of [B, H, W, 3].

    ``penalty``: a source of pretraining images, or None for methods without a penalty."""
    sources = _Sources(train_images, penalty, config.seed)
    grayscale = config.penalty.grayscale_prob if "penalty" in config else 0.0
    dataset = (
        grain.MapDataset.range(sys.maxsize // 2)
        .map(sources)
        .random_map(_Augment(config.train.get("color_jitter"), grayscale), seed=config.seed)
    )
    return process_batches(dataset, config, start_step)


class _Indices:
    """Element k of the device-resident stream: which training image and which penalty image
    the host stream would have used at k (the same grain shuffles as ``_Sources``), and k itself
    (the step's augmentation keys fold from it). Penalty images not on the device come as uint8."""

    def __init__(self, num_images, penalty_count, penalty_source, seed):
        self.images = grain.MapDataset.range(num_images).shuffle(seed).repeat()
        self.penalty = self.penalty_source = None
        if penalty_count:
            self.penalty = grain.MapDataset.range(penalty_count).shuffle(seed + 1).repeat()
        elif penalty_source is not None:
            self.penalty_source = grain.MapDataset.source(penalty_source).shuffle(seed + 1).repeat()

    def __call__(self, index):
        out = {"element": np.int32(index), "image_index": np.int32(self.images[index])}
        if self.penalty is not None:
            out["penalty_index"] = np.int32(self.penalty[index])
        elif self.penalty_source is not None:
            out["penalty"] = np.asarray(self.penalty_source[index], np.uint8)
        return out


def index_batches(num_images: int, penalty_count: int, penalty_source, config,
                  start_step: int) -> Iterator[dict]:
    """Batches of indices for training images kept on the device (``data/resident.py``):
    [B] int32 'element', 'image_index' and 'penalty_index' (penalty images on the device) or
    [B, H, W, 3] uint8 'penalty' (``penalty_source`` read here), for steps ``start_step ..``.
    Element numbers stay below 2³¹: the stream is 2³¹ − 1 elements long."""
    elements = grain.MapDataset.range(2 ** 31 - 1).map(
        _Indices(num_images, penalty_count, penalty_source, config.seed))
    return process_batches(elements, config, start_step)


def process_batches(elements: grain.MapDataset, config, start_step: int) -> Iterator[dict]:
    """This process's slices of the global batches for steps ``start_step .. train.steps - 1``.

    Global batch k is elements [k·B, (k+1)·B) of ``elements`` whatever the number of processes
    (so a run's result does not depend on it); with P processes (grain's ``ShardByJaxProcess``)
    process p loads only elements k·B + p·B/P ... of it. Augmentation seeds follow the element
    index, so a resumed run sees exactly the batches it would have seen."""
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    local = config.train.batch_size // shard.shard_count
    if local * shard.shard_count != config.train.batch_size:
        raise ValueError(f"batch {config.train.batch_size} does not split over {shard.shard_count} processes")
    dataset = elements.batch(local, drop_remainder=True).slice(slice(
        start_step * shard.shard_count + shard.shard_index, config.train.steps * shard.shard_count,
        shard.shard_count))
    options = grain.ReadOptions(num_threads=config.data.num_threads, prefetch_buffer_size=4)
    return iter(dataset.to_iter_dataset(options))


def image_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Fixed-order float32 batches of uint8 [N, H, W, 3] images (the last one may be smaller)."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size].astype(np.float32) / 255.0
