"""EfficientAD (Batzner et al., WACV 2024): PDN teacher, PDN student, autoencoder.

Student outputs ``2·C`` channels: ``[..., :C]`` regresses the normalized teacher, ``[..., C:]``
regresses the autoencoder. See ``shared/DESIGN.md`` §3 for the facts implemented here.
"""

import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax.kernels import compilation
from kdad_jax.methods.base import Method, host_mean_std, imagenet_normalize
from kdad_jax.models.autoencoder import AutoEncoder
from kdad_jax.models.pdn import PDN, feature_shape
from kdad_jax.teachers import weights

MAP_QUANTILES = (0.9, 0.995)  # mapped to 0 and 0.1


def upper_quantile(values, quantile: float):
    """``jnp.quantile(values, quantile)`` (linear interpolation) from a top-k instead of a full sort.

    Only the elements above the quantile are needed: for q = 0.999 that is a top-k of 0.1 % of the
    elements, ~80× faster on CPU than sorting a 56²·384 tensor.
    """
    flat = values.ravel()
    position = quantile * (flat.size - 1)  # exact in Python floats
    low = int(math.floor(position))
    fraction = position - low
    top = jax.lax.top_k(flat, flat.size - low)[0]  # descending; top[-1] is the low-th smallest
    # Without the barrier XLA folds "top_k then index" back into a full sort (0.4 s vs 9 ms).
    top = jax.lax.optimization_barrier(top)
    if top.shape[0] == 1:
        return top[0]
    return top[-1] + fraction * (top[-2] - top[-1])


