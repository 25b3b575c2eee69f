"""Uninformed Students (Bergmann et al., CVPR 2020): dense patch teachers, ensembles of students.

Presets (the part after ':' in --config):
  (none)  paper settings: 256² images, patch sizes 17/33/65, 3 students each, D = 128, Adam lr 1e-4,
          weight decay 1e-5, 100 epochs of whole images, batch 1; teachers from
          configs/students_teacher.py:
              python -m kdad_jax.main --config=configs/students.py --workdir=W \
                  --config.data.root=/data/mvtec_ad --config.teacher.checkpoint=TEACHER_WORKDIR
  demo    the embedded dataset (brick, gravel) in minutes on a 2-core CPU: 64² images, patch
          sizes 17 and 33, random 12² crops (output pixels), batch 4, 8 epochs, lr 1e-3.
  cpu     your real data on a 2-core CPU: the demo's settings (64², p = 17 and 33, crops, batch 4,
          8 epochs, lr 1e-3) on every category; random-init patch teachers unless
          config.teacher.checkpoint names distilled ones (on the demo, 60-step distilled teachers
          did not beat them). README "Real data on a CPU" gives its time and scores on bottle.
  smoke   seconds, for tests.
Without config.teacher.checkpoint the teachers are random-init (a warning says so).
Options may follow after a comma: 'demo,category=brick'.
"""

import ml_collections

from kdad_jax import config_files


def _base():
    c = ml_collections.ConfigDict()
    c.method = "students"
    c.seed = 0
    c.image_size = 256
    c.cpu_preset = "configs/students.py:cpu"  # suggested when a run would take hours on a CPU

    c.teacher = ml_collections.ConfigDict()
    c.teacher.checkpoint = ""     # folder with teacher_patch{17,33,65}.msgpack; '' = random init

    c.students = ml_collections.ConfigDict()
    c.students.scales = (17, 33, 65)  # patch sizes (receptive fields); maps average over them
    c.students.count = 3          # M students per scale
    c.students.dim = 128          # descriptor size D
    c.students.train_crop = 0     # output pixels per side of random training crops; 0 = whole image

    c.data = ml_collections.ConfigDict()
    c.data.root = ""
    c.data.format = "mvtec"       # folder layout: mvtec (also users' own folders) | visa | loco
    c.data.category = "all"
    c.data.validation_fraction = 0.1  # held out of train/good: standardizes e and v
    c.data.num_threads = 2
    c.data.device_data_mb = 2048  # training images kept in device memory up to this size (0: host)

    c.train = ml_collections.ConfigDict()
    c.train.parallel_categories = 1  # categories trained at once as one program (vmap)
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-4
    c.train.weight_decay = 1e-5
    c.train.batch_size = 1  # GLOBAL batch (all devices together)
    c.train.per_device_batch_size = 0  # > 0: global batch = this × devices (overrides batch_size)
    c.train.epochs = 100
    c.train.steps = 0             # set from epochs; counts only when epochs = 0
    c.train.lr_drop_fraction = 1.0
    c.train.checkpoint_every = 1000
    c.train.log_every = 20

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 4
    c.eval.num_heatmaps = 8
    c.eval.threshold_percentile = 99.0  # test set without anomalies: threshold = this percentile of validation scores
    c.eval.plots = True           # ROC / PRO curve PNG per category in W/plots/
    # Metrics at each test image's own size, maps resized to it (as MVTec's evaluators and papers
    # score); the cpu, demo and smoke presets score at image_size (faster; their README figures).
    c.eval.original_size = True
    # FPR limits of AU-PRO: `au_pro` at the first, `au_pro_at` at each (MVTec AD 2: (0.05,))
    c.eval.fpr_limits = (0.3,)

    c.export = ml_collections.ConfigDict()
    c.export.format = "jax_export"  # --mode=export writes: jax_export (StableHLO, any JAX platform) | onnx
    c.export.precision = "float32"  # ONNX only: float32 | float16 (GPUs) | int8 (CPU lines, calibrated on training images)
    return c


def _apply_preset(c, preset):
    if preset in ("demo", "cpu", "smoke"):
        c.eval.original_size = False
    if preset in ("demo", "cpu"):
        c.image_size = 64
        c.data.category = "brick,gravel"
        c.students.scales = (17, 33)
        c.students.train_crop = 12
        c.train.batch_size = 4
        c.train.epochs = 8
        c.train.learning_rate = 1e-3
        c.train.checkpoint_every = 100
        c.train.log_every = 10
        c.eval.batch_size = 8
        if preset == "cpu":
            c.data.category = "all"
    elif preset == "smoke":
        c.image_size = 32
        c.students.scales = (17, 33)
        c.students.count = 2
        c.students.dim = 16
        c.students.train_crop = 8
        c.train.epochs = 0
        c.train.steps = 3
        c.train.batch_size = 2
        c.train.checkpoint_every = 2
        c.train.log_every = 1
        c.eval.num_heatmaps = 2
    elif preset:
        raise ValueError(f"unknown preset {preset!r}: use cpu, demo or smoke")


def get_config(arg: str = ""):
    return config_files.apply_arg(_base(), arg, _apply_preset, {"category": config_files.set_category})
