"""Model shapes, parameter counts and the CPU convolution's exactness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdad_jax.models.autoencoder import AutoEncoder, decoder_sizes
from kdad_jax.kernels import conv2d
from kdad_jax.models.pdn import PDN, feature_size


def _count(params):
    return sum(np.size(p) for p in jax.tree_util.tree_leaves(params))


def _conv_params(cin, cout, k):
    return k * k * cin * cout + cout


@pytest.mark.parametrize("size,padded,image,expected", [
    ("s", False, 256, 56), ("s", True, 256, 64), ("m", False, 256, 56), ("m", True, 256, 64),
    ("s", False, 128, 24),
])
def test_pdn_output_shape(size, padded, image, expected):
    model = PDN(size, 384, padded)
    x = jnp.zeros((1, image, image, 3))
    shape = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x)).shape
    assert shape == (1, expected, expected, 384)
    assert feature_size(image, size, padded) == expected


def test_pdn_parameter_counts():
    x = jnp.zeros((1, 64, 64, 3))
    small = jax.eval_shape(PDN("s", 384).init, jax.random.key(0), x)
    assert _count(small) == (_conv_params(3, 128, 4) + _conv_params(128, 256, 4)
                             + _conv_params(256, 256, 3) + _conv_params(256, 384, 4))  # 2 694 144
    student = jax.eval_shape(PDN("s", 768).init, jax.random.key(0), x)
    assert _count(student) - _count(small) == _conv_params(256, 768, 4) - _conv_params(256, 384, 4)
    medium = jax.eval_shape(PDN("m", 384).init, jax.random.key(0), x)
    assert _count(medium) == (_conv_params(3, 256, 4) + _conv_params(256, 512, 4)
                              + _conv_params(512, 512, 1) + _conv_params(512, 512, 3)
                              + _conv_params(512, 384, 4) + _conv_params(384, 384, 1))


def test_pdn_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        feature_size(16)


def test_autoencoder_reference_sizes_at_256():
    assert decoder_sizes(256) == (3, 8, 15, 32, 63, 127)


@pytest.mark.parametrize("image", [256, 128, 96])
def test_autoencoder_matches_teacher_features(image):
    features = feature_size(image)
    model = AutoEncoder((image, image), (features, features), 384)
    x = jnp.zeros((2, image, image, 3))
    shape = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x)).shape
    assert shape == (2, features, features, 384)


@pytest.mark.parametrize("shape", [
    # (batch, side, cin, cout, k, pad[, stride]): PDN-S/M and autoencoder layer shapes, scaled down
    (1, 20, 3, 8, 4, 3), (2, 13, 16, 32, 4, 0), (2, 9, 8, 16, 3, 1), (1, 12, 8, 8, 1, 0),
    (2, 10, 8, 8, 4, 2), (1, 9, 8, 8, 8, 0), (2, 16, 3, 8, 4, 1, 2), (1, 11, 8, 8, 4, 1, 2),
    # ResNet-18: 7×7/2 stem, 3×3/1 and 3×3/2 blocks, 1×1/2 downsample
    (1, 20, 3, 8, 7, 3, 2), (2, 9, 8, 8, 3, 1), (2, 9, 8, 16, 3, 1, 2), (2, 8, 8, 16, 1, 0, 2),
])
def test_conv_gradients_equal_lax(shape):
    b, side, cin, cout, k, pad, *stride = shape
    stride = stride[0] if stride else 1
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    out = (side + 2 * pad - k) // stride + 1
    g = jnp.asarray(rng.normal(size=(b, out, out, cout)), jnp.float32)
    padding = ((pad, pad), (pad, pad))

    def reference(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST)

    np.testing.assert_allclose(conv2d(x, w, (stride, stride), padding), reference(x, w),  # inference path
                               rtol=1e-5, atol=1e-5 * float(jnp.abs(reference(x, w)).max()))
    ours = jax.vjp(lambda x, w: conv2d(x, w, (stride, stride), padding), x, w)
    ref = jax.vjp(reference, x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5 * float(jnp.abs(ref[0]).max()))
    for a, r in zip(ours[1](g), ref[1](g)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 2)])
def test_depthwise_conv_and_its_gradients_equal_lax_grouped_conv(k, stride):
    """EfficientNet's depthwise convolutions (on the CPU: k·k shifted multiply-adds) against
    XLA's grouped convolution: a kernel with no symmetry, a non-square image, every gradient."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 11, 9, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
    padding = ((k // 2, k // 2), (k // 2, k // 2))

    def reference(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), padding, feature_group_count=6,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST)

    ours = jax.vjp(lambda x, w: conv2d(x, w, (stride, stride), padding, groups=6), x, w)
    ref = jax.vjp(reference, x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5 * float(jnp.abs(ref[0]).max()))
    g = jnp.asarray(rng.normal(size=ref[0].shape), jnp.float32)
    for a, r in zip(ours[1](g), ref[1](g)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("shape", [(1, 8, 8, 5), (3, 5, 7, 4)])
def test_batch_norm_is_torchs_in_training_and_evaluation(shape):
    """Outputs and running statistics equal torch.nn.BatchNorm2d's after three training passes
    (torch moves the running variance towards the unbiased batch variance; Flax's BatchNorm
    towards the biased one), then in evaluation mode."""
    from kdad_jax.models.batch_norm import TorchBatchNorm
    from tests.conftest import optional_module
    torch = optional_module("torch", "convert")
    rng = np.random.default_rng(0)
    reference, module = torch.nn.BatchNorm2d(shape[-1]), TorchBatchNorm(momentum=0.9)
    variables = module.init(jax.random.key(0), jnp.zeros(shape), use_running_average=False)
    for _ in range(3):
        x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
        cotangent = rng.normal(size=shape).astype(np.float32)
        x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
        reference.zero_grad()
        expected = reference.train()(x_torch)
        expected.backward(torch.from_numpy(cotangent).permute(0, 3, 1, 2))

        def forward(params, x):
            return module.apply({**variables, "params": params}, x, use_running_average=False,
                                mutable=["batch_stats"])
        (ours, updated), vjp = jax.vjp(forward, variables["params"], jnp.asarray(x))
        np.testing.assert_allclose(ours, expected.detach().permute(0, 2, 3, 1).numpy(), atol=2e-6)
        # The gradient too (the batch mean is a product with a ones vector here).
        d_params, d_x = vjp((jnp.asarray(cotangent), jax.tree.map(jnp.zeros_like, updated)))
        np.testing.assert_allclose(d_x, x_torch.grad.permute(0, 2, 3, 1).numpy(), atol=2e-5)
        np.testing.assert_allclose(d_params["scale"], reference.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d_params["bias"], reference.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
        variables = {**variables, **updated}
    np.testing.assert_allclose(variables["batch_stats"]["var"], reference.running_var, rtol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["mean"], reference.running_mean, atol=1e-7)
    expected = reference.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(module.apply(variables, x, use_running_average=True),
                               expected.detach().numpy(), atol=2e-6)


def test_batch_norm_written_out_gradient_equals_autodiff_in_float64():
    """The custom VJP of training-mode BatchNorm equals autodiff of the textbook formula (biased
    batch variance over B, H, W) in float64 to rounding, for x, scale and bias: a dropped term
    (through the mean or the variance) would be off by O(1)."""
    from kdad_jax.kernels import normalize_with_batch_stats
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x, weights = (jnp.asarray(rng.normal(size=(3, 5, 4, 7)) * 2 + 1) for _ in range(2))
        scale, bias = jnp.asarray(rng.normal(size=7)), jnp.asarray(rng.normal(size=7))

        def textbook(x, scale, bias):
            mean = x.mean(axis=(0, 1, 2))
            var = jnp.square(x - mean).mean(axis=(0, 1, 2))
            return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

        def loss(norm):
            return lambda x, s, b: jnp.sum(jnp.sin(norm(x, s, b)) * weights)
        ours = jax.value_and_grad(loss(lambda x, s, b: normalize_with_batch_stats(x, s, b, 1e-5)),
                                  (0, 1, 2))(x, scale, bias)
        expected = jax.value_and_grad(loss(textbook), (0, 1, 2))(x, scale, bias)
        np.testing.assert_allclose(ours[0], expected[0], rtol=1e-12)
        for a, e in zip(ours[1], expected[1]):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)


def test_batch_norm_statistics_and_gradient_are_float64s_rounded_on_a_large_mean():
    """Batch 1 at 128², a channel mean 2000× its spread: the float32 batch mean is the float64 mean correctly rounded, the
    variance within float32 rounding of its own size, and the gradient of a loss through the
    normalization within 1e-4 of float64's. A float32 sum of the 16 384 values drifts 30–80 ulps
    of the mean, which moves x − mean by 2 % of the spread and the gradient by more."""
    from kdad_jax.kernels import batch_stats, normalize_with_batch_stats
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(1, 128, 128, 8)) * 0.5 + rng.uniform(900, 1100, size=8)).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)
    scale, bias = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    exact = x.astype(np.float64).reshape(-1, 8)
    mean, var = (np.asarray(v, np.float64) for v in jax.jit(batch_stats)(jnp.asarray(x)))
    exact_mean = exact.mean(axis=0)
    exact_var = np.square(exact - exact_mean).mean(axis=0)
    assert np.all(np.abs(mean - exact_mean) <= 0.5 * np.spacing(exact_mean.astype(np.float32)))
    assert np.all(np.abs(var - exact_var) <= 8 * np.spacing(exact_var.astype(np.float32)))

    def loss(x, scale, bias):
        return jnp.sum(jnp.sin(normalize_with_batch_stats(x, scale, bias, 1e-5)) * weights)
    ours = jax.jit(jax.grad(loss, (0, 1, 2)))(jnp.asarray(x), scale, bias)
    with jax.enable_x64(True):
        expected = jax.grad(loss, (0, 1, 2))(*(jnp.asarray(a, jnp.float64) for a in (x, scale, bias)))
        expected = [np.asarray(e) for e in expected]
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("sliced_limit", [0, 2**30])
def test_max_pool_is_torchs_with_ties(sliced_limit, monkeypatch):
    """ResNet's 3×3 / 2 max pool: values and gradient equal torch.nn.functional.max_pool2d's,
    which sends a window's gradient to its first maximum (row-major) when several are equal;
    ties are common after a ReLU (zeros) and planted here (equal positive values). Both forward
    formulations (reduce_window; strided slices, for small inputs on CPU)."""
    from kdad_jax.kernels import pooling
    from kdad_jax.kernels import max_pool
    from tests.conftest import optional_module
    monkeypatch.setattr(pooling, "_SLICED_FORWARD_BYTES", sliced_limit)
    torch = optional_module("torch", "convert")
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(2, 9, 10, 3)), 0).astype(np.float32)
    x[0, 1:4, 2:5, 0] = 1.5
    x[1, 0, :, 2] = 0.25
    cotangent = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    out, vjp = jax.vjp(lambda x: max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))), jnp.asarray(x))
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    expected = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
    expected.backward(torch.from_numpy(cotangent).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(out, expected.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(vjp(jnp.asarray(cotangent))[0], x_torch.grad.permute(0, 2, 3, 1).numpy(),
                               atol=1e-6)
