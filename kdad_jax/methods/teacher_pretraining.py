"""EfficientAD teacher pretraining: distill a padded PDN from an ImageNet backbone's features.

Targets follow the paper's recipe (DESIGN.md §EfficientAD): the backbone sees a large view
(512² by default) of an image; each configured tap is averaged over 3×3 neighbourhoods (stride 1,
pad 1), resized bilinearly to the first tap's grid, its channel vector average-pooled to
``pool_dims`` (1024) values; the taps' vectors are concatenated and pooled to the PDN's 384
output channels, then normalized per channel with a mean/std estimated before training. The PDN
sees the same image at half the side (256², padded convolutions → 64² = the first tap's grid for
stride-8 taps of a 512² view); MSE between the two.
"""

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax.kernels import compilation
from kdad_jax.teachers import backbones
from kdad_jax.errors import UserError
from kdad_jax.methods.base import Method, host_mean_std, imagenet_normalize
from kdad_jax.models.pdn import PDN


def adaptive_pool_matrix(length: int, out: int) -> np.ndarray:
    """[length, out] matrix of PyTorch ``adaptive_avg_pool1d`` bins (repeats when out > length)."""
    matrix = np.zeros((length, out), np.float32)
    for i in range(out):
        start, end = (i * length) // out, -(-((i + 1) * length) // out)
        matrix[start:end, i] = 1.0 / (end - start)
    return matrix


def backbone_targets(backbone_apply, taps, pool_dims: int, out_channels: int, images):
    """images [B, S, S, 3] in [0, 1] -> raw targets [B, h, w, out_channels] (h = first tap's grid)."""
    features = backbone_apply(imagenet_normalize(images))
    grid = features[taps[0]].shape[1:3]
    pooled = []
    for tap in taps:
        x = features[tap]
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                                  ((0, 0), (1, 1), (1, 1), (0, 0))) / 9.0
        if x.shape[1:3] != grid:
            x = jax.image.resize(x, (x.shape[0], *grid, x.shape[3]), "linear", antialias=False)
        pooled.append(x @ jnp.asarray(adaptive_pool_matrix(x.shape[-1], pool_dims)))
    stacked = jnp.concatenate(pooled, axis=-1)
    return stacked @ jnp.asarray(adaptive_pool_matrix(stacked.shape[-1], out_channels))


def make(config) -> Method:
    pre = config.pretrain
    taps = tuple(pre.taps)
    pdn = PDN(config.model.size, config.model.out_channels, padded=True)
    pdn_side = config.image_size // 2

    def load_frozen(rng):
        del rng
        backbone = backbones.load(pre.backbone, taps, pre.backbone_checkpoint)
        description = f"{backbone.name} from {backbone.source} (sha256 {backbone.sha256[:16]})"
        return {"backbone": backbone.variables}, description

    module = backbones.build(pre.backbone, taps)

    def targets(frozen, images):
        apply = functools.partial(module.apply, frozen["backbone"])
        return backbone_targets(apply, taps, pre.pool_dims, config.model.out_channels, images)

    def pdn_view(images):
        return jax.image.resize(images, (images.shape[0], pdn_side, pdn_side, 3), "linear")

    def init(rng, frozen):
        del frozen
        return pdn.init(rng, jnp.zeros((1, pdn_side, pdn_side, 3), jnp.float32)), {}

    def prepare_stats(frozen, batches: Iterable[np.ndarray]):
        """Per-channel mean/std of the raw targets (float64 on the host), first N images."""
        compute = compilation.jit(targets)
        mean, std = host_mean_std((compute(frozen, batch) for batch in batches),
                                  config.model.out_channels, min_variance=1e-12)
        return {"target_mean": jnp.asarray(mean, jnp.float32), "target_std": jnp.asarray(std, jnp.float32)}

    def loss(params, model_state, frozen, stats, batch, rng):
        del rng
        images = batch["image"]
        target = (targets(frozen, images) - stats["target_mean"]) / stats["target_std"]
        prediction = pdn.apply(params, imagenet_normalize(pdn_view(images)))
        if prediction.shape[1:3] != target.shape[1:3]:
            raise UserError(f"PDN output {prediction.shape[1:3]} does not match the backbone grid "
                            f"{target.shape[1:3]}: use stride-8 first taps and image_size 512")
        mse = jnp.mean((jax.lax.stop_gradient(target) - prediction) ** 2)
        return mse, ({"mse": mse}, model_state)

    def fit_stats(params, model_state, frozen, stats, batches):
        del params, model_state, frozen, batches
        return stats

    def anomaly_map(params, model_state, frozen, stats, images):
        raise UserError("teacher pretraining produces a teacher, not anomaly maps")

    return Method("efficientad_teacher", load_frozen, init, prepare_stats, loss, fit_stats, anomaly_map,
                  info={"backbone": pre.backbone, "size": config.model.size})
