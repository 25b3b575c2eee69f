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
          did not beat them). README.md's table gives its time and scores on bottle.
  smoke   seconds, for tests.
Without config.teacher.checkpoint the teachers are random-init (a warning says so).
Options may follow after a comma: 'demo,category=brick'.
"""

import ml_collections

from kdad_jax import config_files

common = config_files.sibling(__file__, "_common")


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

    common.add_detector_data(c)

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

    common.add_detector_eval(c, batch_size=4)
    return c


def _apply_preset(c, preset):
    common.score_short_presets_at_image_size(c, preset)
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
        common.smoke_steps(c)
        c.eval.num_heatmaps = 2
    elif preset:
        raise ValueError(f"unknown preset {preset!r}: use cpu, demo or smoke")


def get_config(arg: str = ""):
    return config_files.apply_arg(_base(), arg, _apply_preset, {"category": config_files.set_category})
