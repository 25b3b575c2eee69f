"""EfficientAD on whatever device JAX finds (GPU, TPU or CPU): JSON on stdout.

    python benchmarks/accelerator.py                      # defaults sized for the device found
    python benchmarks/accelerator.py --sizes 256,512 --group 15 --full-steps 70000   # on a GPU

- ``inference``: per model (S, M), side (256², 512²) and compute dtype (float32, bfloat16):
  latency at batch 1 and throughput at batch 16 (``--throughput-batch``), compute only (inputs
  and weights already on the device, the map left there) and with copies (a host float32 batch
  in, the maps back in host memory).
- ``train``: one EfficientAD step at batch 1 (the paper's recipe) at 256² (``--train-size``): the jitted step with
  the training images on the device (indices in, gather and augmentation in the step), per
  model and dtype; ``projected_70000_steps_min`` from it.
- ``group``: the same step for K models stacked (``--group``, one per category;
  ``config.train.parallel_categories``), split over the devices found; ``projected_15_categories_min``
  = ceil(15 / K) groups × 70 000 steps.
- ``full_run`` (``--full-steps N``): N steps of that group through the real training loop
  (``train.run_steps``: progress bar, logging), measured.

Step and call times are medians over ``--repeats`` timed runs of ``--steps`` back-to-back calls
with one device sync at the end (the loop's own way of running: the host never waits).
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from kdad_jax.training import checkpoint, parallel, stacking, train  # noqa: E402
from kdad_jax.kernels import compilation  # noqa: E402
from kdad_jax.data import pipeline, resident  # noqa: E402
from kdad_jax.methods import get_method  # noqa: E402

PAPER_STEPS = 70_000
MVTEC_CATEGORIES = 15


def _per_call(fn, calls: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` (which returns device arrays) over ``repeats`` runs of
    ``calls`` back-to-back calls, synchronized once per run."""
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times))


def _method(model: str, side: int, dtype: str, batch: int = 1):
    config = common.model_config(model, batch, side)
    config.train.compute_dtype = dtype
    return config, get_method(config)


