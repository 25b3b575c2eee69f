"""Dual-student KD (architecture ours; kdad_jax/methods/dskd.py): the STFPM teacher, a forward
student, an embedding module and an inverted (deep → shallow) student.

Presets and options as configs/stfpm.py (demo, smoke; category=NAME):
    python -m kdad_jax.main --config=configs/dskd.py:demo --workdir=/tmp/dskd
Training defaults are STFPM's (SGD, momentum 0.9, weight decay 1e-4, batch 32, 128², 300 epochs)
at lr 0.1: the embedding and the inverted student, trained from scratch, diverge at 0.4.
"""

import importlib.util
import os

import ml_collections


def _stfpm():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stfpm.py")
    spec = importlib.util.spec_from_file_location("kdad_configs_stfpm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dskd_defaults(c):
    c.method = "dskd"
    c.train.learning_rate = 0.1
    c.map.combine = "sum"         # the two students' discrepancies add up per tap; taps add up
    c.dskd = ml_collections.ConfigDict()
    c.dskd.embed_channels = 256   # width of the embedding between the students


def get_config(arg: str = ""):
    stfpm = _stfpm()
    return stfpm.configure(stfpm._base(), arg, _dskd_defaults)
