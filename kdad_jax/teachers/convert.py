"""PyTorch state_dicts (torchvision ResNets, EfficientNet-Lite, EfficientAD PDN teachers) -> Flax.

    python -m kdad_jax.teachers.convert --arch resnet18 --src resnet18-f37072fd.pth --dst teachers/resnet18.msgpack

Names map mechanically: ``layer1.0.downsample.1.running_mean`` -> ``layer1_0/downsample_1`` in
``batch_stats``/``mean``; conv weights OIHW -> HWIO, linear weights [out, in] -> [in, out],
BatchNorm weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var,
``num_batches_tracked`` dropped. The result is checked against the Flax model's own variable
tree: missing keys, unexpected keys and shape mismatches are reported together, by name.
Reading needs no torch (``kdad_jax.teachers.state_dict``).
"""

import argparse
import sys
from typing import Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax.teachers import params_file
from kdad_jax.errors import UserError
from kdad_jax.models import efficientnet, resnet
from kdad_jax.models.pdn import PDN
from kdad_jax.teachers.state_dict import StateDict, StateDictError, read_state_dict

PDN_ARCHS = {"pdn_s": ("s", 384), "pdn_m": ("m", 384)}
ARCHS = tuple(resnet.ARCHITECTURES) + tuple(efficientnet.VARIANTS) + tuple(PDN_ARCHS)


class ConversionError(UserError):
    """The checkpoint does not fit the requested architecture."""


def build_model(arch: str):
    """The Flax module for ``arch`` with every tap, and an example input for initialisation."""
    if arch in resnet.ARCHITECTURES:
        return resnet.ResNet(arch, resnet.STAGES)
    if arch in efficientnet.VARIANTS:
        return efficientnet.EfficientNetLite(arch, ("logits",))
    if arch in PDN_ARCHS:
        size, channels = PDN_ARCHS[arch]
        return PDN(size, channels, padded=True)
    raise ConversionError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def abstract_variables(arch: str):
    model = build_model(arch)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))


def _flax_path(key: str) -> Tuple[str, ...]:
    """'layer1.0.conv1' -> ('layer1_0', 'conv1'); '_blocks.3._bn1' -> ('blocks_3', 'bn1')."""
    parts = []
    for part in key.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part.lstrip("_"))
    return tuple(parts)


def _leaf(name: str, value: np.ndarray) -> Tuple[str, str, np.ndarray]:
    """A state_dict leaf -> (collection, flax leaf name, array)."""
    if name == "weight" and value.ndim == 4:
        return "params", "kernel", value.transpose(2, 3, 1, 0)
    if name == "weight" and value.ndim == 2:
        return "params", "kernel", value.T
    if name == "weight":
        return "params", "scale", value
    if name == "bias":
        return "params", "bias", value
    if name == "running_mean":
        return "batch_stats", "mean", value
    if name == "running_var":
        return "batch_stats", "var", value
    raise ConversionError(f"unexpected state_dict entry kind {name!r}")


def _pdn_names(state: StateDict) -> StateDict:
    """EfficientAD reference teachers are nn.Sequential: '0.weight', '3.weight', ... -> Conv_i."""
    indices = sorted({int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()})
    rename = {index: f"Conv_{i}" for i, index in enumerate(indices)}
    renamed = {}
    for key, value in state.items():
        head, _, tail = key.partition(".")
        renamed[f"{rename[int(head)]}.{tail}" if head.isdigit() else key] = value
    return renamed


def convert_state_dict(state: StateDict, arch: str) -> Dict:
    """{torch name: array} -> Flax variables for ``arch`` ({'params': ..., 'batch_stats': ...})."""
    if arch in PDN_ARCHS:
        state = _pdn_names(state)
    flat = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if arch in resnet.ARCHITECTURES and key.startswith("fc."):
            continue  # torchvision's classifier: the feature extractor stops at layer4
        *path, leaf = _flax_path(key)
        collection, name, array = _leaf(leaf, np.asarray(value))
        flat[(collection, *path, name)] = np.ascontiguousarray(array, dtype=np.float32)
    expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract_variables(arch)))
    _check(flat, expected, arch)
    return flax.traverse_util.unflatten_dict(flat)


_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def _torch_name(path: Tuple[str, ...]) -> str:
    """('params', 'layer1_0', 'bn1', 'scale') -> 'layer1.0.bn1.weight' (as the checkpoint says it)."""
    parts = []
    for part in path[1:-1]:
        head, _, index = part.rpartition("_")
        parts.append(f"{head}.{index}" if index.isdigit() and head and not head.startswith("Conv") else part)
    return ".".join(parts + [_TORCH_LEAF.get(path[-1], path[-1])])


def _check(flat: dict, expected: dict, arch: str) -> None:
    missing = sorted(_torch_name(k) for k in expected.keys() - flat.keys())
    unexpected = sorted(_torch_name(k) for k in flat.keys() - expected.keys())
    shapes = sorted(f"{_torch_name(k)}: checkpoint {flat[k].shape}, {arch} {expected[k].shape}"
                    for k in flat.keys() & expected.keys() if flat[k].shape != expected[k].shape)
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise ConversionError(f"checkpoint does not match {arch}: " + "; ".join(problems))


def convert_file(src: str, arch: str) -> Dict:
    try:
        state = read_state_dict(src)
    except (StateDictError, FileNotFoundError) as error:
        raise ConversionError(str(error)) from None
    return convert_state_dict(state, arch)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdad_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--src", required=True, help=".pth/.pt/.bin, .safetensors or .npz state_dict")
    parser.add_argument("--dst", required=True, help="output msgpack file (Flax variables)")
    args = parser.parse_args(argv)
    try:
        variables = convert_file(args.src, args.arch)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    params_file.save_params(args.dst, variables)
    count = sum(v.size for v in jax.tree_util.tree_leaves(variables))
    print(f"{args.arch}: {count:,} values from {args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