def inference_row(model: str, side: int, dtype: str, batch: int, calls: int, repeats: int) -> dict:
    config, method = _method(model, side, dtype, batch)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    rng = np.random.default_rng(0)
    host_images = rng.uniform(size=(batch, side, side, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [host_images])
    stats = {**stats, "q_st": np.array([0.0, 1.0], np.float32), "q_ae": np.array([0.0, 1.0], np.float32)}
    args = jax.device_put((params, model_state, frozen, stats))
    device_images = jax.device_put(host_images)
    anomaly_map = compilation.jit(method.anomaly_map)
    compute = _per_call(lambda: anomaly_map(*args, device_images), calls, repeats)
    copies = _per_call(lambda: np.asarray(anomaly_map(*args, host_images)), calls, repeats)
    row = {"model": model, "image_size": side, "dtype": dtype, "batch": batch}
    if batch == 1:
        row.update(latency_ms=round(compute * 1e3, 3), latency_with_copies_ms=round(copies * 1e3, 3))
    else:
        row.update(images_per_s=round(batch / compute, 1),
                   images_per_s_with_copies=round(batch / copies, 1))
    return row


def _group_setup(model: str, dtype: str, count: int, side: int = 256, images: int = 64):
    """K = ``count`` EfficientAD models at batch 1 on the training path: stacked state and stats,
    training and penalty images on the device, one index batch per step."""
    config, method = _method(model, side, dtype)
    tx = train.make_optimizer(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (images, side, side, 3), np.uint8)
    stats = method.prepare_stats(frozen, [train_images[:4].astype(np.float32) / 255.0])
    state = train.initial_state(method, tx, frozen, jax.random.key(1))
    stacked = count > 1
    mesh = stacking.group_mesh(count) if stacked else parallel.make_mesh()
    names = [f"model{i}" for i in range(count)]
    models = stacking.Models(names, [None] * count, mesh, stacked) if stacked else \
        stacking.Models.single(names[0], None, mesh)
    if stacked:
        state, stats = stacking.stack([state] * count), stacking.stack([stats] * count)
        train_images = np.stack([train_images] * count)
    data = resident.Resident(train_images, rng.integers(0, 256, (images, side, side, 3), np.uint8),
                             jax.random.key(3))
    augment = resident.Augment(config.train.color_jitter, True, config.penalty.grayscale_prob)
    return config, method, tx, models, state, frozen, stats, data, augment


def _index_batches(config, images: int, count: int):
    config.train.steps = 10 ** 9
    streams = [pipeline.index_batches(images, images, None, config, 0) for _ in range(count)]
    for group in zip(*streams):
        yield stacking.stack(group) if count > 1 else group[0]


def train_step_s(model: str, dtype: str, count: int, steps: int, repeats: int, side: int) -> float:
    config, method, tx, models, state, frozen, stats, data, augment = _group_setup(
        model, dtype, count, side)
    step_fn = train.make_train_step(method, tx, models.mesh, augment, models)
    state, frozen, stats, data = models.place(state, frozen, stats, data)
    batch = models.shard_batch(next(_index_batches(config, len(data.penalty), count)))
    key = parallel.replicate(jax.random.key(2), models.mesh)
    holder = [state]

    def step():
        holder[0], metrics = step_fn(holder[0], frozen, stats, data, batch, key)
        return metrics["loss"]

    return _per_call(step, steps, repeats)


def full_run(model: str, dtype: str, count: int, steps: int, side: int) -> dict:
    """``steps`` steps of ``count`` stacked models through ``train.run_steps``, timed."""
    config, method, tx, models, state, frozen, stats, data, augment = _group_setup(
        model, dtype, count, side)
    config.train.checkpoint_every, config.train.log_every = 10 ** 9, 1000
    with tempfile.TemporaryDirectory() as workdir:
        models.mngrs = [checkpoint.manager(os.path.join(workdir, n), 10 ** 9) for n in models.names]
        batches = _index_batches(config, len(data.penalty), count)
        config.train.steps = steps
        start = time.perf_counter()
        final = train.run_steps(config, workdir, models.label, method, tx, state, frozen, stats,
                                (next(batches) for _ in range(steps)), models.mngrs[0],
                                models.mesh, device_data=(data, augment), models=models)
        jax.block_until_ready(final)
        seconds = time.perf_counter() - start
    return {"model": model, "dtype": dtype, "models": count, "steps": steps,
            "measured_min": round(seconds / 60, 2)}


def main():
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="s,m")
    parser.add_argument("--sizes", default="256" if on_cpu else "256,512")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--throughput-batch", type=int, default=16)
    parser.add_argument("--group", type=int, default=2 if on_cpu else MVTEC_CATEGORIES,
                        help="models trained at once for the 'group' figures")
    parser.add_argument("--steps", type=int, default=3 if on_cpu else 50,
                        help="back-to-back calls per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=256, help="image side of the train figures")
    parser.add_argument("--full-steps", type=int, default=0,
                        help="also run this many steps of the group through the training loop")
    args = parser.parse_args()
    models, dtypes = args.models.split(","), args.dtypes.split(",")
    result = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
              "backend": jax.default_backend(), "inference": [], "train": [], "group": []}
    for model in models:
        for side in (int(s) for s in args.sizes.split(",")):
            for dtype in dtypes:
                for batch in (1, args.throughput_batch):
                    result["inference"].append(
                        inference_row(model, side, dtype, batch, args.steps, args.repeats))
                    print(json.dumps(result["inference"][-1]), file=sys.stderr, flush=True)
    for model in models:
        for dtype in dtypes:
            seconds = train_step_s(model, dtype, 1, args.steps, args.repeats, args.train_size)
            result["train"].append({"model": model, "dtype": dtype, "image_size": args.train_size,
                                    "batch": 1,
                                    "step_ms": round(seconds * 1e3, 2),
                                    "projected_70000_steps_min": round(seconds * PAPER_STEPS / 60, 1)})
            print(json.dumps(result["train"][-1]), file=sys.stderr, flush=True)
    for dtype in dtypes:
        seconds = train_step_s("s", dtype, args.group, args.steps, args.repeats, args.train_size)
        groups = math.ceil(MVTEC_CATEGORIES / args.group)
        result["group"].append({
            "model": "s", "dtype": dtype, "models": args.group, "image_size": args.train_size,
            "batch": 1,
            "step_ms": round(seconds * 1e3, 2),
            "projected_15_categories_min": round(groups * seconds * PAPER_STEPS / 60, 1)})
        print(json.dumps(result["group"][-1]), file=sys.stderr, flush=True)
    if args.full_steps:
        result["full_run"] = full_run("s", dtypes[0], args.group, args.full_steps, args.train_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
