"""Max pooling with torch's gradient rule, whose CPU forms are fast.

XLA differentiates ``reduce_window(max)`` with select-and-scatter, which XLA CPU runs several
times slower than the rest of a ResNet stem's backward pass. Here the backward pass sends each
window's gradient to the *first* position (row-major within the window) holding the window's
maximum — torch's ``max_pool2d`` rule — as k·k strided slices and pads, elementwise work that
XLA runs fast everywhere. The forward pass is ``reduce_window`` except in the CPU lowering of a
small input (≤ 8 MiB, e.g. a batch-1 ResNet stem), where the maximum of the k·k strided slices is
faster; larger inputs, or a batch size that is symbolic (an export), keep ``reduce_window``. Both
give the same values. The form is chosen per platform when the function is lowered
(``lax.platform_dependent``); ``benchmarks/kernels.py`` re-measures it.
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

from kdad_jax.kernels.windows import window_taps

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def _pad(x, padding: Padding):
    return jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-jnp.inf)


_SLICED_FORWARD_BYTES = 8 * 2**20


def _output_hw(padded_hw, window, strides):
    return tuple((size - k) // s + 1 for size, k, s in zip(padded_hw, window, strides))


def _known_bytes(x) -> int:
    """``x``'s size in bytes, or -1 when a dimension is symbolic (a shape-polymorphic export)."""
    if not all(isinstance(d, int) for d in x.shape):
        return -1
    return x.size * x.dtype.itemsize


def _reduce_window(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                             ((0, 0), *padding, (0, 0)))


def _sliced(x, window, strides, padding):
    padded = _pad(x, padding)
    taps = window_taps(padded, window, strides, _output_hw(padded.shape[1:3], window, strides))
    return functools.reduce(jnp.maximum, (tap for _, tap in taps))


def _forward(x, window, strides, padding):
    native = functools.partial(_reduce_window, window=window, strides=strides, padding=padding)
    if not 0 < _known_bytes(x) <= _SLICED_FORWARD_BYTES:
        return native(x)
    cpu = functools.partial(_sliced, window=window, strides=strides, padding=padding)
    return lax.platform_dependent(x, cpu=cpu, default=native)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: Tuple[int, int], strides: Tuple[int, int], padding: Padding):
    """[B, H, W, C] -> [B, h, w, C], padded positions never chosen."""
    return _forward(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
    out = _forward(x, window, strides, padding)
    return out, (x, out)


def _max_pool_bwd(window, strides, padding, residuals, cotangent):
    x, out = residuals
    padded = _pad(x, padding)
    (sh, sw), (ho, wo) = strides, out.shape[1:3]
    taken = jnp.zeros(out.shape, bool)
    grad = jnp.zeros(padded.shape, cotangent.dtype)
    for (i, j), tap in window_taps(padded, window, strides, (ho, wo)):
        chosen = (tap == out) & ~taken
        taken = taken | chosen
        # Transpose of the strided slice: interior padding puts each value back where it came from.
        contribution = jnp.where(chosen, cotangent, 0)
        grad = grad + lax.pad(contribution, jnp.zeros((), cotangent.dtype),
                              ((0, 0, 0), (i, padded.shape[1] - i - sh * (ho - 1) - 1, sh - 1),
                               (j, padded.shape[2] - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
    (top, _), (left, _) = padding
    return (grad[:, top:top + x.shape[1], left:left + x.shape[2], :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
