"""Mixed (skip) distillation. The paper gives the idea; the concrete design is ours.

Paper: besides layer-to-layer matching, skip paths make deep student layers learn from shallow
teacher layers and shallow student layers learn from deep teacher layers, with projections that
fix channel count and resolution.

Ours (``kdad_jax/models/skip_projection.py``): the student has the teacher's architecture (as
STFPM); every skip path (i → j) in ``config.mixed.skip_pairs`` (default all six off-diagonal
pairs of taps 1–3) projects student tap i onto teacher tap j's grid (bilinear, antialiased when
shrinking) and channels (1×1 conv with bias). Loss, with channel-normalized features:
    Σ_l α_l mean 0.5‖t̂_l − ŝ_l‖²  +  w_skip · Σ_(i→j) mean 0.5‖t̂_j − P_ij(s_i)^‖²
Map per teacher tap j: the direct discrepancy plus, when ``config.map.paths == 'all'``, the mean
discrepancy of the skip paths that end at j; taps combined by ``config.map.combine`` (default
product, as STFPM). Teacher choice as STFPM (stfpm.py).
"""

import functools
from typing import Tuple

import jax

from kdad_jax.methods import stfpm
from kdad_jax.methods.base import Method
from kdad_jax.models.skip_projection import MixedStudent


def parse_pairs(text: str, count: int) -> Tuple[Tuple[int, int], ...]:
    """'3-1,1-3' (1-based student-teacher taps) -> ((2, 0), (0, 2)); 'all' = every i ≠ j."""
    if text.strip() == "all":
        return tuple((i, j) for i in range(count) for j in range(count) if i != j)
    pairs = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        i, j = (int(v) - 1 for v in item.split("-"))
        if not (0 <= i < count and 0 <= j < count) or i == j:
            raise ValueError(f"config.mixed.skip_pairs: {item!r} is not a pair of different taps 1..{count}")
        pairs.append((i, j))
    return tuple(pairs)


def _loss(network, nets, config, params, model_state, frozen, stats, batch, rng):
    del stats, rng
    images = batch["image"]
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    t = jax.lax.stop_gradient([t[k] for k in nets.taps])
    (s, projected), new_state = stfpm.features(network, {"params": params, **model_state}, images,
                                               train=True, mutable=True)
    w = config.loss.distance_weight
    loss_direct = stfpm.feature_loss(t, s, tuple(config.loss.layer_weights), distance_weight=w)
    loss_skip = 0.0
    for (i, j), p in projected.items():
        loss_skip = loss_skip + stfpm.feature_loss([t[j]], [p], (1.0,), distance_weight=w)
    total = loss_direct + config.mixed.skip_weight * loss_skip
    return total, ({"loss_direct": loss_direct, "loss_skip": loss_skip}, dict(new_state))


def layer_maps(network, nets, config, params, model_state, frozen, images):
    """Per teacher tap j: direct discrepancy (+ mean of the skip paths ending at j), [B, h_j, w_j]."""
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    (s, projected), _ = stfpm.features(network, {"params": params, **model_state}, images)
    maps = []
    for j, k in enumerate(nets.taps):
        m = stfpm.layer_distance(t[k], s[j])
        incoming = [p for (_, target), p in projected.items() if target == j]
        if config.map.paths == "all" and incoming:
            m = m + sum(stfpm.layer_distance(t[k], p) for p in incoming) / len(incoming)
        maps.append(m)
    return maps


def _anomaly_map(network, nets, config, params, model_state, frozen, stats, images):
    del stats
    maps = layer_maps(network, nets, config, params, model_state, frozen, images)
    return stfpm.combine_maps(maps, images.shape[1:3], config.map.combine)


def make(config) -> Method:
    stfpm.check_shared_config(config, "mixed")
    if config.map.paths not in ("all", "direct"):
        raise ValueError(f"config.map.paths must be 'all' or 'direct', not {config.map.paths!r}")
    nets = stfpm.Nets(config)
    pairs = parse_pairs(config.mixed.skip_pairs, len(nets.taps))
    network = MixedStudent(nets.student, nets.taps, nets.channels, pairs)
    info = {**stfpm.teacher_info(nets), "skip_pairs": [f"{i + 1}-{j + 1}" for i, j in pairs],
            "skip_weight": config.mixed.skip_weight, "map": config.map.combine,
            "map_paths": config.map.paths}
    return Method(
        name="mixed",
        load_frozen=functools.partial(stfpm.load_frozen, nets),
        init=functools.partial(stfpm.init_network, network, nets),
        prepare_stats=stfpm.no_stats,
        loss=functools.partial(_loss, network, nets, config),
        fit_stats=stfpm.no_calibration,
        anomaly_map=functools.partial(_anomaly_map, network, nets, config),
        info=info,
    )
