"""EfficientNet-Lite0/1/2 in Flax (NHWC), matching the PyPI ``efficientnet-lite-pytorch`` model.

Lite variants differ from EfficientNet-B*: ReLU6, no squeeze-excitation, stem (32) and head
(1280) widths and the first/last stages' depths are not scaled. Convolutions use TensorFlow-style
"same" padding computed once from the variant's nominal input size (224/240/260), exactly as the
reference's static-padding layers do, so the networks agree for any input size. Module names
follow the PyTorch state_dict without leading underscores (``blocks_3.depthwise_conv`` ↔
``_blocks.3._depthwise_conv``).

Taps: ``stage{i}`` is the output of stage i (0..6; strides 2, 4, 8, 16, 16, 32, 32),
``stage{i}_expand`` the ReLU6 expansion of that stage's last block (6× its input channels),
``features`` the head's 1280 channels and ``logits`` the ImageNet classifier output [B, 1000].

``train=True`` normalizes with batch statistics and updates the running ones (a student trained
from scratch); ``eca_after`` puts ECA blocks after matching BN paths (``'blocks_3.bn2'``).
"""

import math
from typing import Dict, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from kdad_jax.models import eca
from kdad_jax.models.batch_norm import TorchBatchNorm
from kdad_jax.models.conv import Conv


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


_LITE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16), Stage(2, 3, 2, 6, 16, 24), Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80), Stage(3, 5, 1, 6, 80, 112), Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
# variant -> (width multiplier, depth multiplier, nominal input size)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
_EPSILON = 1e-3


def _round_filters(filters: int, width: float) -> int:
    """TensorFlow's rule: scale, round to a multiple of 8, never lose more than 10 %."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def stages(variant: str) -> Tuple[Stage, ...]:
    width, depth, _ = VARIANTS[variant]
    result = []
    for index, stage in enumerate(_LITE_STAGES):
        fixed = index in (0, len(_LITE_STAGES) - 1)  # lite: first/last depth not scaled
        repeats = stage.repeats if fixed else int(math.ceil(depth * stage.repeats))
        in_channels = 32 if index == 0 else _round_filters(stage.in_channels, width)
        result.append(stage._replace(repeats=repeats, in_channels=in_channels,
                                     out_channels=_round_filters(stage.out_channels, width)))
    return tuple(result)


def stage_channels(variant: str) -> Dict[str, int]:
    channels = {}
    for index, stage in enumerate(stages(variant)):
        last_in = stage.in_channels if stage.repeats == 1 else stage.out_channels
        channels[f"stage{index}"] = stage.out_channels
        channels[f"stage{index}_expand"] = last_in * stage.expand
    channels["features"] = 1280
    return channels


def same_padding(size: int, kernel: int, stride: int) -> Tuple[Tuple[int, int], int]:
    """TF 'SAME' padding (before, after) for a nominal input side, and the output side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2), out


def _norm(module: nn.Module, x, name: str, train: bool, prefix: str = ""):
    """BatchNorm (the reference's momentum 0.01 = Flax 0.99), then ECA where asked."""
    x = TorchBatchNorm(momentum=0.99, epsilon=_EPSILON, name=name)(x, use_running_average=not train)
    if eca.wanted(f"{prefix}{name}", module.eca_after):
        x = eca.ECA(name=f"eca_{name}")(x)
    return x


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, k×k depthwise, 1×1 project, identity skip."""

    stage: Stage
    in_channels: int
    stride: int
    nominal_size: int
    eca_after: Sequence[str] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = f"{self.name}."
        hidden = self.in_channels * self.stage.expand
        expanded = x
        if self.stage.expand != 1:
            expanded = Conv(hidden, (1, 1), use_bias=False, name="expand_conv")(x)
            expanded = nn.relu6(_norm(self, expanded, "bn0", train, p))
        pad, _ = same_padding(self.nominal_size, self.stage.kernel, self.stride)
        k = self.stage.kernel
        y = Conv(hidden, (k, k), (self.stride, self.stride), (pad, pad), use_bias=False,
                 groups=hidden, name="depthwise_conv")(expanded)
        y = nn.relu6(_norm(self, y, "bn1", train, p))
        y = Conv(self.stage.out_channels, (1, 1), use_bias=False, name="project_conv")(y)
        y = _norm(self, y, "bn2", train, p)
        if self.stride == 1 and self.in_channels == self.stage.out_channels:
            y = y + x
        return y, expanded


class EfficientNetLite(nn.Module):
    """Input [B, H, W, 3] (ImageNet-normalized) -> {tap: features}."""

    variant: str = "efficientnet_lite0"
    taps: Sequence[str] = ("stage1", "stage2", "stage4")
    eca_after: Sequence[str] = ()

    @nn.compact
    def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
        known = set(stage_channels(self.variant)) | {"logits"}
        unknown = set(self.taps) - known
        if unknown:
            raise ValueError(f"unknown EfficientNet taps {sorted(unknown)}; choose from {sorted(known)}")
        size = VARIANTS[self.variant][2]
        pad, size = same_padding(size, 3, 2)
        x = Conv(32, (3, 3), (2, 2), (pad, pad), use_bias=False, name="conv_stem")(x)
        x = nn.relu6(_norm(self, x, "bn0", train))
        features, block = {}, 0
        head_needed = bool({"features", "logits"} & set(self.taps))
        last_stage = 6 if head_needed else max(int(t[5]) for t in self.taps if t.startswith("stage"))
        for index, stage in enumerate(stages(self.variant)[:last_stage + 1]):
            for repeat in range(stage.repeats):
                stride = stage.stride if repeat == 0 else 1
                in_channels = stage.in_channels if repeat == 0 else stage.out_channels
                x, expanded = MBConv(stage, in_channels, stride, size, tuple(self.eca_after),
                                     name=f"blocks_{block}")(x, train)
                _, size = same_padding(size, stage.kernel, stride)
                block += 1
            features[f"stage{index}"] = x
            features[f"stage{index}_expand"] = expanded
        if head_needed:
            x = nn.relu6(_norm(self, Conv(1280, (1, 1), use_bias=False, name="conv_head")(x), "bn1", train))
            features["features"] = x
            if "logits" in self.taps:
                features["logits"] = nn.Dense(1000, name="fc")(x.mean(axis=(1, 2)))
        return {tap: features[tap] for tap in self.taps}
