"""Dual-student knowledge distillation (DSKD). The paper gives the idea; the architecture is ours.

Paper: one ImageNet teacher (ResNet-18), two students of the same scale with inverted structures,
pyramid matching on layers 1–3, an embedding module through which the students interact, maps
from both students' discrepancies.

Ours (``kdad_jax/models/dual_student.py``):
- student A has the teacher's architecture (random init) and sees the image: shallow → deep;
- the embedding module resizes A's three taps to the deepest tap's grid, concatenates them and
  compresses them (1×1 conv → BN → ReLU → two 3×3 convs) to ``config.dskd.embed_channels``;
- student B decodes the embedding deep → shallow (a 3×3 conv block per tap, bilinear up-sampling
  between them) into one map per tap with the teacher's channel counts.
A learns to imitate the teacher; B learns to reconstruct the teacher's pyramid from A's compressed
features, so B's loss also trains A (the interaction). On a defect A's features drift from the
teacher's and B, which has only seen normal embeddings, reconstructs something normal: both
discrepancies grow.

Loss: Σ_l α_l [mean 0.5‖t̂_l − â_l‖² + mean 0.5‖t̂_l − b̂_l‖²] (channel-normalized features, as STFPM).
Map: per tap 0.5‖t̂ − â‖² + 0.5‖t̂ − b̂‖², up-sampled to the image and combined over taps by
``config.map.combine`` (default sum); image score = max. Teacher choice as STFPM (stfpm.py).
"""

import functools

import jax

from kdad_jax.methods import stfpm
from kdad_jax.methods.base import Method
from kdad_jax.models.dual_student import DualStudent


def _network(nets, config):
    return DualStudent(nets.student, nets.taps, nets.channels, config.dskd.embed_channels)


def _loss(network, nets, config, params, model_state, frozen, stats, batch, rng):
    del stats, rng
    images = batch["image"]
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    t = jax.lax.stop_gradient([t[k] for k in nets.taps])
    (a, b), new_state = stfpm.features(network, {"params": params, **model_state}, images,
                                       train=True, mutable=True)
    weights, w = tuple(config.loss.layer_weights), config.loss.distance_weight
    loss_a = stfpm.feature_loss(t, a, weights, distance_weight=w)
    loss_b = stfpm.feature_loss(t, b, weights, distance_weight=w)
    return loss_a + loss_b, ({"loss_forward": loss_a, "loss_inverted": loss_b}, dict(new_state))


def layer_maps(network, nets, params, model_state, frozen, images):
    """Per tap: forward-student + inverted-student discrepancy, [B, h_l, w_l]."""
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    (a, b), _ = stfpm.features(network, {"params": params, **model_state}, images)
    return [stfpm.layer_distance(t[k], a[i]) + stfpm.layer_distance(t[k], b[i])
            for i, k in enumerate(nets.taps)]


def _anomaly_map(network, nets, config, params, model_state, frozen, stats, images):
    del stats
    maps = layer_maps(network, nets, params, model_state, frozen, images)
    return stfpm.combine_maps(maps, images.shape[1:3], config.map.combine)


def make(config) -> Method:
    stfpm.check_shared_config(config, "dskd")
    nets = stfpm.Nets(config)
    network = _network(nets, config)
    info = {**stfpm.teacher_info(nets), "embed_channels": config.dskd.embed_channels,
            "map": config.map.combine}
    return Method(
        name="dskd",
        load_frozen=functools.partial(stfpm.load_frozen, nets),
        init=functools.partial(stfpm.init_network, network, nets),
        prepare_stats=stfpm.no_stats,
        loss=functools.partial(_loss, network, nets, config),
        fit_stats=stfpm.no_calibration,
        anomaly_map=functools.partial(_anomaly_map, network, nets, config),
        info=info,
    )
