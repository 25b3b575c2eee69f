"""Each CPU form of ``kdad_jax.kernels`` against XLA's plain op, on the shapes it was made for.

    python benchmarks/kernels.py [--repeats 5] [--scale 1.0]

Prints one JSON object: per case the median milliseconds of the CPU form (``ours_ms``) and of
XLA's plain op (``xla_ms``), both jitted the way the programs compile them (without YNNPACK
fusions where ``kernels.compilation`` drops them), and their ratio; ``ours_over_xla`` ≥ 1 on a
newer jaxlib says the workaround is no longer needed. ``--scale`` shrinks the spatial sizes
(tests run it small). The compiler-option case times a k×k convolution with and without XLA
CPU's YNNPACK fusions.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import common  # noqa: E402


def _significant(ms: float) -> float:
    """Four significant digits: sub-millisecond cases at small --scale keep their ratio."""
    return float(f"{ms:.4g}")


def _timed(fn, args, repeats, options=None):
    import jax
    compiled = jax.jit(fn, compiler_options=options or None).lower(*args).compile()
    return 1e3 * common.median_time(lambda: jax.block_until_ready(compiled(*args)), repeats)


def _gradient(conv):
    """d/d(x, kernel) of sum(conv(x, kernel) · weights): a train step's backward pass."""
    import jax
    return jax.grad(lambda x, k, w: (conv(x, k) * w).sum(), argnums=(0, 1))


def _cases(scale: float):
    """(name, ours, xla, args builder) per workaround."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from kdad_jax.kernels import batch_norm, conv, pooling

    rng = np.random.default_rng(0)

    def side(n):
        return max(8, int(n * scale))

    def arrays(*shapes):
        return [jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in shapes]

    cases = []
    # Dense k×k weight gradients: the autoencoder's 4×4/2 layer and a PDN 4×4/1 layer, batch 1;
    # ResNet-18's 7×7/2 stem at batch 1 and 8.
    for name, batch, hw, cin, cout, k, stride, pad in [
            ("conv_grad_4x4_s2_b1", 1, side(256), 3, 32, 4, 2, 1),
            ("conv_grad_4x4_s1_b1", 1, side(127), 128, 256, 4, 1, 3),
            ("conv_grad_7x7_s2_b1", 1, side(256), 3, 64, 7, 2, 3),
            ("conv_grad_7x7_s2_b8", 8, side(256), 3, 64, 7, 2, 3)]:
        strides, padding = (stride, stride), ((pad, pad), (pad, pad))
        out = (hw + 2 * pad - k) // stride + 1
        x, kernel, weights = arrays((batch, hw, hw, cin), (k, k, cin, cout), (batch, out, out, cout))
        ours = _gradient(lambda x, w, s=strides, p=padding: conv._cpu_conv(x, w, s, p, (1, 1)))
        xla = _gradient(lambda x, w, s=strides, p=padding: conv._native_conv(x, w, s, p))
        cases.append((name, ours, xla, (x, kernel, weights)))
    # Depthwise 3×3 (EfficientNet-Lite0's second stage), forward and gradient.
    hw, channels = side(64), 96
    x, kernel, weights = arrays((1, hw, hw, channels), (3, 3, 1, channels), (1, hw, hw, channels))
    padding = ((1, 1), (1, 1))
    shift = lambda x, w: conv._depthwise_shift_conv(x, w, (1, 1), padding)  # noqa: E731
    grouped = lambda x, w: conv._native_conv(x, w, (1, 1), padding, groups=channels)  # noqa: E731
    cases.append(("depthwise_3x3_forward", shift, grouped, (x, kernel)))
    cases.append(("depthwise_3x3_grad", _gradient(shift), _gradient(grouped), (x, kernel, weights)))
    # Max pool 3×3/2 of ResNet's stem output: forward at batch 1, gradient at batch 8.
    window, strides = (3, 3), (2, 2)
    (x1,) = arrays((1, side(128), side(128), 64))
    cases.append(("max_pool_forward_b1",
                  lambda x: pooling._sliced(x, window, strides, padding),
                  lambda x: pooling._reduce_window(x, window, strides, padding), (x1,)))
    (x8,) = arrays((8, side(128), side(128), 64))
    out = pooling._output_hw((side(128) + 2,) * 2, window, strides)
    (pool_weights,) = arrays((8, *out, 64))
    pool_grad = lambda pool: jax.grad(lambda x, w: (pool(x) * w).sum())  # noqa: E731
    cases.append(("max_pool_grad_b8",
                  pool_grad(lambda x: pooling.max_pool(x, window, strides, padding)),
                  pool_grad(lambda x: pooling._reduce_window(x, window, strides, padding)),
                  (x8, pool_weights)))
    # BatchNorm's per-channel mean of a ResNet-18 layer1 activation at batch 8, and its transpose.
    (activation,) = arrays((8 * side(64) * side(64), 64))
    cases.append(("channel_mean_b8", batch_norm._mean_as_product, batch_norm._mean, (activation,)))
    cases.append(("channel_mean_grad_b8",
                  jax.grad(lambda a: (batch_norm._mean_as_product(a) ** 2).sum()),
                  jax.grad(lambda a: (batch_norm._mean(a) ** 2).sum()), (activation,)))
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from kdad_jax.kernels import compilation, conv

    options = compilation.compiler_options()
    rows = []
    for name, ours, xla, arrays in _cases(args.scale):
        ours_ms = _timed(ours, arrays, args.repeats, options)
        xla_ms = _timed(xla, arrays, args.repeats, options)
        rows.append({"case": name, "ours_ms": _significant(ours_ms), "xla_ms": _significant(xla_ms),
                     "ours_over_xla": round(ours_ms / xla_ms, 3)})
    # Compiler options: PDN's 4×4 128→256 convolution with and without YNNPACK fusions.
    hw = max(8, int(126 * args.scale))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, hw, hw, 128)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(4, 4, 128, 256)).astype(np.float32))
    plain = lambda x, k: conv._native_conv(x, k, (1, 1), ((0, 0), (0, 0)))  # noqa: E731
    without = _timed(plain, (x, kernel), args.repeats, options)
    default = _timed(plain, (x, kernel), args.repeats)
    rows.append({"case": "conv_4x4_compiler_options", "ours_ms": _significant(without),
                 "xla_ms": _significant(default), "ours_over_xla": round(without / default, 3),
                 "ours_options": options})
    print(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__,
                      "scale": args.scale, "repeats": args.repeats, "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
