"""EfficientAD (Batzner et al., WACV 2024).

Presets (the part after ':' in --config):
  (none) / s  paper settings, EfficientAD-S: 256², 70 000 steps, batch 1, Adam 1e-4, L2 1e-5.
              python -m kdad_jax.main --config=configs/efficientad.py --workdir=W \
                  --config.data.root=/data/mvtec_ad --config.data.category=all
  m           EfficientAD-M, otherwise the paper settings.
  cpu         real data on a 2-core CPU: the shipped PDN-S teacher, 160² images, batch 1, 1500
              steps at lr 1e-3 (x0.1 for the last 5 %) — docs/results.md gives the
              time (about 13 minutes per category) and the scores on real MVTec bottle. Chosen on
              defects pasted into held-out bottle *training* images (kdad_jax/data/synthetic.py),
              never on a test split; there, with the shipped (step-900) teacher: 128² x 1000
              steps 0.982 / 0.969 / 0.872 (image AUROC / pixel AUROC / AU-PRO), 160² x 1500
              steps 0.981 / 0.981 / 0.912: the same image AUROC, better localization, so 160².
              (With the 800-step teacher before it: 128² 1000 vs 2500 steps, no better at 2500.)
              The 8000-step teacher (builtin:pdn_s_efficientnet_lite0_8000) there, seeds 0/1:
              image AUROC 0.969/0.970 vs 0.974/0.987, AU-PRO 0.919/0.925 vs 0.911/0.918: better
              localization, worse detection, so this preset keeps the step-900 teacher.
              python -m kdad_jax.main --config=configs/efficientad.py:cpu --workdir=W \
                  --config.data.root=/data/mvtec_ad --config.data.category=bottle \
                  --config.penalty.root=/data/imagenet/train
  demo        the offline embedded dataset (brick and gravel of its three categories), sized to
              train and evaluate in about 10 minutes on a 2-core CPU: 96² images, batch 1,
              300 steps at lr 1e-3 (short schedules need the larger step), with the shipped
              PDN-S teacher distilled from EfficientNet-Lite0 (builtin:pdn_s_efficientnet_lite0).
  smoke       seconds, for tests: 64² images, 3 steps.
Options may follow after a comma, e.g. 'demo,size=m'.
"""

import ml_collections

from kdad_jax import config_files

common = config_files.sibling(__file__, "_common")


def _base():
    c = ml_collections.ConfigDict()
    c.method = "efficientad"
    c.seed = 0
    c.image_size = 256
    c.cpu_preset = "configs/efficientad.py:cpu"  # suggested when a run would take hours on a CPU

    c.model = ml_collections.ConfigDict()
    c.model.size = "s"            # s | m
    c.model.out_channels = 384    # teacher feature channels (the student has twice as many)
    c.model.padded = False        # reference implementations train and infer without padding
    c.model.map_border = "zeros"  # the map's frame before up-sampling: zeros (reference) | edge (ours)

    c.teacher = ml_collections.ConfigDict()
    # msgpack file or Orbax dir of PDN teacher params, 'builtin:pdn_s_efficientnet_lite0' (shipped,
    # distilled here from EfficientNet-Lite0), or '' = a frozen random-init teacher.
    c.teacher.checkpoint = ""

    common.add_detector_data(c)

    c.penalty = ml_collections.ConfigDict()
    c.penalty.root = ""           # folder of pretraining (ImageNet) images; '' = scikit-image photos
    c.penalty.grayscale_prob = 0.3  # random grayscale of the penalty images (paper)

    c.loss = ml_collections.ConfigDict()
    c.loss.hard_quantile = 0.999  # hard-feature loss: mean of the squared errors above this quantile
    c.loss.penalty_weight = 1.0   # weight of the student-output penalty on pretraining images

    c.train = ml_collections.ConfigDict()
    c.train.parallel_categories = 1  # categories trained at once as one program (vmap)
    c.train.compute_dtype = "float32"  # 'bfloat16': convolutions in bf16 (params, losses float32)
    c.train.steps = 70_000
    c.train.batch_size = 1  # GLOBAL batch (all devices together)
    c.train.per_device_batch_size = 0  # > 0: global batch = this × devices (overrides batch_size)
    c.train.learning_rate = 1e-4
    c.train.weight_decay = 1e-5   # coupled L2, as PyTorch Adam's weight_decay
    c.train.lr_drop_fraction = 0.95  # lr x0.1 after this fraction of steps
    c.train.checkpoint_every = 5_000
    c.train.log_every = 50
    c.train.color_jitter = 0.2    # factor U(1-j, 1+j) for the AE input

    common.add_detector_eval(c, batch_size=8)
    return c


def _apply_preset(c, preset):
    common.score_short_presets_at_image_size(c, preset)
    if preset == "m":
        c.model.size = "m"
    elif preset == "demo":
        c.image_size = 96
        c.data.category = "brick,gravel"
        c.teacher.checkpoint = "builtin:pdn_s_efficientnet_lite0"
        c.train.steps = 300
        c.train.batch_size = 1
        c.train.learning_rate = 1e-3
        c.train.checkpoint_every = 100
        c.train.log_every = 10
    elif preset == "cpu":
        c.image_size = 160
        c.teacher.checkpoint = "builtin:pdn_s_efficientnet_lite0"
        c.train.steps = 1500
        c.train.batch_size = 1
        c.train.learning_rate = 1e-3
        c.train.checkpoint_every = 250
        c.train.log_every = 25
    elif preset == "smoke":
        c.image_size = 64
        c.model.out_channels = 16
        common.smoke_steps(c)
        c.eval.num_heatmaps = 2
    elif preset not in ("", "s"):
        raise ValueError(f"unknown preset {preset!r}: use s, m, cpu, demo or smoke")


def get_config(arg: str = ""):
    """``arg``: 'PRESET[,key=value...]' with keys size=s|m, category=NAME."""
    c = config_files.apply_arg(_base(), arg, _apply_preset, {
        "size": lambda c, value: setattr(c.model, "size", value),
        "category": config_files.set_category})
    if c.teacher.checkpoint.startswith("builtin:pdn_s") and (c.model.size != "s" or c.model.out_channels != 384):
        c.teacher.checkpoint = ""  # the shipped teacher is a PDN-S with 384 channels
    return c
