"""Mixed (skip) distillation (design ours; kdad_jax/methods/mixed.py): STFPM's layer-to-layer
matching plus skip paths between taps, with 1×1-conv projections for channels and resolution.

Presets and options as configs/stfpm.py (demo, smoke; category=NAME):
    python -m kdad_jax.main --config=configs/mixed.py:demo --workdir=/tmp/mixed
    --config.mixed.skip_pairs=3-1,1-3   only the two extreme paths (student tap - teacher tap)
    --config.map.paths=direct           maps from the layer-to-layer discrepancies only
"""

import ml_collections

from kdad_jax import config_files


def _mixed_defaults(c):
    c.method = "mixed"
    c.loss.distance_weight = 0.5  # the ½ of DESIGN.md's 0.5·‖t̂ − ŝ‖² (no authors' code to follow)
    c.mixed = ml_collections.ConfigDict()
    c.mixed.skip_pairs = "all"    # 'i-j' student tap i learns teacher tap j (1-based); 'all' = i ≠ j
    c.mixed.skip_weight = 0.5     # weight of the skip-path losses against the direct ones
    c.map.paths = "all"           # all | direct


def get_config(arg: str = ""):
    stfpm = config_files.sibling(__file__, "stfpm")
    return stfpm.configure(stfpm._base(), arg, _mixed_defaults)
