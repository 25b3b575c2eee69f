"""Efficient channel attention (ECA, Wang et al., CVPR 2020) and where students put it.

ECA re-weights channels with a gate computed from the channels' global averages by a 1-D
convolution across neighbouring channels: ``Y = σ(Conv1D_k(GAP(X))) · X``. The kernel size adapts
to the channel count (ECA-Net's rule with γ = 2, b = 1): ``t = ⌊(log2 C + 1) / 2⌋``, the next odd
number from there, i.e. the nearest odd of ``log2(C)/2 + 1/2`` with ties going up.

Placement is a tuple of ``fnmatch`` patterns over batch-norm paths inside a backbone
(``'layer1_0.bn2'`` = the second BN of the first block of ResNet stage 1). The defaults (ours) follow
ECA-Net's own ResNet/MobileNetV2 designs: one ECA after the last BN of every residual block, before
the skip connection is added — for ResNet the ``bn2`` of each BasicBlock (``bn3`` of a
Bottleneck), for EfficientNet-Lite the ``bn2`` after each block's projection. With taps at
layer1..3 that is 6 ECA blocks in a ResNet-18 student, each adding only k weights.
"""

import fnmatch
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

DEFAULT_PLACEMENT = {
    "resnet_basic": ("layer*.bn2",),
    "resnet_bottleneck": ("layer*.bn3",),
    "efficientnet": ("blocks_*.bn2",),
}


def kernel_size(channels: int) -> int:
    """ECA-Net's adaptive odd kernel size: 3, 5, 5, 5 for C = 64, 128, 256, 512."""
    t = int(abs(math.log2(channels) + 1) / 2)
    return t if t % 2 else t + 1


def channel_conv1d(values, weight):
    """Cross-correlation over the last axis with zero padding (torch ``conv1d``, one channel).

    values [B, C], weight [k] (k odd) -> [B, C]."""
    k = weight.shape[0]
    half = k // 2
    padded = jnp.pad(values, ((0, 0), (half, half)))
    channels = values.shape[-1]
    return sum(weight[j] * padded[:, j:j + channels] for j in range(k))


class ECA(nn.Module):
    """[B, H, W, C] -> [B, H, W, C]: channels scaled by σ(Conv1D_k(GAP(x)))."""

    @nn.compact
    def __call__(self, x):
        k = kernel_size(x.shape[-1])
        # torch's Conv1d(1, 1, k) default init: U(±1/√k).
        bound = 1.0 / math.sqrt(k)
        weight = self.param("weight", _uniform(bound), (k,), jnp.float32)
        pooled = jnp.mean(x, axis=(1, 2))                              # [B, C]
        gate = nn.sigmoid(channel_conv1d(pooled, weight.astype(x.dtype)))
        return x * gate[:, None, None, :]


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def wanted(bn_path: str, patterns: Sequence[str]) -> bool:
    """Whether ECA goes after the batch norm at ``bn_path`` (e.g. 'layer2_1.bn2')."""
    return any(fnmatch.fnmatchcase(bn_path, p) for p in patterns)

