"""Uninformed Students (Bergmann et al., CVPR 2020): patch teachers, ensembles of dense students.

Per patch size p in ``config.students.scales`` (17, 33, 65): a frozen patch teacher T_p
(``kdad_jax/models/patch_net.py``, distilled from an ImageNet backbone by
``configs/students_teacher.py``) and M students of the same architecture
(``config.students.count``, default 3), all evaluated densely — one descriptor per pixel for the
whole image, not patch by patch. The M students' parameters are stacked on a leading axis and
run with ``jax.vmap`` inside one jitted step.

Students regress the teacher's descriptors normalized by their per-channel mean/std over the
training images: loss_p = mean over students, images and pixels of ‖S_i − (T − μ)/σ‖² (sum over
the D channels). Training uses random crops: the dense network is VALID, so the descriptors of a
crop's pixels equal those of the same pixels in the whole image (``config.students.train_crop``
output pixels per side; 0 = whole images).

Scores per pixel and scale: regression error e = ‖mean_i S_i − y‖² and predictive uncertainty
v = mean_i ‖S_i‖² − ‖mean_i S_i‖²; each standardized by its mean/std over the validation images
(held-out training images); score = ẽ + ṽ; the map is the average over scales; image score = max.
"""

import functools
import glob
import os
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax.kernels import compilation
from kdad_jax.data import device_augment
from kdad_jax.errors import UserError
from kdad_jax.methods.base import Method, host_mean_std, imagenet_normalize
from kdad_jax.models.patch_net import PatchNet, dense_features, pad_for_dense
from kdad_jax.teachers import weights

_NAN = np.float32(np.nan)


def scale_key(p: int) -> str:
    return f"p{p}"


def teacher_file(folder: str, p: int) -> str:
    """Where ``configs/students_teacher.py`` writes the teacher for patch size p."""
    return os.path.join(folder, f"teacher_patch{p}.msgpack")


# ---------------------------------------------------------------------------------------------
# Ensemble statistics (pure; tests compare them with numpy).

def regression_error(student_outputs, target):
    """‖mean_i S_i − y‖² per pixel: [M, B, H, W, D], [B, H, W, D] -> [B, H, W]."""
    return jnp.sum((jnp.mean(student_outputs, axis=0) - target) ** 2, axis=-1)


def predictive_uncertainty(student_outputs):
    """mean_i ‖S_i‖² − ‖mean_i S_i‖² per pixel: [M, B, H, W, D] -> [B, H, W]."""
    mean = jnp.mean(student_outputs, axis=0)
    return jnp.mean(jnp.sum(student_outputs ** 2, axis=-1), axis=0) - jnp.sum(mean ** 2, axis=-1)


def regression_loss(student_outputs, target):
    """mean over students, images, pixels of ‖S_i − y‖²: [M, B, H, W, D], [B, H, W, D] -> scalar."""
    return jnp.mean(jnp.sum((student_outputs - target[None]) ** 2, axis=-1))


# ---------------------------------------------------------------------------------------------

class _Nets:
    def __init__(self, config):
        self.scales = tuple(int(p) for p in config.students.scales)
        self.count = config.students.count
        self.nets = {p: PatchNet(p, config.students.dim) for p in self.scales}
        self.image_hw = (config.image_size, config.image_size)

    def dense(self, p, variables, images):
        return dense_features(self.nets[p], variables, imagenet_normalize(images))

    def students_dense(self, p, stacked, images):
        """Every student's descriptors: stacked params [M, ...] -> [M, B, H, W, D]."""
        return jax.vmap(lambda v: self.dense(p, v, images))(stacked)


def _patch_dummy(p):
    return jnp.zeros((1, p, p, 3), jnp.float32)


def _load_frozen(nets, config, rng):
    """Teachers from ``config.teacher.checkpoint`` (the teacher-pretraining workdir holding
    ``teacher_patch<p>.msgpack``), else random-init teachers (with a warning from train.py)."""
    folder = config.teacher.checkpoint
    teachers, sources = {}, []
    for p, key in zip(nets.scales, jax.random.split(rng, len(nets.scales))):
        abstract = jax.eval_shape(nets.nets[p].init, key, _patch_dummy(p))
        if folder:
            teachers[scale_key(p)], source = weights.load(teacher_file(folder, p), abstract)
            sources.append(source)
        else:
            teachers[scale_key(p)] = jax.jit(nets.nets[p].init)(key, _patch_dummy(p))
    return {"teachers": teachers}, (",".join(sources) if sources else "random-init")


def _init(nets, rng, frozen):
    del frozen
    params = {}
    for p, key in zip(nets.scales, jax.random.split(rng, len(nets.scales))):
        keys = jax.random.split(key, nets.count)
        params[scale_key(p)] = jax.vmap(lambda k, p=p: nets.nets[p].init(k, _patch_dummy(p)))(keys)
    return params, {}


