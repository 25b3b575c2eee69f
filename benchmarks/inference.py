"""Inference (EfficientAD: teacher + student + AE + normalization + resize; STFPM: teacher +
student + layer maps + resize): kdad_jax vs PyTorch, and kdad_jax's ONNX export run by ONNX
Runtime (CPU provider; when the ``onnx`` extra is installed).

    python benchmarks/inference.py [--models s,m] [--batches 1,8] [--image-size 256] [--repeats 5]
    python benchmarks/inference.py --models stfpm --batches 1,32 --image-size 128

Prints one JSON object: per model and batch, median seconds per batch and per image after
warm-up, compile time, peak RSS (each case in its own process) and the jax/torch,
onnxruntime/jax and onnxruntime/torch ratios. For JAX also the program's floating-point work (XLA's
cost analysis, ``jax_gflop``), the rate it runs at (``jax_gflop_per_s``) and, as the machine's
yardstick, the rate of one large convolution alone (``conv_gflop_per_s``: PDN-S's last layer,
[1, 59, 59, 256] * [4, 4, 256, 384]) — how far a program is from what the cores do. The JAX side is the function ``evaluate`` uses:
``compilation.jit(method.anomaly_map)``, one XLA program; the ONNX side is that function exported
by ``--config.export.format=onnx`` (``kdad_jax.serve.onnx_export``) with the same weights.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import common  # noqa: E402
import numpy as np  # noqa: E402


def _setup_and_stats(size, batch, image_size):
    setup = common.jax_setup(size, batch, image_size)
    stats = setup.stats
    if "q_st" in stats:  # EfficientAD: any calibration, it is not part of the timing
        stats = {**stats, "q_st": np.array([0.0, 1.0], np.float32), "q_ae": np.array([0.0, 1.0], np.float32)}
    return setup, stats


def jax_case(size, batch, image_size, repeats):
    import time

    import jax
    import jax.numpy as jnp

    from kdad_jax.kernels import compilation

    setup, stats = _setup_and_stats(size, batch, image_size)
    method, frozen, params, model_state = setup.method, setup.frozen, setup.params, setup.model_state
    images = jnp.asarray(setup.images)
    start = time.perf_counter()
    compiled = compilation.jit(method.anomaly_map).lower(
        params, model_state, frozen, stats, images).compile()
    compile_s = time.perf_counter() - start
    seconds = common.median_time(
        lambda: jax.block_until_ready(compiled(params, model_state, frozen, stats, images)), repeats)
    gflop = _gflop(compiled)
    return {"jax_s": seconds, "jax_per_image_s": seconds / batch, "jax_compile_s": compile_s,
            "jax_peak_rss_mb": common.peak_rss_mb(), "jax_gflop": gflop,
            "jax_gflop_per_s": gflop / seconds if gflop else None,
            "conv_gflop_per_s": _reference_conv_rate(repeats)}


def _gflop(compiled):
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return analysis.get("flops", 0.0) / 1e9 if analysis else None


def _reference_conv_rate(repeats):
    """GFLOP/s of one large convolution compiled like the inference programs."""
    import jax
    import jax.numpy as jnp

    from kdad_jax.kernels import compilation
    from kdad_jax.kernels import conv2d

    x, kernel = jnp.ones((1, 59, 59, 256), jnp.float32), jnp.full((4, 4, 256, 384), 0.01, jnp.float32)
    compiled = compilation.jit(conv2d).lower(x, kernel).compile()
    seconds = common.median_time(lambda: jax.block_until_ready(compiled(x, kernel)), max(repeats, 5))
    return 56 * 56 * 384 * 4 * 4 * 256 * 2 / seconds / 1e9


def torch_case(size, batch, image_size, repeats):
    import torch

    model = common.torch_model(size, image_size)
    images = torch.rand(batch, 3, image_size, image_size)
    seconds = common.median_time(lambda: model.anomaly_map(images), repeats)
    return {"torch_s": seconds, "torch_per_image_s": seconds / batch,
            "torch_peak_rss_mb": common.peak_rss_mb(), "torch_threads": torch.get_num_threads()}


_ORT_TIMING = """
import json, resource, sys, time
import numpy as np
import onnxruntime
sys.path.insert(0, sys.argv[1])
import common
model, batch, image_size, repeats = sys.argv[2], *map(int, sys.argv[3:6])
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
images = np.random.default_rng(0).uniform(size=(batch, image_size, image_size, 3)).astype(np.float32)
seconds = common.median_time(lambda: session.run(["maps"], {"images": images}), repeats)
print(json.dumps({"seconds": seconds, "rss": common.peak_rss_mb(), "version": onnxruntime.__version__}))
"""


def onnx_case(size, batch, image_size, repeats):
    """Exported here (JAX), timed in a fresh process with ONNX Runtime alone, so its peak RSS is
    what a deployment holds; also its float16 and int8 versions (``kdad_jax.serve.precision``;
    int8 calibrated on the benchmark's random images: speed only, quality comes from a real run's
    parity report)."""
    import json
    import subprocess
    import tempfile
    import time

    import numpy as np

    from kdad_jax.training import parallel
    from kdad_jax.serve import onnx_export, precision

    setup, stats = _setup_and_stats(size, batch, image_size)
    arguments = parallel.to_host((setup.params, setup.model_state, setup.frozen, stats))
    start = time.perf_counter()
    model = onnx_export.to_onnx(setup.method.anomaly_map, arguments, (image_size, image_size, 3))
    convert_s = time.perf_counter() - start
    calibration = (np.random.default_rng(1).uniform(size=(4, image_size, image_size, 3)) * 255).astype(np.uint8)
    row = {"onnxruntime_convert_s": convert_s}
    for kind in precision.PRECISIONS:
        prefix = "onnxruntime" if kind == "float32" else f"onnxruntime_{kind}"
        reduced = precision.reduce(model, kind, calibration)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as f:
                f.write(reduced.SerializeToString())
            proc = subprocess.run([sys.executable, "-c", _ORT_TIMING, HERE, path, str(batch),
                                   str(image_size), str(repeats)], capture_output=True, text=True, check=True)
        timing = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update({f"{prefix}_s": timing["seconds"], f"{prefix}_per_image_s": timing["seconds"] / batch,
                    f"{prefix}_peak_rss_mb": timing["rss"]})
        row["onnxruntime_version"] = timing["version"]
    return row


if __name__ == "__main__":
    common.main(__file__, "inference", "seconds per batch (median)", jax_case, torch_case, onnx_case)
