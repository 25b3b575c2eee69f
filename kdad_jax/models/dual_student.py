"""The trainable part of dual-student KD (DSKD; the architecture is ours, see methods/dskd.py).

``DualStudent``: student A has the teacher's architecture and sees the image (shallow → deep);
an embedding module compresses A's multi-scale features into one map at the deepest tap's
resolution; student B is inverted: it decodes that embedding deep → shallow into one feature map
per tap. The students interact only through the embedding: B's loss trains A's features through
it, and B can only reproduce what A's features encode.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdad_jax.models.batch_norm import TorchBatchNorm
from kdad_jax.models.conv import Conv


def _bn(train: bool, name: str):
    return functools.partial(TorchBatchNorm(momentum=0.9, epsilon=1e-5, name=name),
                             use_running_average=not train)


def resize_to(x, hw):
    """[B, h, w, C] -> [B, H, W, C], bilinear; antialiased when shrinking (an area-like average)."""
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "linear", antialias=True)


class ConvBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN (+ ReLU unless ``last``)."""

    features: int
    last: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = ((1, 1), (1, 1))
        x = nn.relu(_bn(train, "bn1")(Conv(self.features, (3, 3), padding=pad, use_bias=False, name="conv1")(x)))
        x = _bn(train, "bn2")(Conv(self.features, (3, 3), padding=pad, use_bias=False, name="conv2")(x))
        return x if self.last else nn.relu(x)


class Embedding(nn.Module):
    """Student A's features (shallow..deep) -> [B, h_deep, w_deep, channels]."""

    channels: int

    @nn.compact
    def __call__(self, features: Sequence, train: bool = False):
        deep_hw = features[-1].shape[1:3]
        x = jnp.concatenate([resize_to(f, deep_hw) for f in features], axis=-1)
        x = nn.relu(_bn(train, "bn")(Conv(self.channels, (1, 1), use_bias=False, name="reduce")(x)))
        return ConvBlock(self.channels, name="block")(x, train)


class InvertedStudent(nn.Module):
    """Embedding -> one map per tap, decoded deep → shallow; ``shapes`` [(h, w, C)] shallow..deep."""

    channels: Sequence[int]

    @nn.compact
    def __call__(self, z, shapes, train: bool = False):
        outputs, x = [], z
        for index in reversed(range(len(shapes))):
            h, w, _ = shapes[index]
            x = ConvBlock(self.channels[index], name=f"block{index + 1}")(resize_to(x, (h, w)), train)
            outputs.append(x)
        return outputs[::-1]


class DualStudent(nn.Module):
    """Image [B, H, W, 3] (ImageNet-normalized) -> (A's taps, B's taps), lists shallow..deep."""

    forward: nn.Module          # student A: the teacher's architecture, returns {tap: features}
    taps: Sequence[str]
    channels: Sequence[int]
    embed_channels: int = 256

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = self.forward(x, train)
        a = [a[k] for k in self.taps]
        z = Embedding(self.embed_channels, name="embedding")(a, train)
        b = InvertedStudent(tuple(self.channels), name="inverted")(z, [f.shape[1:] for f in a], train)
        return a, b
