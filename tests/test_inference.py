"""The inference compilation path: platform options and results identical to plain jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np

from kdad_jax import inference
from kdad_jax.models.pdn import PDN


def test_cpu_inference_drops_ynn_fusions():
    if jax.default_backend() == "cpu":
        assert inference.compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
    else:
        assert inference.compiler_options() == {}


def test_inference_jit_matches_plain_jit():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 40, 40, 3)), jnp.float32)
    model = PDN("s", out_channels=8)
    params = model.init(jax.random.key(0), x)
    expected = jax.jit(model.apply)(params, x)
    got = inference.jit(model.apply)(params, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
