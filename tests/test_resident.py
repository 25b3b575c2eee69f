"""Training images kept on the device: the same images as the host pipeline, the same augmentation
distribution, keys that depend only on the element (resume and device splits stay exact)."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdad_jax.training import train
from kdad_jax.config_files import load as load_config_file
from kdad_jax.data import augment, dataset, penalty as penalty_data, pipeline, resident
from kdad_jax.methods import get_method
from tests.conftest import PROJECT


def _config(batch=3, steps=6, seed=4):
    config = ml_collections.ConfigDict()
    config.seed = seed
    config.train = ml_collections.ConfigDict({"batch_size": batch, "steps": steps})
    config.data = ml_collections.ConfigDict({"num_threads": 1})
    return config


def _images(count, side=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), np.uint8)


def _materialize(images, penalty_images, batch, augment_):
    data = resident.Resident(jnp.asarray(images), None if penalty_images is None
                             else jnp.asarray(penalty_images), jax.random.key(7))
    return jax.jit(lambda d, b: resident.materialize(d, b, augment_))(data, batch)


@pytest.mark.parametrize("penalty_on_device", [True, False])
def test_device_batches_hold_the_host_pipelines_images(penalty_on_device):
    """Without jitter and grayscale, every step's images (and penalty images, on the device or
    sent by the host) equal the host pipeline's for the same config, from any start step."""
    config = _config()
    config.penalty = ml_collections.ConfigDict({"grayscale_prob": 0.0})
    images, penalty = _images(5), penalty_data.ArraySource(list(_images(4, seed=1)))
    host = list(pipeline.training_batches(images, penalty, config, 2))
    indices = list(pipeline.index_batches(
        len(images), len(penalty) if penalty_on_device else 0,
        None if penalty_on_device else penalty, config, 2))
    assert len(host) == len(indices) == 4
    on_device = np.stack(penalty.arrays) if penalty_on_device else None
    for k, (expected, batch) in enumerate(zip(host, indices), start=2):
        assert batch["element"].tolist() == [3 * k, 3 * k + 1, 3 * k + 2]
        got = _materialize(images, on_device, batch, resident.Augment(None, True, 0.0))
        assert set(got) == {"image", "penalty"}
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["penalty"], expected["penalty"])


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_color_jitter_equals_the_numpy_pipelines(kind):
    images = _images(3, side=16).astype(np.float32) / 255.0
    factors = np.array([0.8, 1.0, 1.2], np.float32)
    got = resident.color_jitter_one(jnp.asarray(images), jnp.asarray(factors),
                                    jnp.full((3,), kind, jnp.int32))
    expected = np.stack([augment.color_jitter_with(i, f, kind) for i, f in zip(images, factors)])
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_augmentation_draws_follow_the_element_only():
    """Factors U(1 − s, 1 + s), each kind about 1/3 of the time, grayscale at its probability,
    and an element draws the same augmentation in any batch it lands in."""
    count, strength = 3000, 0.2
    images = np.full((1, 4, 4, 3), 128, np.uint8)
    images[..., 0] = 200  # coloured, so saturation and brightness differ from contrast
    batch = {"element": np.arange(count, dtype=np.int32),
             "image_index": np.zeros(count, np.int32), "penalty_index": np.zeros(count, np.int32)}
    got = _materialize(images, images, batch, resident.Augment(strength, True, 0.3))
    gray = np.asarray(got["penalty"]).std(-1).max((1, 2)) < 1e-6
    assert abs(gray.mean() - 0.3) < 0.03
    pixel = np.asarray(got["image_aug"])[:, 0, 0]
    base = images[0, 0, 0] / 255.0
    brightness = np.isclose(pixel[:, 1] / base[1], pixel[:, 0] / base[0], rtol=1e-4)
    assert abs(brightness.mean() - 1 / 3) < 0.03
    factor = pixel[brightness, 0] / base[0]
    assert factor.min() >= 1 - strength - 1e-5 and factor.max() <= 1 + strength + 1e-5
    assert abs(factor.mean() - 1.0) < 0.02
    again = _materialize(images, images, {k: v[1000:1004] for k, v in batch.items()},
                         resident.Augment(strength, True, 0.3))
    # The same draws (a program compiled for another batch may round a mean differently).
    np.testing.assert_allclose(again["image_aug"], got["image_aug"][1000:1004], atol=1e-6)
    np.testing.assert_allclose(again["penalty"], got["penalty"][1000:1004], atol=1e-6)


def _stfpm_state(tmp_path, tiny_tree, device_data_mb):
    config = load_config_file(os.path.join(PROJECT, "configs", "stfpm.py")).get_config("smoke")
    config.data.root, config.data.device_data_mb = tiny_tree, device_data_mb
    config.train.steps = 3
    data = dataset.read_category("mvtec", tiny_tree, "widget", config.image_size)
    trained = train.train_category(config, str(tmp_path / str(device_data_mb)), "widget",
                                   get_method(config), data.train)
    return jax.tree_util.tree_leaves((trained.params, trained.model_state))


def test_training_from_device_data_equals_host_batches(tmp_path, tiny_tree):
    """STFPM draws no host augmentation, so its training on device-resident images must give
    the host pipeline's weights exactly."""
    host = _stfpm_state(tmp_path, tiny_tree, 0)
    device = _stfpm_state(tmp_path, tiny_tree, 2048)
    assert len(host) == len(device) > 10
    for a, b in zip(host, device):
        np.testing.assert_array_equal(a, b)
