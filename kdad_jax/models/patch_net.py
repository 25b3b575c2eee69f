"""Uninformed Students' patch networks (Bergmann et al., CVPR 2020, Table 5) with dense outputs.

A patch network maps a p×p patch to one D-dimensional descriptor (p = 17, 33 or 65). Layouts as
in the paper: 5×5/6×6/… convolutions with leaky ReLU (slope 5e-3) and 2×2 max-pools of stride 2
(floor), the last convolution linear. ``dense=False`` evaluates patches: [B, p, p, 3] ->
[B, 1, 1, D]. ``dense=True`` evaluates every patch of an image at once (fast dense feature
extraction): each stride-2 pool becomes a stride-1 pool and every later layer is dilated by the
accumulated stride, so the VALID output at (y, x) is exactly the patch network applied to the
patch whose top-left corner is (y, x). ``dense_features`` pads the image by p//2 (reflect), so
output pixel (y, x) describes the patch centred on image pixel (y, x): [B, H, W, 3] -> [B, H, W, D].
"""


import flax.linen as nn
import jax.numpy as jnp

from kdad_jax.models.conv import Conv

# p -> layers: ('conv', kernel, channels) | ('pool',); the last conv outputs D and is linear.
LAYOUTS = {
    17: (("conv", 6, 128), ("conv", 5, 256), ("conv", 5, 256), ("conv", 4, None)),
    33: (("conv", 3, 128), ("pool",), ("conv", 5, 256), ("pool",), ("conv", 2, 256), ("conv", 4, None)),
    65: (("conv", 5, 128), ("pool",), ("conv", 5, 128), ("pool",), ("conv", 5, 128), ("pool",),
         ("conv", 4, 256), ("conv", 1, None)),
}
_SLOPE = 5e-3


def _dense_max_pool(x, dilation: int):
    """2×2 max-pool, stride 1, window dilated by ``dilation``: [B, H, W, C] -> [B, H-d, W-d, C]."""
    d = dilation
    return jnp.maximum(jnp.maximum(x[:, :-d, :-d], x[:, d:, :-d]),
                       jnp.maximum(x[:, :-d, d:], x[:, d:, d:]))


def extent(patch_size: int) -> int:
    """Rows of the patch the output depends on (floor pooling ignores the last few)."""
    rf, jump = 1, 1
    for layer in LAYOUTS[patch_size]:
        k = 2 if layer[0] == "pool" else layer[1]
        rf += (k - 1) * jump
        if layer[0] == "pool":
            jump *= 2
    return rf


class PatchNet(nn.Module):
    patch_size: int = 17
    dim: int = 128

    @nn.compact
    def __call__(self, x, dense: bool = False):
        dilation = 1
        layers = LAYOUTS[self.patch_size]
        for index, layer in enumerate(layers):
            if layer[0] == "pool":
                if dense:
                    x = _dense_max_pool(x, dilation)
                    dilation *= 2
                else:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            _, kernel, channels = layer
            last = index == len(layers) - 1
            x = Conv(self.dim if last else channels, (kernel, kernel), dilation=(dilation, dilation),
                     name=f"conv{index}")(x)
            if not last:
                x = nn.leaky_relu(x, _SLOPE)
        return x


def pad_for_dense(images, patch_size: int):
    """Reflect-pad [B, H, W, 3] by p//2 before and p−1−p//2 after, so the dense output's pixel
    (y, x) describes the patch centred on image pixel (y, x): -> [B, H+p−1, W+p−1, 3]."""
    half = patch_size // 2
    rest = patch_size - 1 - half
    return jnp.pad(images, ((0, 0), (half, rest), (half, rest), (0, 0)), mode="reflect")


def dense_features(net: PatchNet, variables, images) -> jnp.ndarray:
    """Descriptor of the patch centred on every pixel: [B, H, W, 3] -> [B, H, W, D]."""
    out = net.apply(variables, pad_for_dense(images, net.patch_size), dense=True)
    return out[:, :images.shape[1], :images.shape[2]]


def patch_at(images, y: int, x: int, patch_size: int) -> jnp.ndarray:
    """The p×p patch centred on (y, x) of the reflect-padded images (for checks): [B, p, p, 3]."""
    return pad_for_dense(images, patch_size)[:, y:y + patch_size, x:x + patch_size]