def hard_feature_loss(distance, quantile: float = 0.999):
    """Mean of the elements of ``distance`` at or above its ``quantile`` (no element limit).

    The threshold is a constant for the gradient, as in the reference (it only selects elements).
    """
    threshold = jax.lax.stop_gradient(upper_quantile(distance, quantile))
    mask = (distance >= threshold).astype(distance.dtype)
    return jnp.sum(distance * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normalize_map(raw, start, end):
    """Affine map sending quantile ``start`` to 0 and ``end`` to 0.1."""
    return 0.1 * (raw - start) / (end - start)


MAP_BORDERS = ("zeros", "edge")


def resize_maps(maps, image_hw, border: str = "zeros"):
    """[B, h, w] feature maps -> [B, H, W]: pad by (H/4 − h)/2 per side, bilinear up-sample.

    At 256² this is the reference's 4-pixel padding of the 56² map to 64² = 256/4. ``border``:
    the reference pads with zeros; ``"edge"`` (ours) repeats the map's outermost values, so the
    frame never holds a value the map does not (a normalized map is negative where the image
    looks more normal than the quantile ``q_a``: there the zero frame becomes the image score).
    """
    if border not in MAP_BORDERS:
        raise ValueError(f"map border {border!r}: use one of {', '.join(MAP_BORDERS)}")
    pad_h = max(0, (image_hw[0] // 4 - maps.shape[1]) // 2)
    pad_w = max(0, (image_hw[1] // 4 - maps.shape[2]) // 2)
    maps = jnp.pad(maps, ((0, 0), (pad_h, pad_h), (pad_w, pad_w)),
                   mode="edge" if border == "edge" else "constant")
    return jax.image.resize(maps, (maps.shape[0], *image_hw), "linear", antialias=False)


def compute_dtype(config):
    """``config.train.compute_dtype``: None for float32 (the default), else the dtype the
    convolutions compute in (``bfloat16``: parameters, optimizer state, losses and maps stay
    float32; training, inference and exports all use it)."""
    name = config.train.get("compute_dtype", "float32")
    return None if name == "float32" else jnp.dtype(name)


class _Nets:
    """The three networks for one config (static structure, no parameters)."""

    def __init__(self, config):
        size = config.model.size
        channels = config.model.out_channels
        self.channels = channels
        self.image_hw = (config.image_size, config.image_size)
        self.map_border = config.model.get("map_border", "zeros")
        self.feature_hw = feature_shape(self.image_hw, size, config.model.padded)
        dtype = compute_dtype(config)
        self.teacher = PDN(size, channels, config.model.padded, dtype)
        self.student = PDN(size, 2 * channels, config.model.padded, dtype)
        self.autoencoder = AutoEncoder(self.image_hw, self.feature_hw, channels, dtype)


def _load_frozen(nets, config, rng):
    dummy = jnp.zeros((1, *nets.image_hw, 3), jnp.float32)
    abstract = jax.eval_shape(nets.teacher.init, rng, dummy)
    if config.teacher.checkpoint:
        params, source = weights.load(config.teacher.checkpoint, abstract)
        return {"teacher": params}, source
    return {"teacher": jax.jit(nets.teacher.init)(rng, dummy)}, "random-init"


def _init(nets, rng, frozen):
    del frozen
    dummy = jnp.zeros((1, *nets.image_hw, 3), jnp.float32)
    rng_s, rng_a = jax.random.split(rng)
    params = {
        "student": nets.student.init(rng_s, dummy),
        "autoencoder": nets.autoencoder.init(rng_a, dummy),
    }
    return params, {}


def _teacher_features(nets, frozen, images):
    return nets.teacher.apply(frozen["teacher"], imagenet_normalize(images))


def _prepare_stats(nets, frozen, batches: Iterable[np.ndarray]):
    """Per-channel mean and std of the teacher's outputs over the training images.

    Accumulated in float64 on the host, one batch at a time (no limit on the number of images).
    """
    features = compilation.jit(functools.partial(_teacher_features, nets))
    mean, std = host_mean_std((features(frozen, images) for images in batches), nets.channels)
    nan = np.float32(np.nan)  # map quantiles are unknown until fit_stats
    return {
        "teacher_mean": jnp.asarray(mean, jnp.float32),
        "teacher_std": jnp.asarray(std, jnp.float32),
        "q_st": jnp.array([nan, nan]),
        "q_ae": jnp.array([nan, nan]),
    }


def _loss(nets, config, params, model_state, frozen, stats, batch, rng):
    """Hard-feature loss + penalty + AE loss + student–AE loss (the reference's sum).

    batch: 'image', 'image_aug' (colour-jittered copy for the AE) and 'penalty', each [B, H, W, 3].
    """
    c = nets.channels
    b = batch["image"].shape[0]
    image, image_aug, penalty = (imagenet_normalize(batch[k]) for k in ("image", "image_aug", "penalty"))

    teacher_in = jnp.concatenate([image, image_aug])
    t = nets.teacher.apply(frozen["teacher"], teacher_in)
    t = jax.lax.stop_gradient((t - stats["teacher_mean"]) / stats["teacher_std"])
    t_image, t_aug = t[:b], t[b:]

    s = nets.student.apply(params["student"], jnp.concatenate([image, penalty, image_aug]))
    s_image, s_penalty, s_aug = s[:b, ..., :c], s[b:2 * b, ..., :c], s[2 * b:, ..., c:]

    loss_hard = hard_feature_loss((t_image - s_image) ** 2, config.loss.hard_quantile)
    loss_penalty = jnp.mean(s_penalty ** 2) * config.loss.penalty_weight
    ae = nets.autoencoder.apply(params["autoencoder"], image_aug, train=True, rngs={"dropout": rng})
    loss_ae = jnp.mean((t_aug - ae) ** 2)
    loss_st_ae = jnp.mean((ae - s_aug) ** 2)
    total = loss_hard + loss_penalty + loss_ae + loss_st_ae
    aux = {"loss_hard": loss_hard, "loss_penalty": loss_penalty, "loss_ae": loss_ae,
           "loss_st_ae": loss_st_ae}
    return total, (aux, model_state)


def _raw_maps(nets, params, model_state, frozen, stats, images):
    """Local (student–teacher) and global (student–AE) maps, [B, h, w] each, unnormalized."""
    c = nets.channels
    x = imagenet_normalize(images)
    t = (nets.teacher.apply(frozen["teacher"], x) - stats["teacher_mean"]) / stats["teacher_std"]
    s = nets.student.apply(params["student"], x)
    ae = nets.autoencoder.apply(params["autoencoder"], x)
    local = jnp.mean((t - s[..., :c]) ** 2, axis=-1)
    global_ = jnp.mean((ae - s[..., c:]) ** 2, axis=-1)
    return local, global_


def _fit_stats(nets, params, model_state, frozen, stats, batches: Iterable[np.ndarray]):
    """Quantiles q0.9 and q0.995 of each map type over the validation images (exact, on host)."""
    raw = compilation.jit(functools.partial(_raw_maps, nets))
    locals_, globals_ = [], []
    for images in batches:
        local, global_ = raw(params, model_state, frozen, stats, images)
        locals_.append(np.asarray(local).ravel())
        globals_.append(np.asarray(global_).ravel())
    stats = dict(stats)
    stats["q_st"] = jnp.asarray(np.quantile(np.concatenate(locals_), MAP_QUANTILES), jnp.float32)
    stats["q_ae"] = jnp.asarray(np.quantile(np.concatenate(globals_), MAP_QUANTILES), jnp.float32)
    return stats


def _anomaly_map(nets, params, model_state, frozen, stats, images):
    """Combined normalized map at image resolution, [B, H, W]. Image score = its max."""
    local, global_ = _raw_maps(nets, params, model_state, frozen, stats, images)
    combined = 0.5 * normalize_map(local, *stats["q_st"]) + 0.5 * normalize_map(global_, *stats["q_ae"])
    return resize_maps(combined, images.shape[1:3], nets.map_border)


def make(config) -> Method:
    nets = _Nets(config)
    return Method(
        name="efficientad",
        load_frozen=functools.partial(_load_frozen, nets, config),
        init=functools.partial(_init, nets),
        prepare_stats=functools.partial(_prepare_stats, nets),
        loss=functools.partial(_loss, nets, config),
        fit_stats=functools.partial(_fit_stats, nets),
        anomaly_map=functools.partial(_anomaly_map, nets),
        info={"size": config.model.size, "out_channels": config.model.out_channels,
              "compute_dtype": config.train.get("compute_dtype", "float32")},
    )
