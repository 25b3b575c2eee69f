"""Patch description networks (PDN) of EfficientAD (Batzner et al., WACV 2024).

Training and inference use no padding (256² input → 56² features, receptive field 33×33);
teacher *pretraining* uses padded convolutions (256² → 64²). Average pools count padded zeros,
as PyTorch's ``AvgPool2d`` does by default.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn

from kdad_jax.models.conv import Conv

# (kind, out_channels | None, kernel, padding when padded, relu after)
_PDN_SMALL = (
    ("conv", 128, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 256, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 256, 3, 1, True),
    ("conv", "out", 4, 0, False),
)
_PDN_MEDIUM = (
    ("conv", 256, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 512, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 512, 1, 0, True),
    ("conv", 512, 3, 1, True),
    ("conv", "out", 4, 0, True),
    ("conv", "out", 1, 0, False),
)
LAYOUTS = {"s": _PDN_SMALL, "m": _PDN_MEDIUM}


class PDN(nn.Module):
    """PDN-S or PDN-M. Input [B, H, W, 3] (normalized), output [B, h, w, out_channels]."""

    size: str = "s"
    out_channels: int = 384
    padded: bool = False
    dtype: Optional[Any] = None  # convolutions' compute dtype (models/conv.py); None: float32

    @nn.compact
    def __call__(self, x):
        for kind, channels, kernel, pad, relu in LAYOUTS[self.size]:
            pad = pad if self.padded else 0
            if kind == "pool":
                x = nn.avg_pool(x, (kernel, kernel), strides=(kernel, kernel),
                                padding=((pad, pad), (pad, pad)), count_include_pad=True)
                continue
            features = self.out_channels if channels == "out" else channels
            x = Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=self.dtype)(x)
            if relu:
                x = nn.relu(x)
        return x


def feature_size(image_size: int, size: str = "s", padded: bool = False) -> int:
    """Spatial side of the PDN output for a square input of side ``image_size``."""
    side = image_size
    for kind, _, kernel, pad, _ in LAYOUTS[size]:
        pad = pad if padded else 0
        stride = kernel if kind == "pool" else 1
        side = (side + 2 * pad - kernel) // stride + 1
    if side < 1:
        raise ValueError(f"image_size {image_size} is too small for PDN-{size.upper()} "
                         f"(receptive field 33 px)")
    return side


def feature_shape(image_hw: Sequence[int], size: str = "s", padded: bool = False):
    return tuple(feature_size(s, size, padded) for s in image_hw)
