"""The optimizer follows the paper's PyTorch setup."""

import jax.numpy as jnp
import numpy as np
import pytest

from kdad_jax.training import train
from tests.test_efficientad import efficientad_config


def test_optimizer_is_adam_with_coupled_l2_and_lr_drop():
    config = efficientad_config.get_config("smoke")
    config.train.steps = 100
    config.train.learning_rate = 1e-2
    config.train.weight_decay = 0.1
    schedule = train.learning_rate_schedule(config)
    assert float(schedule(94)) == pytest.approx(1e-2) and float(schedule(95)) == pytest.approx(1e-3)
    tx = train.make_optimizer(config)
    params = {"w": jnp.array([2.0, -3.0])}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    # Coupled L2: the decay enters Adam's gradient, so the first step is -lr·sign(p) (AdamW: -lr·wd·p).
    np.testing.assert_allclose(updates["w"], [-1e-2, 1e-2], rtol=1e-4)
