"""Dual-student KD (architecture ours; kdad_jax/methods/dskd.py): the STFPM teacher, a forward
student, an embedding module and an inverted (deep → shallow) student.

Presets and options as configs/stfpm.py (demo, smoke; category=NAME):
    python -m kdad_jax.main --config=configs/dskd.py:demo --workdir=/tmp/dskd
Training defaults are STFPM's (SGD, momentum 0.9, weight decay 1e-4, batch 32, 128², 300 epochs)
at lr 0.1 (ours: the embedding and the inverted student train from scratch; the paper's rate was
not tuned for them here).
"""

import ml_collections

from kdad_jax import config_files


def _dskd_defaults(c):
    c.method = "dskd"
    c.loss.distance_weight = 0.5  # the ½ of DESIGN.md's 0.5·‖t̂ − ŝ‖² (no authors' code to follow)
    c.train.learning_rate = 0.1
    c.map.combine = "sum"         # the two students' discrepancies add up per tap; taps add up
    c.dskd = ml_collections.ConfigDict()
    c.dskd.embed_channels = 256   # width of the embedding between the students


def get_config(arg: str = ""):
    stfpm = config_files.sibling(__file__, "stfpm")
    return stfpm.configure(stfpm._base(), arg, _dskd_defaults)
