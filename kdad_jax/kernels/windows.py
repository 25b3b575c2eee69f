"""Strided window taps: the slices of a padded input that each kernel position sees.

Convolutions and pools written as k·k strided slices (CPU fast paths in ``conv`` and
``pooling``) all read their input through this one helper.
"""

from typing import Iterator, Tuple

import jax


def window_taps(padded: jax.Array, window: Tuple[int, int], strides: Tuple[int, int],
                out_hw: Tuple[int, int], dilation: Tuple[int, int] = (1, 1)
                ) -> Iterator[Tuple[Tuple[int, int], jax.Array]]:
    """Yield ((i, j), the slice of ``padded`` [B, H', W', C] that tap (i, j) sees [B, h, w, C]).

    Tap (i, j) of output pixel (y, x) reads padded[:, y·sh + i·dh, x·sw + j·dw, :]."""
    (kh, kw), (sh, sw), (ho, wo), (dh, dw) = window, strides, out_hw, dilation
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            yield (i, j), padded[:, top:top + sh * (ho - 1) + 1:sh, left:left + sw * (wo - 1) + 1:sw, :]
