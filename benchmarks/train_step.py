"""Train step (EfficientAD, STFPM): kdad_jax vs PyTorch eager on the same machine and shapes.

    python benchmarks/train_step.py [--models s,m] [--batches 1,8] [--image-size 256] [--repeats 5]
    python benchmarks/train_step.py --models stfpm --batches 1,32 --image-size 128
    python benchmarks/train_step.py --models s,stfpm --batches 8 --image-size 128 --devices 1,2,4,8

Prints one JSON object: per model and batch, the median seconds per step after warm-up, the
train step's compile time, peak RSS (each case runs in its own process) and jax/torch ratios.
The JAX step is the training loop's own: jitted over a mesh of all (``--devices``: forced CPU)
devices, the batch sharded along ``data``, state replicated.
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

    from kdad_jax.training import parallel, train

    setup = common.jax_setup(size, batch, image_size)
    mesh = parallel.make_mesh()
    method = setup.method
    tx = train.make_optimizer(setup.config)
    state = train.TrainState(jnp.zeros((), jnp.int32), setup.params, tx.init(setup.params),
                             setup.model_state)
    state, frozen, stats, key = parallel.replicate((state, setup.frozen, setup.stats, jax.random.key(2)),
                                                   mesh)
    batch_arrays = parallel.shard_batch({k: setup.rng.uniform(size=setup.images.shape).astype("float32")
                                         for k in common.batch_keys(size)}, mesh)
    start = time.perf_counter()
    compiled = train.make_train_step(method, tx, mesh).lower(state, frozen, stats, (), batch_arrays,
                                                              key).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def step():
        holder[0], metrics = compiled(holder[0], frozen, stats, (), batch_arrays, key)
        jax.block_until_ready(metrics)

    seconds = common.median_time(step, repeats)
    return {"jax_s": seconds, "jax_compile_s": compile_s, "jax_peak_rss_mb": common.peak_rss_mb(),
            "jax_devices": jax.device_count()}


def torch_case(size, batch, image_size, repeats):
    import torch

    model = common.torch_model(size, image_size)
    x = [torch.rand(batch, 3, image_size, image_size) for _ in common.batch_keys(size)]
    seconds = common.median_time(lambda: model.train_step(*x), repeats)
    return {"torch_s": seconds, "torch_peak_rss_mb": common.peak_rss_mb(), "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    common.main(__file__, "train_step", "seconds per step (median)", jax_case, torch_case)
