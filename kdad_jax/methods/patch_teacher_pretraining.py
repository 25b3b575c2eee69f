"""Uninformed Students' teacher pretraining: distill a p×p patch network from an ImageNet backbone.

Per step, from a batch of images [B, S, S, 3] (on device, so the whole step is one XLA program):
random p×p patches (anchor), a copy shifted by up to ``triplet_shift`` pixels with Gaussian noise
(positive) and the anchor of another image (negative). Losses (Bergmann et al., §3.1):
- knowledge distillation: a linear decoder maps the patch descriptor T̂(p) [D] to the backbone's
  descriptor P(p) of the same patch (the patch resized to ``backbone_size``², the tap
  ``pretrain.taps[0]`` averaged over positions); **(ours)** mean over the descriptor's values of
  the squared error, i.e. the paper's ‖D(T̂(p)) − P(p)‖² divided by its length;
- metric learning (weight ``triplet_weight``): max(0, δ + ‖T̂(a) − T̂(p)‖² − min(‖T̂(a) − T̂(n)‖²,
  ‖T̂(p) − T̂(n)‖²)) averaged over the batch;
- descriptor compactness (weight ``compactness_weight``): the squared off-diagonal entries of the
  correlation matrix of the batch's descriptors; **(ours)** averaged over the D(D−1) pairs rather
  than summed — the sum grows like D²/B even for independent dimensions (≈1000 for D = 128,
  B = 16) and swamps the other losses at weight 1.
The decoder is trained with the network and dropped from the saved teacher.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp

from kdad_jax.teachers import backbones
from kdad_jax.data.device_augment import crop_at
from kdad_jax.methods.base import Method, imagenet_normalize
from kdad_jax.models.patch_net import PatchNet


class _TeacherWithDecoder(nn.Module):
    patch_size: int
    dim: int
    target_dim: int

    @nn.compact
    def __call__(self, patches):
        descriptor = PatchNet(self.patch_size, self.dim, name="net")(patches)[:, 0, 0]   # [B, D]
        return descriptor, nn.Dense(self.target_dim, name="decoder")(descriptor)


def triplet_loss(anchor, positive, negative, margin: float):
    """[B, D] × 3 -> scalar (the paper's margin loss with the harder of the two negatives)."""
    d_pos = jnp.sum((anchor - positive) ** 2, axis=-1)
    d_neg = jnp.minimum(jnp.sum((anchor - negative) ** 2, axis=-1),
                        jnp.sum((positive - negative) ** 2, axis=-1))
    return jnp.mean(jnp.maximum(0.0, margin + d_pos - d_neg))


def compactness_loss(descriptors):
    """Mean over i ≠ j of c_ij² of the [D, D] correlation matrix of [B, D] descriptors."""
    centered = descriptors - jnp.mean(descriptors, axis=0)
    std = jnp.sqrt(jnp.mean(centered ** 2, axis=0) + 1e-8)
    normalized = centered / std
    corr = normalized.T @ normalized / descriptors.shape[0]
    d = descriptors.shape[1]
    return (jnp.sum(corr ** 2) - jnp.sum(jnp.diag(corr) ** 2)) / (d * (d - 1))


def sample_triplets(rng, images, p: int, shift: int, noise: float):
    """(anchor, positive, negative) patches [B, p, p, 3] from images [B, S, S, 3]."""
    b, s = images.shape[0], images.shape[1]
    k_y, k_x, k_dy, k_dx, k_noise = jax.random.split(rng, 5)
    ys = jax.random.randint(k_y, (b,), 0, s - p + 1)
    xs = jax.random.randint(k_x, (b,), 0, s - p + 1)
    anchor = crop_at(images, p, ys, xs)
    dy = jax.random.randint(k_dy, (b,), -shift, shift + 1)
    dx = jax.random.randint(k_dx, (b,), -shift, shift + 1)
    positive = crop_at(images, p, jnp.clip(ys + dy, 0, s - p), jnp.clip(xs + dx, 0, s - p))
    positive = jnp.clip(positive + noise * jax.random.normal(k_noise, positive.shape), 0.0, 1.0)
    negative = jnp.roll(anchor, 1, axis=0)   # another image's patch
    return anchor, positive, negative


def make(config) -> Method:
    pre = config.pretrain
    p = int(pre.patch_size)
    tap = pre.taps[0]
    module = backbones.build(pre.backbone, (tap,))
    target_dim = backbones.tap_channels(pre.backbone, tap)
    teacher = _TeacherWithDecoder(p, pre.dim, target_dim)

    def load_frozen(rng):
        del rng
        backbone = backbones.load(pre.backbone, (tap,), pre.backbone_checkpoint)
        return {"backbone": backbone.variables}, f"{backbone.name} from {backbone.source} (sha256 {backbone.sha256[:16]})"

    def init(rng, frozen):
        del frozen
        return teacher.init(rng, jnp.zeros((1, p, p, 3), jnp.float32)), {}

    def backbone_descriptor(frozen, patches):
        side = pre.backbone_size
        view = jax.image.resize(patches, (patches.shape[0], side, side, 3), "linear", antialias=False)
        features = module.apply(frozen["backbone"], imagenet_normalize(view))[tap]
        return features.mean(axis=(1, 2)) if features.ndim == 4 else features

    def loss(params, model_state, frozen, stats, batch, rng):
        del stats
        anchor, positive, negative = sample_triplets(rng, batch["image"], p, pre.triplet_shift,
                                                     pre.triplet_noise)
        target = jax.lax.stop_gradient(backbone_descriptor(frozen, anchor))
        use_triplet = pre.triplet_weight > 0
        patches = jnp.concatenate([anchor, positive, negative]) if use_triplet else anchor
        descriptors, decoded = teacher.apply(params, imagenet_normalize(patches))
        b = anchor.shape[0]
        loss_kd = jnp.mean((decoded[:b] - target) ** 2)
        aux = {"loss_kd": loss_kd}
        total = loss_kd
        if use_triplet:
            aux["loss_triplet"] = triplet_loss(descriptors[:b], descriptors[b:2 * b], descriptors[2 * b:],
                                               pre.triplet_margin)
            total = total + pre.triplet_weight * aux["loss_triplet"]
        if pre.compactness_weight > 0:
            aux["loss_compactness"] = compactness_loss(descriptors[:b])
            total = total + pre.compactness_weight * aux["loss_compactness"]
        return total, (aux, model_state)

    def no_stats(frozen, batches):
        del frozen, batches
        return {}

    def fit_stats(params, model_state, frozen, stats, batches):
        return stats

    def anomaly_map(params, model_state, frozen, stats, images):
        raise ValueError("teacher pretraining produces a teacher, not anomaly maps")

    return Method("students_teacher", load_frozen, init, no_stats, loss, fit_stats, anomaly_map,
                  info={"output": f"teacher_patch{p}", "export_key": "net", "patch_size": p,
                        "dim": pre.dim, "backbone": pre.backbone})
