"""Convolution layer whose gradient is fast on CPU.

XLA's CPU weight gradient for k×k convolutions (k > 1) is several times slower than the forward
pass. On CPU this layer writes stride-1 convolutions as one matrix product over explicitly
gathered patches ([B·h·w, k·k·Cin] @ [k·k·Cin, Cout]); autodiff then gives matrix products for
both gradients. Elsewhere (GPU/TPU), and for strided or 1×1 convolutions, it uses
``lax.conv_general_dilated``. Parameters are named and shaped exactly as ``flax.linen.Conv``'s
(``kernel`` [kh, kw, Cin, Cout], ``bias`` [Cout]), so checkpoints are interchangeable.
"""

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _patch_matmul_conv(x, kernel):
    """Stride-1 VALID convolution as one matrix product. x [B, H, W, Cin] -> [B, h, w, Cout]."""
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    patches = jnp.concatenate(
        [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    out = patches.reshape(b * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return out.reshape(b, ho, wo, cout)


def conv2d(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0))):
    """NHWC / HWIO convolution; picks the CPU-friendly formulation where it helps."""
    kh, kw = kernel.shape[:2]
    if jax.default_backend() == "cpu" and tuple(strides) == (1, 1) and kh * kw > 1:
        x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
        return _patch_matmul_conv(x, kernel)
    return lax.conv_general_dilated(x, kernel, tuple(strides), [tuple(p) for p in padding],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
    """Drop-in for ``nn.Conv`` with explicit padding ((top, bottom), (left, right))."""

    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Sequence[Tuple[int, int]] = ((0, 0), (0, 0))

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return conv2d(x, kernel, self.strides, self.padding) + bias
