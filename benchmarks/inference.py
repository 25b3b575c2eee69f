"""Inference (EfficientAD: teacher + student + AE + normalization + resize; STFPM: teacher +
student + layer maps + resize): kdad_jax vs PyTorch.

    python benchmarks/inference.py [--models s,m] [--batches 1,8] [--image-size 256] [--repeats 5]
    python benchmarks/inference.py --models stfpm --batches 1,32 --image-size 128

Prints one JSON object: per model and batch, median seconds per batch and per image after
warm-up, compile time, peak RSS (each case in its own process) and the jax/torch ratio. The JAX
side is the function ``evaluate`` uses: ``inference.jit(method.anomaly_map)``, one XLA program.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import common  # noqa: E402


def jax_case(size, batch, image_size, repeats):
    import time

    import jax
    import jax.numpy as jnp

    from kdad_jax import inference

    setup = common.jax_setup(size, batch, image_size)
    method, frozen, params, model_state = setup.method, setup.frozen, setup.params, setup.model_state
    images = jnp.asarray(setup.images)
    stats = setup.stats
    if "q_st" in stats:  # EfficientAD: any calibration, it is not part of the timing
        stats = {**stats, "q_st": jnp.array([0.0, 1.0]), "q_ae": jnp.array([0.0, 1.0])}
    start = time.perf_counter()
    compiled = inference.jit(method.anomaly_map).lower(
        params, model_state, frozen, stats, images).compile()
    compile_s = time.perf_counter() - start
    seconds = common.median_time(
        lambda: jax.block_until_ready(compiled(params, model_state, frozen, stats, images)), repeats)
    return {"jax_s": seconds, "jax_per_image_s": seconds / batch, "jax_compile_s": compile_s,
            "jax_peak_rss_mb": common.peak_rss_mb()}


def torch_case(size, batch, image_size, repeats):
    import torch

    model = common.torch_model(size, image_size)
    images = torch.rand(batch, 3, image_size, image_size)
    seconds = common.median_time(lambda: model.anomaly_map(images), repeats)
    return {"torch_s": seconds, "torch_per_image_s": seconds / batch,
            "torch_peak_rss_mb": common.peak_rss_mb(), "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    common.main(__file__, "inference", "seconds per batch (median)", jax_case, torch_case)
