"""EfficientAD's convolutional autoencoder with sizes derived from the input size.

The reference fixes its resize targets (3, 8, 15, 32, 63, 127, 56) for 256² inputs. Here they are
S/64−1, S/32, S/16−1, S/8, S/4−1, S/2−1 and the teacher's feature size, which reproduces the
reference at S = 256 and keeps working at other sizes. (ours) The encoder's last convolution has
kernel 8 when the encoded map is at least 8 wide, else the map's own width, so that the latent
stays 1×1 for inputs below 256² (the reference's k8 conv fails there).
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax

from kdad_jax.models.conv import Conv


def decoder_sizes(image_size: int) -> Tuple[int, ...]:
    s = image_size
    return tuple(max(1, t) for t in (s // 64 - 1, s // 32, s // 16 - 1, s // 8, s // 4 - 1, s // 2 - 1))


def _resize(x, hw):
    """Half-pixel bilinear resize without antialiasing (PyTorch ``interpolate(bilinear)``)."""
    return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), "linear", antialias=False)


class Encoder(nn.Module):
    dtype: Optional[Any] = None  # convolutions' compute dtype (models/conv.py); None: float32

    @nn.compact
    def __call__(self, x):  # [B, H, W, 3] -> [B, h, w, 64]
        for channels in (32, 32, 64, 64, 64):
            x = nn.relu(Conv(channels, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                             dtype=self.dtype)(x))
        kh, kw = min(8, x.shape[1]), min(8, x.shape[2])
        return Conv(64, (kh, kw), dtype=self.dtype)(x)


class Decoder(nn.Module):
    image_hw: Tuple[int, int]
    feature_hw: Tuple[int, int]
    out_channels: int = 384
    dropout_rate: float = 0.2
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, z, train: bool = False):
        sizes = zip(decoder_sizes(self.image_hw[0]), decoder_sizes(self.image_hw[1]))
        for hw in sizes:
            z = _resize(z, hw)
            z = nn.relu(Conv(64, (4, 4), padding=((2, 2), (2, 2)), dtype=self.dtype)(z))
            z = nn.Dropout(self.dropout_rate, deterministic=not train)(z)
        z = _resize(z, self.feature_hw)
        z = nn.relu(Conv(64, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)(z))
        return Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)(z)


class AutoEncoder(nn.Module):
    """[B, H, W, 3] -> [B, h, w, out_channels] where (h, w) is the teacher's feature size."""

    image_hw: Tuple[int, int]
    feature_hw: Tuple[int, int]
    out_channels: int = 384
    dtype: Optional[Any] = None  # convolutions' compute dtype (models/conv.py); None: float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        z = Encoder(dtype=self.dtype)(x)
        return Decoder(self.image_hw, self.feature_hw, self.out_channels,
                       dtype=self.dtype)(z, train=train)
