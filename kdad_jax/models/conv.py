"""Convolution layer: ``flax.linen.Conv``'s parameters with explicit padding, computed by
``kdad_jax.kernels.conv2d`` (whose form each platform picks when the program is lowered).

Parameters are named and shaped exactly as ``flax.linen.Conv``'s (``kernel`` [kh, kw, Cin, Cout],
``bias`` [Cout]), so checkpoints are interchangeable.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from kdad_jax.kernels import conv2d


class Conv(nn.Module):
    """Drop-in for ``nn.Conv`` with explicit padding ((top, bottom), (left, right))."""

    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Sequence[Tuple[int, int]] = ((0, 0), (0, 0))
    use_bias: bool = True
    groups: int = 1
    dilation: Tuple[int, int] = (1, 1)
    # Mixed precision: input and kernel cast to this dtype (e.g. bfloat16) for the convolution,
    # the result back to float32; parameters stay float32. None: all float32.
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1] // self.groups, self.features), jnp.float32)
        if self.dtype is not None:
            y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding,
                       self.groups, self.dilation).astype(jnp.float32)
        else:
            y = conv2d(x, kernel, self.strides, self.padding, self.groups, self.dilation)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y
