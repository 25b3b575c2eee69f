"""BatchNorm with batch statistics: per-channel mean and variance and a written-out gradient.

Autodiff of the forward pass reduces [B, H, W, C] over (B, H, W) four times per layer (the scale
and bias gradients and through the mean and variance); the written-out backward pass
(``normalize_with_batch_stats``, a custom VJP) needs two per-channel sums. Per-channel means are
``channel_mean``, whose form each platform picks when the program is lowered
(``lax.platform_dependent``); ``benchmarks/kernels.py`` re-measures it.
"""

import functools

import jax
import jax.numpy as jnp


def _compute_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)  # bf16 -> f32; f32 and f64 stay


def batch_stats(x):
    """Per-channel mean and biased variance of ``x`` [..., C], in at least float32, within a few
    float32 roundings of the float64 values whatever the summation order.

    Two passes (as torch): E[x²] − E[x]² loses digits to cancellation. Each mean is corrected
    (``_corrected_mean``): a float32 sum of n values drifts by up to n·ε of their mean (torch's
    CPU BatchNorm sums in float64), so a channel whose mean is large beside its spread loses the
    mean's last digits, and x − mean, the variance and every gradient inherit the error."""
    values = x.astype(_compute_dtype(x))
    mean = _corrected_mean(values)
    return mean, _corrected_mean(jnp.square(values - mean))


def _corrected_mean(values):
    """``channel_mean`` m₀ plus the mean of x − m₀: those terms have mean ≈ 0, so their partial
    sums stay near their spread instead of growing with n, and the corrected mean is the true
    mean rounded to float32 (tests/test_models.py checks it against float64)."""
    first = channel_mean(values)
    return first + channel_mean(values - first)


def normalize(x, mean, var, scale, bias, epsilon):
    """(x − mean) / √(var + ε) · scale + bias, per channel, in ``x``'s dtype."""
    multiplier = scale * jax.lax.rsqrt(var + epsilon)
    return (x - mean.astype(x.dtype)) * multiplier.astype(x.dtype) + bias.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_with_batch_stats(x, scale, bias, epsilon):
    """``x`` [..., C] normalized with its own batch mean and biased variance, then scaled and
    shifted per channel; differentiable in ``x``, ``scale`` and ``bias``."""
    mean, var = batch_stats(x)
    return normalize(x, mean, var, scale, bias, epsilon)


def _normalize_fwd(x, scale, bias, epsilon):
    mean, var = batch_stats(x)
    return normalize(x, mean, var, scale, bias, epsilon), (x, mean, var, scale)


def _normalize_bwd(epsilon, residuals, cotangent):
    """With x̂ = (x − μ)/σ and g the output cotangent, n values per channel:
    d bias = Σ g, d scale = Σ g·x̂, dx = scale/σ · (g − Σg/n − x̂·Σ(g·x̂)/n)."""
    x, mean, var, scale = residuals
    dtype = _compute_dtype(x)
    inverse_std = jax.lax.rsqrt(var + epsilon)
    normalized = (x.astype(dtype) - mean) * inverse_std
    g = cotangent.astype(dtype)
    mean_g, mean_g_normalized = channel_mean(g), channel_mean(g * normalized)
    count = x.size // x.shape[-1]
    dx = (scale * inverse_std) * (g - mean_g - normalized * mean_g_normalized)
    return (dx.astype(x.dtype), (mean_g_normalized * count).astype(scale.dtype),
            (mean_g * count).astype(scale.dtype))


normalize_with_batch_stats.defvjp(_normalize_fwd, _normalize_bwd)


def channel_mean(x):
    """[..., C] -> [C], the mean over every axis but the last.

    CPU lowering: a product with a ones vector (HIGHEST precision), which XLA CPU runs faster
    inside a train step than its reduction over (B, H, W), in the forward pass and in its
    transpose; elsewhere ``jnp.mean``. Both round like a float32 sum (``batch_stats`` corrects
    the mean where that matters)."""
    flat = x.reshape(-1, x.shape[-1])
    return jax.lax.platform_dependent(flat, cpu=_mean_as_product, default=_mean)


def _mean_as_product(flat):
    ones = jnp.ones((flat.shape[0],), flat.dtype)
    return jnp.dot(ones, flat, precision=jax.lax.Precision.HIGHEST) / flat.shape[0]


def _mean(flat):
    return jnp.mean(flat, axis=0)
