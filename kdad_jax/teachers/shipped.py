"""Teachers shipped with the package, addressed as ``builtin:<name>`` in ``config.teacher.checkpoint``.

``pdn_s_efficientnet_lite0``: a PDN-S (384 channels) distilled by this project's own pretraining
job from the ImageNet-pretrained EfficientNet-Lite0 (float16, 5 MB); how it was made — command,
config, steps, final loss, sha256 — is recorded in the ``.json`` beside it. The presets use it.

``pdn_s_efficientnet_lite0_8000``: the same recipe run to its full 8 000 steps (the one above
stopped at 900); closer to Lite0 on ``benchmarks/teacher_quality.py``. Not the presets' default:
on the ``:cpu`` preset's tuning set it localized better but detected worse (docs/teachers.md,
"Which shipped teacher").
"""

import json
import os
from typing import Optional

from kdad_jax.errors import UserError

PREFIX = "builtin:"
_FOLDER = os.path.dirname(os.path.abspath(__file__))
BUILTIN = ("pdn_s_efficientnet_lite0", "pdn_s_efficientnet_lite0_8000")


def builtin_name(checkpoint: str) -> Optional[str]:
    """``builtin:<name>`` -> name (checked); any other value -> None."""
    if not checkpoint.startswith(PREFIX):
        return None
    name = checkpoint[len(PREFIX):]
    if name not in BUILTIN:
        raise UserError(f"unknown built-in teacher {name!r}; available: {', '.join(BUILTIN)}")
    return name


def resolve(checkpoint: str) -> str:
    """``builtin:<name>`` -> the packaged file's path; any other value is returned unchanged."""
    name = builtin_name(checkpoint)
    return checkpoint if name is None else os.path.join(_FOLDER, f"{name}.msgpack")


def record(name: str) -> dict:
    with open(os.path.join(_FOLDER, f"{name}.json")) as f:
        return json.load(f)
