"""torchvision ResNets as Flax feature extractors (NHWC): ResNet-18/34/50, Wide-ResNet-50-2/101-2.

Module names follow torchvision's state_dict (``layer1_0.conv1`` ↔ ``layer1.0.conv1``), so
``kdad_jax.teachers.convert`` maps checkpoints by name. Padding is explicit and symmetric as in PyTorch
(a stride-2 3×3 conv pads 1 on both sides, unlike XLA's 'SAME'); the stem's max-pool pads with
-inf. Returns a dict of the requested taps (``layer1``..``layer4``); stages after the last tap
are not computed. ``train=False`` uses the BatchNorm running statistics (a frozen teacher);
``train=True`` normalizes with batch statistics and updates them (a student).
``eca_after``: batch-norm path patterns followed by an ECA block (``kdad_jax.models.eca``; the
ECA-MSKDAD student), e.g. ``('layer*.bn2',)``; the stem's BN is ``'bn1'``.
"""

from typing import Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdad_jax.models import eca
from kdad_jax.models.batch_norm import TorchBatchNorm
from kdad_jax.models.conv import Conv
from kdad_jax.kernels import max_pool

# name -> (block kind, blocks per stage, bottleneck width multiplier)
ARCHITECTURES = {
    "resnet18": ("basic", (2, 2, 2, 2), 1),
    "resnet34": ("basic", (3, 4, 6, 3), 1),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 2),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 2),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")
_PLANES = (64, 128, 256, 512)


def stage_channels(arch: str) -> Dict[str, int]:
    kind = ARCHITECTURES[arch][0]
    expansion = 1 if kind == "basic" else 4
    return {stage: planes * expansion for stage, planes in zip(STAGES, _PLANES)}


def _norm(module: nn.Module, x, name: str, train: bool, prefix: str = ""):
    """torchvision's BatchNorm (momentum 0.1 = Flax 0.9), then ECA where ``module.eca_after`` says."""
    x = TorchBatchNorm(momentum=0.9, epsilon=1e-5, name=name)(x, use_running_average=not train)
    path = f"{prefix}{name}" if prefix else name
    if eca.wanted(path, module.eca_after):
        x = eca.ECA(name=f"eca_{name}")(x)
    return x


def _conv(features, kernel, stride, name):
    pad = kernel // 2
    return Conv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                use_bias=False, name=name)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    eca_after: Sequence[str] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = f"{self.name}."
        y = nn.relu(_norm(self, _conv(self.planes, 3, self.stride, "conv1")(x), "bn1", train, p))
        y = _norm(self, _conv(self.planes, 3, 1, "conv2")(y), "bn2", train, p)
        return nn.relu(y + _shortcut(self, x, self.planes, self.stride, train))


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    width_multiplier: int = 1
    eca_after: Sequence[str] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = f"{self.name}."
        width = self.planes * self.width_multiplier
        y = nn.relu(_norm(self, _conv(width, 1, 1, "conv1")(x), "bn1", train, p))
        y = nn.relu(_norm(self, _conv(width, 3, self.stride, "conv2")(y), "bn2", train, p))
        y = _norm(self, _conv(self.planes * 4, 1, 1, "conv3")(y), "bn3", train, p)
        return nn.relu(y + _shortcut(self, x, self.planes * 4, self.stride, train))


def _shortcut(block, x, features, stride, train):
    """Identity, or torchvision's ``downsample`` (1×1 conv + BN) when the shape changes.

    Called inside a block's compact ``__call__``: the submodules get the block's scope."""
    if stride == 1 and x.shape[-1] == features:
        return x
    y = _conv(features, 1, stride, "downsample_0")(x)
    return _norm(block, y, "downsample_1", train, f"{block.name}.")


class ResNet(nn.Module):
    """Input [B, H, W, 3] (ImageNet-normalized) -> {tap: [B, H/s, W/s, C]}."""

    arch: str = "resnet18"
    taps: Sequence[str] = ("layer1", "layer2", "layer3")
    eca_after: Sequence[str] = ()

    @nn.compact
    def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
        kind, depths, width = ARCHITECTURES[self.arch]
        unknown = set(self.taps) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown ResNet taps {sorted(unknown)}; choose from {STAGES}")
        x = nn.relu(_norm(self, _conv(64, 7, 2, "conv1")(x), "bn1", train))
        x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        last = max(STAGES.index(t) for t in self.taps)
        features = {}
        for index in range(last + 1):
            for block in range(depths[index]):
                stride = 2 if block == 0 and index > 0 else 1
                name = f"{STAGES[index]}_{block}"
                if kind == "basic":
                    x = BasicBlock(_PLANES[index], stride, tuple(self.eca_after), name=name)(x, train)
                else:
                    x = Bottleneck(_PLANES[index], stride, width, tuple(self.eca_after),
                                   name=name)(x, train)
            if STAGES[index] in self.taps:
                features[STAGES[index]] = x
        return features
