"""The trainable part of mixed (skip) distillation (the architecture is ours, see methods/mixed.py).

``MixedStudent``: a student with the teacher's architecture plus, for each skip path (i, j), a
projection of student tap i to teacher tap j's channels (1×1 conv) and resolution (bilinear,
antialiased when shrinking). The two commute (both linear per pixel), so each path runs the conv
at the smaller of the two resolutions.
"""

from typing import Sequence, Tuple

import flax.linen as nn

from kdad_jax.models.conv import Conv
from kdad_jax.models.dual_student import resize_to


class Projection(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, hw):
        conv = Conv(self.features, (1, 1), name="conv")
        if x.shape[1] * x.shape[2] > hw[0] * hw[1]:
            return conv(resize_to(x, hw))
        return resize_to(conv(x), hw)


class MixedStudent(nn.Module):
    """Image -> (student taps shallow..deep, {(i, j): projection of tap i onto tap j's shape})."""

    student: nn.Module
    taps: Sequence[str]
    channels: Sequence[int]
    pairs: Sequence[Tuple[int, int]]   # (student tap index i, teacher tap index j), 0-based

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = self.student(x, train)
        s = [s[k] for k in self.taps]
        projected = {}
        for i, j in self.pairs:
            projected[(i, j)] = Projection(self.channels[j], name=f"skip_{i + 1}_to_{j + 1}")(
                s[i], s[j].shape[1:3])
        return s, projected