def _prepare_stats(nets, frozen, batches):
    """Per-channel mean/std of each teacher's dense descriptors over the training images."""
    batches = list(batches)
    stats = {}
    for p in nets.scales:
        key = scale_key(p)
        dense = compilation.jit(functools.partial(nets.dense, p))
        mean, std = host_mean_std((dense(frozen["teachers"][key], b) for b in batches),
                                  nets.nets[p].dim, min_variance=1e-12)
        stats[f"mean_{key}"] = jnp.asarray(mean, jnp.float32)
        stats[f"std_{key}"] = jnp.asarray(std, jnp.float32)
        for name in ("e_mean", "e_std", "v_mean", "v_std"):
            stats[f"{name}_{key}"] = jnp.asarray(_NAN)
    return stats


def _random_crops(rng, images, side):
    """Same-size random crops, one position per image: [B, H, W, 3] -> [B, side, side, 3]."""
    b, h, w, _ = images.shape
    ys = jax.random.randint(rng, (b,), 0, h - side + 1)
    xs = jax.random.randint(jax.random.fold_in(rng, 1), (b,), 0, w - side + 1)
    return device_augment.crop_at(images, side, ys, xs)


def _crop_input(p, side):
    """Input side whose VALID dense output has ``side`` pixels: side + p − 1."""
    return side + p - 1


def _loss(nets, config, params, model_state, frozen, stats, batch, rng):
    """Σ_p regression loss of the M students against the normalized teacher, on random crops."""
    images = imagenet_normalize(batch["image"])
    crop = config.students.train_crop
    total, aux = 0.0, {}
    for p, key_rng in zip(nets.scales, jax.random.split(rng, len(nets.scales))):
        key = scale_key(p)
        padded = pad_for_dense(images, p)
        side = min(crop, images.shape[1], images.shape[2]) if crop else None
        if side:
            padded = _random_crops(key_rng, padded, _crop_input(p, side))
        out_hw = (side, side) if side else images.shape[1:3]
        net = nets.nets[p]
        teacher = net.apply(frozen["teachers"][key], padded, dense=True)[:, :out_hw[0], :out_hw[1]]
        target = jax.lax.stop_gradient((teacher - stats[f"mean_{key}"]) / stats[f"std_{key}"])
        students = jax.vmap(lambda v: net.apply(v, padded, dense=True))(params[key])
        loss = regression_loss(students[:, :, :out_hw[0], :out_hw[1]], target)
        aux[f"loss_{key}"] = loss
        total = total + loss
    return total, (aux, model_state)


def _raw_scores(nets, params, frozen, stats, images) -> Dict[str, tuple]:
    """Per scale: (regression error, predictive uncertainty), each [B, H, W]."""
    scores = {}
    for p in nets.scales:
        key = scale_key(p)
        target = (nets.dense(p, frozen["teachers"][key], images) - stats[f"mean_{key}"]) / stats[f"std_{key}"]
        students = nets.students_dense(p, params[key], images)
        scores[key] = (regression_error(students, target), predictive_uncertainty(students))
    return scores


def _fit_stats(nets, params, model_state, frozen, stats, batches):
    """Mean/std of e and v per scale over the validation pixels (float64 on the host)."""
    del model_state
    raw = compilation.jit(functools.partial(_raw_scores, nets))
    outputs = [raw(params, frozen, stats, b) for b in batches]
    stats = dict(stats)
    for p in nets.scales:
        key = scale_key(p)
        for index, name in ((0, "e"), (1, "v")):
            mean, std = host_mean_std((o[key][index] for o in outputs), min_variance=1e-12)
            stats[f"{name}_mean_{key}"] = jnp.asarray(mean, jnp.float32)
            stats[f"{name}_std_{key}"] = jnp.asarray(std, jnp.float32)
    return stats


def _anomaly_map(nets, params, model_state, frozen, stats, images):
    """Average over scales of standardized error + standardized uncertainty, [B, H, W]."""
    del model_state
    scores = _raw_scores(nets, params, frozen, stats, images)
    total = 0.0
    for key, (error, uncertainty) in scores.items():
        total = total + ((error - stats[f"e_mean_{key}"]) / stats[f"e_std_{key}"]
                         + (uncertainty - stats[f"v_mean_{key}"]) / stats[f"v_std_{key}"])
    return total / len(scores)


def make(config) -> Method:
    unknown = set(int(p) for p in config.students.scales) - {17, 33, 65}
    if unknown:
        raise ValueError(f"config.students.scales: patch sizes {sorted(unknown)} unknown; use 17, 33, 65")
    if config.teacher.checkpoint:
        missing = [teacher_file(config.teacher.checkpoint, int(p)) for p in config.students.scales
                   if not os.path.exists(teacher_file(config.teacher.checkpoint, int(p)))]
        if missing:
            found = sorted(glob.glob(os.path.join(config.teacher.checkpoint, "teacher_patch*.msgpack")))
            raise UserError(f"no patch teacher {missing[0]} (found: {found or 'none'}); "
                             f"train it with configs/students_teacher.py")
    nets = _Nets(config)
    return Method(
        name="students",
        load_frozen=functools.partial(_load_frozen, nets, config),
        init=functools.partial(_init, nets),
        prepare_stats=functools.partial(_prepare_stats, nets),
        loss=functools.partial(_loss, nets, config),
        fit_stats=functools.partial(_fit_stats, nets),
        anomaly_map=functools.partial(_anomaly_map, nets),
        info={"scales": list(nets.scales), "students": nets.count, "dim": config.students.dim,
              "train_crop": config.students.train_crop},
    )
