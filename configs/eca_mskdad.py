"""ECA-MSKDAD: STFPM's teacher and student with ECA in the student, a (1 − cos) term, feature
matching on an augmented copy of each image and the relative-distance loss.

The same method file as STFPM (kdad_jax/methods/stfpm.py) with these switches on; presets and
options as in configs/stfpm.py:
    python -m kdad_jax.main --config=configs/eca_mskdad.py:demo --workdir=/tmp/eca
The paper's ablation, by options alone (ECA × relative-distance loss):
    --config=configs/eca_mskdad.py:demo,eca=0,relative=0   (multi-scale KD on augmented pairs)
    --config=configs/eca_mskdad.py:demo,eca=1,relative=0
    --config=configs/eca_mskdad.py:demo,eca=0,relative=1
    --config=configs/eca_mskdad.py:demo                    (both: ECA-MSKDAD)
"""

from kdad_jax import config_files


def _eca_mskdad_defaults(c):
    c.method = "eca_mskdad"
    c.student.eca = True
    c.loss.distance_weight = 0.5  # the paper's 0.5·‖t̂ − ŝ‖² (no public code says otherwise)
    c.loss.cosine_weight = 1.0    # λ (ours: the paper's value is not given; 1 weighs both terms equally)
    c.loss.augmented_pair = True
    c.loss.relative_distance = True


def get_config(arg: str = ""):
    stfpm = config_files.sibling(__file__, "stfpm")
    return stfpm.configure(stfpm._base(), arg, _eca_mskdad_defaults)
