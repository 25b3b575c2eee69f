"""Platform-specific forms of the networks' heavy operations, in one place.

Networks (``kdad_jax.models``) call these and never ask which backend runs them. Each form is
chosen per platform when a program is *lowered* (``jax.lax.platform_dependent``), so a program
exported on a CPU for CUDA and TPU carries XLA's standard ops for them:

| operation | CPU lowering | CUDA, TPU, others |
|---|---|---|
| dense k×k convolution (``conv2d``) | XLA's convolution, weight gradient written out (custom VJP) | ``conv_general_dilated``, XLA's gradient |
| depthwise convolution (``conv2d``, groups = C) | k·k shifted multiply-adds | grouped ``conv_general_dilated`` |
| max pool (``max_pool``) | max of strided slices when the input is ≤ 8 MiB and its shape known, else ``reduce_window`` | ``reduce_window`` |
| max pool gradient | torch's rule (first maximum of each window) as slices and pads | the same |
| BatchNorm per-channel means (``channel_mean``) | product with a ones vector | ``jnp.mean`` |
| BatchNorm statistics (``batch_stats``) | corrected means (a second mean of what the first left over) | the same |
| BatchNorm gradient (``normalize_with_batch_stats``) | written out (custom VJP) | the same |

Compiler options of the local backend (``compilation``) are chosen at compile time.
``benchmarks/kernels.py`` times each CPU form against XLA's plain op.
"""

from kdad_jax.kernels.batch_norm import (batch_stats, channel_mean, normalize,  # noqa: F401
                                         normalize_with_batch_stats)
from kdad_jax.kernels.conv import conv2d  # noqa: F401
from kdad_jax.kernels.pooling import max_pool  # noqa: F401
