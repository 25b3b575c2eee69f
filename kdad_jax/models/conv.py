"""Convolution layer whose gradient is fast on CPU.

XLA's CPU weight gradient for k×k convolutions (k > 1) is several times slower than the forward
pass. On CPU, under differentiation, this layer computes k×k convolutions (any stride) as one
matrix product over explicitly gathered patches ([B·h·w, k·k·Cin] @ [k·k·Cin, Cout]) and
differentiates that (a custom VJP); undifferentiated (inference) it keeps XLA's own forward
convolution, which is faster there. Depthwise convolutions run on CPU as k·k shifted
multiply-adds (forward and gradient: 8–10× faster than XLA CPU's grouped convolution, measured
on EfficientNet-Lite0's layers). Elsewhere (GPU/TPU), and for 1×1 convolutions, it uses
``lax.conv_general_dilated``. Parameters are named and shaped exactly as ``flax.linen.Conv``'s
(``kernel`` [kh, kw, Cin, Cout], ``bias`` [Cout]), so checkpoints are interchangeable.
"""

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _patch_matmul_conv(x, kernel, strides=(1, 1), dilation=(1, 1)):
    """VALID (dilated) convolution as one matrix product. x [B, H, W, Cin] -> [B, h, w, Cout]."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    dh, dw = dilation
    b, h, w, _ = x.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    patches = jnp.concatenate(
        [x[:, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw, :]
         for i in range(kh) for j in range(kw)], axis=-1)
    out = patches.reshape(b * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return out.reshape(b, ho, wo, cout)


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
    out = None
    for i in range(kh):
        for j in range(kw):
            term = padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _patch_conv(x, kernel, strides, padding, dilation=(1, 1)):
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    return _patch_matmul_conv(padded, kernel, strides, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(x, kernel, strides, padding, dilation):
    """Undifferentiated (inference): XLA's own convolution, the fastest forward on CPU."""
    return _native_conv(x, kernel, strides, padding, dilation=dilation)


def _cpu_conv_fwd(x, kernel, strides, padding, dilation):
    # Under differentiation the patch formulation runs forward too: XLA then shares the gathered
    # patches between the forward product and the weight gradient (measured faster than a
    # native forward followed by a patch backward).
    return _patch_conv(x, kernel, strides, padding, dilation), (x, kernel)


def _cpu_conv_bwd(strides, padding, dilation, residuals, cotangent):
    x, kernel = residuals
    return jax.vjp(lambda x, k: _patch_conv(x, k, strides, padding, dilation), x, kernel)[1](cotangent)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv2d(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), groups=1, dilation=(1, 1)):
    """NHWC / HWIO convolution; on CPU, dense k×k kernels get the fast-gradient formulation.

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
