"""The inference compilation path: platform options and results identical to plain jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax.kernels import compilation
from kdad_jax.models.pdn import PDN


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_cpu_inference_compiles_convolutions_without_ynn_fusions():
    """The compiled program itself: plain jax.jit puts this conv in a YNNPACK fusion on CPU,
    compilation.jit does not (on other platforms neither has one)."""
    x, w = jnp.ones((1, 32, 32, 16)), jnp.ones((4, 4, 16, 32))
    plain = jax.jit(_conv).lower(x, w).compile().as_text()
    ours = compilation.jit(_conv).lower(x, w).compile().as_text()
    fusion = '"kind":"__ynn_fusion"'  # the fusion's backend config (names in metadata say "ynn" too)
    assert fusion not in ours
    if jax.default_backend() == "cpu" and compilation.compiler_options():
        assert fusion in plain  # the default this module exists to avoid


def test_inference_jit_matches_plain_jit():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 40, 40, 3)), jnp.float32)
    model = PDN("s", out_channels=8)
    params = model.init(jax.random.key(0), x)
    expected = jax.jit(model.apply)(params, x)
    got = compilation.jit(model.apply)(params, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_train_step_options_keep_ynn_only_for_depthwise_networks():
    """Dense k×k networks (PDN, ResNet, patch nets) train faster without YNNPACK on CPU,
    EfficientNet's depthwise ones with it (measured, see kdad_jax/kernels/compilation.py)."""
    dense = {"conv": {"kernel": jnp.zeros((4, 4, 3, 8)), "bias": jnp.zeros(8)}}
    depthwise = {**dense, "dw": {"kernel": jnp.zeros((3, 3, 1, 8))}}
    stacked_depthwise = {"dw": {"kernel": jnp.zeros((2, 3, 3, 1, 8))}}  # K stacked models
    pointwise = {**dense, "pw": {"kernel": jnp.zeros((1, 1, 1, 8))}}      # not depthwise
    assert compilation.train_compiler_options(dense) == compilation.compiler_options()
    assert compilation.train_compiler_options(pointwise) == compilation.compiler_options()
    assert compilation.train_compiler_options(depthwise) == {}
    assert compilation.train_compiler_options(stacked_depthwise) == {}
