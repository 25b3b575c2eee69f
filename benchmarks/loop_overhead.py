"""What the training loop costs around the step: JSON on stdout.

    python benchmarks/loop_overhead.py [--steps 2000]

- ``loop_steps_per_s``: ``train.run_steps`` (the real loop: batch to device, dispatch, progress
  bar, logging every ``log_every`` steps, preemption check) around a trivial method whose step
  is one scalar update on an 8×8 batch: the cost of everything but the model. Target ≥ 2 000/s on
  a 2-core CPU, so the host can feed a GPU doing a batch-1 EfficientAD-S step in < 0.5 ms.
- ``device_data_loop_steps_per_s``: the same with the training images on the device (the
  default): the grain pipeline of indices, and the gather and EfficientAD's augmentations in the
  step.
- ``efficientad``: the EfficientAD ``:smoke`` step (64², 16 teacher channels — a 256² step takes
  seconds on a CPU), steps/s inside ``run_steps`` and as bare jitted calls with one sync at the end.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kdad_jax.training import checkpoint, parallel, train  # noqa: E402
from kdad_jax.config_files import load as load_config_file  # noqa: E402
from kdad_jax.data import pipeline, resident  # noqa: E402
from kdad_jax.methods import get_method  # noqa: E402
from kdad_jax.methods.base import Method  # noqa: E402

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trivial_method() -> Method:
    """One scalar parameter pulled towards the batch mean: the step costs almost nothing."""
    def loss(params, model_state, frozen, stats, batch, rng):
        value = (params["w"] - jnp.mean(batch["image"])) ** 2
        return value, ({}, model_state)

    return Method(name="trivial", load_frozen=lambda rng: ({}, "none"),
                  init=lambda rng, frozen: ({"w": jnp.zeros(())}, {}),
                  prepare_stats=lambda frozen, batches: {}, loss=loss,
                  fit_stats=lambda *a: {}, anomaly_map=lambda *a: None)


def _config(steps: int):
    config = load_config_file(os.path.join(PROJECT, "configs", "efficientad.py")).get_config("smoke")
    config.train.steps, config.train.checkpoint_every, config.train.log_every = steps, 10 ** 9, 25
    return config


def loop_rate(method, config, batch, steps: int, batches=None, device_data=None) -> float:
    """Steps/s of ``train.run_steps`` over ``steps`` copies of ``batch`` (or over ``batches``,
    index batches into ``device_data``), from the loop's own ``metrics.jsonl`` clock (seconds
    since the loop started, logged every ``log_every`` steps): between the first logged step and
    the last, so compilation is not counted."""
    mesh = parallel.make_mesh()
    tx = optax.adam(1e-3)
    frozen, _ = method.load_frozen(jax.random.key(0))
    stats = method.prepare_stats(frozen, [batch["image"]])
    config.train.steps = steps
    with tempfile.TemporaryDirectory() as workdir:
        mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), 10 ** 9)
        state = train.initial_state(method, tx, frozen, jax.random.key(1))
        batches = batches if batches is not None else (batch for _ in range(steps))
        state = train.run_steps(config, workdir, "bench", method, tx, state, frozen, stats,
                                batches, mngr, mesh, device_data=device_data)
        jax.block_until_ready(state)
        mngr.close()
        logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    first, last = logged[0], logged[-1]
    return (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def bare_rate(method, config, batch, steps: int) -> float:
    """Steps/s of the same jitted step called back to back, one sync at the end."""
    mesh = parallel.make_mesh()
    tx = optax.adam(1e-3)
    frozen, _ = method.load_frozen(jax.random.key(0))
    stats = method.prepare_stats(frozen, [batch["image"]])
    step_fn = train.make_train_step(method, tx, mesh)
    state = parallel.replicate(train.initial_state(method, tx, frozen, jax.random.key(1)), mesh)
    rng = parallel.replicate(jax.random.key(2), mesh)
    on_device = parallel.shard_batch(batch, mesh)
    state, _ = step_fn(state, frozen, stats, (), on_device, rng)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step_fn(state, frozen, stats, (), on_device, rng)
    jax.block_until_ready(state)
    return steps / (time.perf_counter() - start)


def device_data_rate(config, steps: int) -> float:
    """The loop with training images on the device (the default): the real grain index pipeline
    (shuffled image and penalty indices) feeding the trivial method; in the step, the gather,
    EfficientAD's colour jitter and the penalty grayscale on 300 + 300 images of 8×8."""
    images = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 3), np.uint8)
    data = resident.Resident(images, images, jax.random.key(3))
    augment = resident.Augment(config.train.color_jitter, True, config.penalty.grayscale_prob)
    config.train.steps = steps
    batches = pipeline.index_batches(len(images), len(images), None, config, 0)
    return loop_rate(trivial_method(), config, {"image": images[:1] / 255.0}, steps,
                     batches=batches, device_data=(data, augment))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--efficientad_steps", type=int, default=100)
    args = parser.parse_args()
    tiny = {"image": np.full((1, 8, 8, 3), 0.5, np.float32)}
    config = _config(args.steps)
    result = {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "loop_steps_per_s": round(loop_rate(trivial_method(), config, tiny, args.steps), 1),
        "trivial_bare_steps_per_s": round(bare_rate(trivial_method(), config, tiny, args.steps), 1),
        "device_data_loop_steps_per_s": round(device_data_rate(config, args.steps), 1),
    }
    smoke = _config(args.efficientad_steps)
    rng = np.random.default_rng(0)
    image = lambda: rng.uniform(size=(1, smoke.image_size, smoke.image_size, 3)).astype(np.float32)  # noqa: E731
    batch = {"image": image(), "image_aug": image(), "penalty": image()}
    method = get_method(smoke)
    result["efficientad"] = {
        "config": "configs/efficientad.py:smoke (64², 16 teacher channels, batch 1)",
        "loop_steps_per_s": round(loop_rate(method, smoke, batch, args.efficientad_steps), 2),
        "bare_steps_per_s": round(bare_rate(method, smoke, batch, args.efficientad_steps), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
