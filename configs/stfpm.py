"""STFPM (Wang et al., BMVC 2021): ResNet-18 teacher, same-shape student, multi-scale matching.

Presets (the part after ':' in --config):
  (none)  paper settings: 128² images, SGD lr 0.4, momentum 0.9, weight decay 1e-4, batch 32,
          300 epochs; the teacher is a torchvision ResNet-18 checkpoint:
              python -m kdad_jax.main --config=configs/stfpm.py --workdir=W \
                  --config.data.root=/data/mvtec_ad --config.data.category=all \
                  --config.teacher.checkpoint=resnet18-f37072fd.pth
          Without a checkpoint the offline ImageNet EfficientNet-Lite0 (installed with the package)
          is the teacher, with a Lite0 student; the log and results.json say so.
  cpu     real data on a 2-core CPU (the same for configs/eca_mskdad.py, dskd.py, mixed.py): the
          offline Lite0 teacher, 128² images, batch 8, 40 epochs at lr 0.1 — about 5 minutes per
          category of ~200 training images for STFPM (docs/results.md). Chosen on
          defects pasted into held-out bottle *training* images (kdad_jax/data/synthetic.py):
          there 40 and 80 epochs scored the same (image AUROC 0.981 / 0.982), and 256² at 15
          epochs (the same time) was worse (0.793).
              python -m kdad_jax.main --config=configs/stfpm.py:cpu --workdir=W \
                  --config.data.root=/data/mvtec_ad --config.data.category=bottle
  demo    the offline embedded dataset (brick and gravel), minutes on a 2-core CPU: batch 8,
          15 epochs at lr 0.1 (short runs need a gentler step than the paper's 0.4).
  smoke   seconds, for tests: 64² images, 3 steps.
Options may follow after a comma: 'demo,category=brick,eca=1,relative=1,pair=1'.
"""

import ml_collections

from kdad_jax import config_files

common = config_files.sibling(__file__, "_common")
METHOD = "stfpm"


def _base():
    c = ml_collections.ConfigDict()
    c.method = METHOD
    c.seed = 0
    c.image_size = 128

    c.teacher = ml_collections.ConfigDict()
    c.teacher.arch = "resnet18"   # teacher and student backbone (resnet18, wide_resnet50_2, ...)
    # torchvision .pth of teacher.arch, or the msgpack `python -m kdad_jax.teachers.convert` wrote.
    c.teacher.checkpoint = ""
    # used when no checkpoint is given and its weights ship in an installed package; '' = none.
    c.teacher.fallback = "efficientnet_lite0"
    c.teacher.taps = ""           # comma-separated; '' = layer1,layer2,layer3 (Lite: stage1,2,4)

    c.student = ml_collections.ConfigDict()
    c.student.eca = False         # ECA blocks after batch norms (ECA-MSKDAD)
    c.student.eca_after = ""      # fnmatch patterns of BN paths; '' = the default (models/eca.py)

    c.loss = ml_collections.ConfigDict()
    c.loss.layer_weights = (1.0, 1.0, 1.0)  # α_l per tap
    # w of w·‖t̂ − ŝ‖²: the paper writes 0.5, the authors' code uses 1 (no ½), so their lr 0.4
    # takes twice the paper formula's step; 1 matches their code
    c.loss.distance_weight = 1.0
    c.loss.cosine_weight = 0.0    # λ of the (1 − cos) term
    c.loss.augmented_pair = False  # also match features on an augmented copy of each image
    c.loss.relative_distance = False  # Σ_l (d_T − d_S)² between image and augmented copy
    c.loss.relative_weight = 1.0  # weight of the relative-distance loss

    c.augment = ml_collections.ConfigDict()  # the augmented copy, on device (data/device_augment.py)
    c.augment.color_prob = 0.8    # probability of the colour distortion
    c.augment.brightness = 0.4    # colour distortion: brightness factor range ±
    c.augment.contrast = 0.4      # colour distortion: contrast factor range ±
    c.augment.saturation = 0.4    # colour distortion: saturation factor range ±
    c.augment.hue = 0.1           # colour distortion: hue shift range ± (fraction of a turn)
    c.augment.grayscale_prob = 0.8  # probability of random grayscale
    c.augment.blur_prob = 0.8     # probability of Gaussian blur
    c.augment.blur_sigma_min = 0.1  # Gaussian blur sigma range (pixels), low end
    c.augment.blur_sigma_max = 2.0  # Gaussian blur sigma range (pixels), high end

    c.map = ml_collections.ConfigDict()
    c.map.combine = "product"     # product | sum of the up-sampled layer maps

    common.add_detector_data(c)

    c.train = ml_collections.ConfigDict()
    c.train.parallel_categories = 1  # categories trained at once as one program (vmap)
    c.train.optimizer = "sgd"
    c.train.learning_rate = 0.4
    c.train.momentum = 0.9
    c.train.weight_decay = 1e-4   # the paper's (anomalib uses 1e-3)
    c.train.batch_size = 32  # GLOBAL batch (all devices together)
    c.train.per_device_batch_size = 0  # > 0: global batch = this × devices (overrides batch_size)
    c.train.epochs = 300          # steps = epochs × train images / batch, per category
    c.train.steps = 0             # set from epochs; a value here counts only when epochs = 0
    c.train.lr_drop_fraction = 1.0  # constant lr
    c.train.checkpoint_every = 500
    c.train.log_every = 20

    common.add_detector_eval(c, batch_size=16)
    return c


def _apply_preset(c, preset):
    common.score_short_presets_at_image_size(c, preset)
    if preset == "demo":
        c.data.category = "brick,gravel"
        c.train.batch_size = 8
        c.train.epochs = 15
        c.train.learning_rate = 0.1
        c.train.checkpoint_every = 50
        c.train.log_every = 10
    elif preset == "cpu":
        c.train.batch_size = 8
        c.train.epochs = 40
        c.train.learning_rate = 0.1
        c.train.checkpoint_every = 200
        c.train.log_every = 20
    elif preset == "smoke":
        c.image_size = 64
        common.smoke_steps(c)
        c.eval.batch_size = 4
        c.eval.num_heatmaps = 2
    elif preset:
        raise ValueError(f"unknown preset {preset!r}: use cpu, demo or smoke")


_FLAGS = {"eca": ("student", "eca"), "relative": ("loss", "relative_distance"),
          "pair": ("loss", "augmented_pair")}


def configure(c, arg: str, apply_method_defaults=lambda c: None):
    """Presets and 'key=value' options from ``arg`` (shared with configs/eca_mskdad.py)."""
    apply_method_defaults(c)
    c.cpu_preset = f"configs/{c.method}.py:cpu"  # suggested when a run would take hours on a CPU
    options = {key: _flag_setter(section, name) for key, (section, name) in _FLAGS.items()}
    return config_files.apply_arg(c, arg, _apply_preset,
                                  {**options, "category": config_files.set_category})


def _flag_setter(section: str, name: str):
    def set_flag(c, value: str):
        c[section][name] = value.lower() in ("1", "true", "on", "yes")
    return set_flag


def get_config(arg: str = ""):
    return configure(_base(), arg)
