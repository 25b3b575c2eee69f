"""Convolution layer whose gradient is fast on CPU.

On CPU the forward pass and the input gradient are XLA's own convolutions, but XLA CPU's weight
gradient of a *padded* or *strided* k×k convolution (k > 1) is up to 60× slower than the forward
pass (a [1, 127, 127, 64] 4×4 layer of the autoencoder: 534 ms against 6 ms). Under
differentiation this layer therefore computes the weight gradient itself (a custom VJP): for
stride 1 as the weight gradient of an unpadded convolution of the explicitly padded input (XLA's
fast case), for larger strides at batch 1 as one [Cin, N] @ [N, Cout] product per tap over strided
slices of the input, with no gathered-patch matrix in memory. (An earlier version gathered all patches,
[B·h·w, k·k·Cin], which cost 3× PyTorch's memory at batch 8.) Depthwise convolutions run on CPU as
k·k shifted multiply-adds (forward and gradient: 8–10× faster than XLA CPU's grouped convolution,
measured on EfficientNet-Lite0's layers). Elsewhere (GPU/TPU), and for 1×1 convolutions, it is
``lax.conv_general_dilated`` with XLA's own gradient. Parameters are named and shaped exactly as
``flax.linen.Conv``'s (``kernel`` [kh, kw, Cin, Cout], ``bias`` [Cout]), so checkpoints are
interchangeable. The programs using it are compiled without XLA CPU's YNNPACK fusions
(``inference.compiler_options``), whose convolutions are 4–6× slower than its Eigen ones here.
"""

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from kdad_jax.models.windows import window_taps


def _native_conv(x, kernel, strides, padding, groups=1, dilation=(1, 1)):
    return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                    feature_group_count=groups,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _depthwise_shift_conv(x, kernel, strides, padding):
    """Depthwise convolution as a sum of k·k strided shifts of ``x`` times per-channel weights.

    x [B, H, W, C], kernel [kh, kw, 1, C] -> [B, h, w, C]; autodiff of this is elementwise too."""
    kh, kw, _, _ = kernel.shape
    sh, sw = strides
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho = (padded.shape[1] - kh) // sh + 1
    wo = (padded.shape[2] - kw) // sw + 1
    terms = [tap * kernel[i, j, 0]
             for (i, j), tap in window_taps(padded, (kh, kw), strides, (ho, wo))]
    return functools.reduce(lambda a, b: a + b, terms)


def _tap_weight_grad(padded, kernel_shape, cotangent, strides, dilation):
    """dL/dkernel [kh, kw, Cin, Cout] of a VALID convolution of ``padded`` [B, H, W, Cin] whose
    output cotangent is ``cotangent`` [B, h, w, Cout]: one product per tap (i, j) of the input
    slice that tap sees, [Cin, B·h·w] @ [B·h·w, Cout]."""
    kh, kw, cin, cout = kernel_shape
    flat_cotangent = cotangent.reshape(-1, cout)
    taps = [tap.reshape(-1, cin).T @ flat_cotangent
            for _, tap in window_taps(padded, (kh, kw), strides, cotangent.shape[1:3], dilation)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


def _weight_grad(x, kernel, cotangent, strides, padding, dilation):
    """Stride 1: XLA's weight gradient of an unpadded convolution of the padded input. Strided at
    batch 1: per-tap products (2–4× faster there); strided at larger batches XLA's own is faster
    (ResNet-18's 7×7 stem at batch 8: 20 ms against 58 ms)."""
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    if strides == (1, 1):
        x, padding = padded, ((0, 0), (0, 0))
    elif x.shape[0] == 1:
        return _tap_weight_grad(padded, kernel.shape, cotangent, strides, dilation)
    return jax.vjp(lambda k: _native_conv(x, k, strides, padding, dilation=dilation),
                   kernel)[1](cotangent)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(x, kernel, strides, padding, dilation):
    return _native_conv(x, kernel, strides, padding, dilation=dilation)


def _cpu_conv_fwd(x, kernel, strides, padding, dilation):
    return _native_conv(x, kernel, strides, padding, dilation=dilation), (x, kernel)


def _cpu_conv_bwd(strides, padding, dilation, residuals, cotangent):
    x, kernel = residuals
    input_grad = jax.vjp(lambda x: _native_conv(x, kernel, strides, padding, dilation=dilation),
                         x)[1](cotangent)[0]
    return input_grad, _weight_grad(x, kernel, cotangent, strides, padding, dilation)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv2d(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), groups=1, dilation=(1, 1)):
    """NHWC / HWIO convolution; on CPU, dense k×k kernels get the fast weight gradient.

    Depthwise convolutions (groups = Cin = Cout) become shifted multiply-adds on CPU; other
    grouped convolutions keep XLA's own.
    """
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    dilation = tuple(int(d) for d in dilation)
    on_cpu = jax.default_backend() == "cpu"
    if groups > 1:
        depthwise = groups == x.shape[-1] == kernel.shape[-1] and kernel.shape[2] == 1
        if on_cpu and depthwise and dilation == (1, 1):
            return _depthwise_shift_conv(x, kernel, strides, padding)
        return _native_conv(x, kernel, strides, padding, groups, dilation)
    if on_cpu and kernel.shape[0] * kernel.shape[1] > 1:
        return _cpu_conv(x, kernel, strides, padding, dilation)
    return _native_conv(x, kernel, strides, padding, dilation=dilation)


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
