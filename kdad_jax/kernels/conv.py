"""Convolution, NHWC / HWIO: XLA's own op everywhere but on CPU, where two forms are faster.

The form is chosen per platform when the function is lowered (``lax.platform_dependent``), not
when it is traced: a program exported on a CPU for CUDA and TPU carries XLA's standard
(grouped) convolution for them and the CPU forms only in its CPU lowering.

On CPU the forward pass and the input gradient are XLA's own convolutions, but XLA CPU's weight
gradient of a *padded* or *strided* k×k convolution (k > 1) is many times slower than the forward
pass. Under differentiation the CPU form therefore computes the weight gradient itself (a custom
VJP): for stride 1 as the weight gradient of an unpadded convolution of the explicitly padded
input (XLA's fast case), for larger strides at batch 1 as one [Cin, N] @ [N, Cout] product per tap
over strided slices of the input, with no gathered-patch matrix in memory. Depthwise
convolutions run on CPU as k·k shifted multiply-adds (forward and gradient), several times faster
than XLA CPU's grouped convolution on EfficientNet-Lite0's layers. 1×1 convolutions and every
other platform get ``lax.conv_general_dilated`` with XLA's own gradient.
``benchmarks/kernels.py`` re-measures each CPU form against XLA's op.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kdad_jax.kernels.windows import window_taps


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
    """x [B, H, W, Cin], kernel [kh, kw, Cin / groups, Cout] -> [B, h, w, Cout].

    CPU lowering: dense k×k kernels get the fast weight gradient, depthwise ones (groups = Cin =
    Cout, no dilation) shifted multiply-adds; other grouped convolutions and other platforms
    keep XLA's own."""
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    dilation = tuple(int(d) for d in dilation)
    native = functools.partial(_native_conv, strides=strides, padding=padding, groups=groups,
                               dilation=dilation)
    if groups > 1:
        depthwise = groups == x.shape[-1] == kernel.shape[-1] and kernel.shape[2] == 1
        if not (depthwise and dilation == (1, 1)):
            return native(x, kernel)
        cpu = functools.partial(_depthwise_shift_conv, strides=strides, padding=padding)
    elif kernel.shape[0] * kernel.shape[1] > 1:
        cpu = lambda x, kernel: _cpu_conv(x, kernel, strides, padding, dilation)  # noqa: E731
    else:
        return native(x, kernel)
    return lax.platform_dependent(x, kernel, cpu=cpu, default=native)
