"""PyTorch's BatchNorm2d in Flax: what every network converted from torch here trains with.

Flax's ``nn.BatchNorm`` moves its running variance towards the *biased* batch variance; torch
moves it towards the *unbiased* one (× n / (n − 1), n = B·H·W values per channel). At batch 1 on
an 8 × 8 feature map that is 1.6 % of the running variance a student is evaluated with, so this
module does what torch does. Parameter and statistic names are Flax's (``scale``, ``bias``,
``mean``, ``var``), so checkpoints and converted teachers read as before.

With batch statistics it normalizes through ``kdad_jax.kernels.normalize_with_batch_stats``
(written-out gradient; per-platform forms).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdad_jax.kernels import batch_stats, normalize, normalize_with_batch_stats


class TorchBatchNorm(nn.Module):
    """``[..., C]`` normalized over every axis but the last.

    ``momentum`` is Flax's (weight of the old running value: torch's 0.1 is 0.9 here).
    """
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if use_running_average:
            return normalize(x, running_mean.value, running_var.value, scale, bias, self.epsilon)
        if not self.is_initializing():
            mean, var = jax.lax.stop_gradient(batch_stats(x))  # XLA shares them with the step's
            count = x.size // features
            unbiased = var * (count / max(count - 1, 1))
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
        return normalize_with_batch_stats(x, scale, bias, self.epsilon)
