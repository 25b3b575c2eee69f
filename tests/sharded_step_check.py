"""One train step on a mesh of all devices vs the same step on one device (run in a subprocess).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_step_check.py \
        configs/efficientad.py:smoke configs/stfpm.py:smoke@128+float64

``@N`` sets the image size; ``+float64`` adds the float64 steps below. STFPM runs with a random-init ResNet-18 teacher (no weights needed)
at its paper size, 128²: at 64² the *single-device* float32 step of that random network is
itself 0.7 % away from a float64 computation of the same step (measured; the 8-device result was
the closer one), so equality there would test rounding, not sharding.

With ``+float64`` both steps also run in float64 (``float64_sharded_vs_single``): there rounding
cannot hide a difference, so they must agree to float64 rounding whatever the float32
conditioning. That is what an ill-conditioned float32 step (STFPM's random ResNet-18) needs; a
well-conditioned one (EfficientAD: 1e-5 apart in float32, where a missing all-reduce is O(1))
does not, and XLA's CPU float64 convolutions take minutes for its networks.

The batch comes from the real training pipeline (global batch = number of devices). Prints one
JSON line per config: the worst norm-wise relative difference over every leaf of the new state
(params, optimizer moments = the gradient, BatchNorm statistics) and the loss on both meshes.
"""

import json
import os
import sys

import jax
import numpy as np

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

from kdad_jax import config_files  # noqa: E402
from kdad_jax.training import parallel, train
from kdad_jax.data import penalty as penalty_data  # noqa: E402
from kdad_jax.data import pipeline  # noqa: E402
from kdad_jax.methods import get_method  # noqa: E402


def load_config(spec: str):
    spec = spec.partition("+")[0]
    spec, _, size = spec.partition("@")
    path, _, arg = spec.partition(":")
    config = config_files.load(os.path.join(PROJECT, path)).get_config(arg)
    config.train.batch_size = jax.device_count()
    config.train.steps = 1
    if size:
        config.image_size = int(size)
    if "fallback" in config.teacher:
        config.teacher.fallback = ""  # random-init ResNet-18
    return config


def one_step(config, method, tx, frozen, stats, state, batch, mesh):
    step = train.make_train_step(method, tx, mesh)
    on_mesh = parallel.replicate((state, frozen, stats, jax.random.key(5)), mesh)
    global_batch = parallel.shard_batch(batch, mesh)
    shards = {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(global_batch)}
    new_state, metrics = step(*on_mesh[:3], (), global_batch, on_mesh[3])
    return parallel.to_host(new_state), float(parallel.to_host(metrics)["loss"]), shards


def _float64(tree):
    return jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype == np.float32 else a, tree)


def differences(a, b, tiny: float = 1e-6):
    """(worst ‖a − b‖ / ‖b‖ over the leaves, worst max |a − b| over leaves with ‖b‖ < ``tiny``).

    Leaves that are zero up to rounding (a BatchNorm mean after a normalized layer, ~1e-9) have
    no meaningful relative error; they are held to an absolute bound instead."""
    relative, absolute = 0.0, 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        norm = np.linalg.norm(y)
        if norm < tiny:
            absolute = max(absolute, float(np.abs(x - y).max()))
        else:
            relative = max(relative, float(np.linalg.norm(x - y) / norm))
    return relative, absolute


def check(spec: str) -> dict:
    config = load_config(spec)
    method = get_method(config)
    rng_teacher, rng_init = jax.random.split(jax.random.key(config.seed))
    frozen, _ = method.load_frozen(rng_teacher)
    tx = train.make_optimizer(config)
    state = parallel.to_host(train.initial_state(method, tx, frozen, rng_init))
    images = np.random.default_rng(0).integers(0, 256, (12, config.image_size, config.image_size, 3),
                                                dtype=np.uint8)
    penalty = penalty_data.skimage_photos(config.image_size) if "penalty" in config else None
    batch = next(pipeline.training_batches(images, penalty, config, 0))
    stats = parallel.to_host(method.prepare_stats(frozen, [images.astype(np.float32) / 255.0]))
    single, loss_single, _ = one_step(config, method, tx, frozen, stats, state, batch,
                                      parallel.make_mesh(jax.devices()[:1]))
    sharded, loss_sharded, shards = one_step(config, method, tx, frozen, stats, state, batch,
                                             parallel.make_mesh())
    relative, absolute = differences(sharded, single)
    moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(
        jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(state.params)))
    row = {"config": spec, "devices": jax.device_count(), "batch_devices": sorted(shards),
           "loss_single": loss_single, "loss_sharded": loss_sharded,
           "worst_relative": relative, "worst_absolute_of_tiny_leaves": absolute,
           "largest_param_change": moved}
    if not spec.endswith("+float64"):
        return row
    # The exact step (float64 throughout) tells rounding from a sharding error: where the float32
    # step itself is ill-conditioned, the 1- and 8-device results both drift from it.
    exact, _, _ = one_step(config, method, tx, _float64(frozen), _float64(stats), _float64(state),
                           _float64(batch), parallel.make_mesh(jax.devices()[:1]))
    # The same two steps in float64: equal up to float64 rounding when the sharded program is the
    # same mathematics (a missing all-reduce or a per-device batch statistic is off by O(1)).
    exact_sharded, _, _ = one_step(config, method, tx, _float64(frozen), _float64(stats), _float64(state),
                                   _float64(batch), parallel.make_mesh())
    return {**row, "sharded_vs_float64": differences(sharded, exact)[0],
            "single_vs_float64": differences(single, exact)[0],
            "float64_sharded_vs_single": differences(exact_sharded, exact)[0]}


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # for the float64 reference step only
    for spec in sys.argv[1:]:
        print(json.dumps(check(spec)), flush=True)
