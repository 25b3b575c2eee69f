"""The generic training loop shared by every method.

One category at a time: load the frozen teacher, split off validation images, compute the
method's pre-training statistics, run the jitted step with checkpoints every
``config.train.checkpoint_every`` steps, then calibrate the maps on the validation images and
save the final state. A rerun with the same workdir resumes from the latest checkpoint.
"""

import collections
import dataclasses
import os
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from kdad_jax.training import checkpoint, parallel, stacking
from kdad_jax.training import logs as logs_module
from kdad_jax.data import penalty as penalty_data
from kdad_jax.data import pipeline, resident
from kdad_jax.errors import TrainingDiverged, UserError
from kdad_jax.methods.base import Method


@flax.struct.dataclass
class TrainState:
    step: Any
    params: Any        # trainable
    opt_state: Any
    model_state: Any   # non-trainable collections of the trained networks (BatchNorm statistics)


def initial_state(method: Method, tx: optax.GradientTransformation, frozen, rng) -> TrainState:
    params, model_state = method.init(rng, frozen)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)


@dataclasses.dataclass
class Trained:
    """What evaluation needs from a trained category."""

    params: Any
    model_state: Any
    frozen: Any
    stats: dict
    teacher: str
    steps: int
    validation: Any = None  # [V, H, W, 3] uint8 validation images (None when loaded for predict)


def make_optimizer(config) -> optax.GradientTransformation:
    """``config.train.optimizer``: 'adam' (default) or 'sgd' (with ``momentum``), both with
    *coupled* L2 decay as PyTorch's ``weight_decay``; lr ×0.1 at ``lr_drop_fraction``."""
    kind = config.train.get("optimizer", "adam")
    schedule = learning_rate_schedule(config)
    if kind == "adam":
        update = optax.adam(schedule)
    elif kind == "sgd":
        update = optax.sgd(schedule, momentum=config.train.momentum or None)
    else:
        raise ValueError(f"config.train.optimizer must be 'adam' or 'sgd', not {kind!r}")
    return optax.chain(optax.add_decayed_weights(config.train.weight_decay), update)


def with_total_steps(config, num_train_images: int):
    """``config`` with ``train.steps`` set from ``train.epochs`` when the config counts epochs.

    An epoch is ``num_train_images / batch_size`` steps (the stream of shuffled images has no
    epoch boundaries, so the last partial batch of an epoch continues into the next)."""
    epochs = config.train.get("epochs")
    if not epochs:
        return config
    config = config.copy_and_resolve_references()
    config.train.steps = max(1, int(round(epochs * num_train_images / config.train.batch_size)))
    return config


def learning_rate_schedule(config) -> optax.Schedule:
    drop_at = int(config.train.lr_drop_fraction * config.train.steps)
    return optax.piecewise_constant_schedule(config.train.learning_rate, {drop_at: 0.1})


def make_train_step(method: Method, tx: optax.GradientTransformation, mesh,
                    augment: Optional[resident.Augment] = None, models=None):
    """Pure step: (state, frozen, stats, data, batch, rng) -> (state, metrics). Frozen stays an
    argument. With ``augment``, ``data`` is the device-resident training data
    (``resident.Resident``) and ``batch`` holds indices into it; else ``data`` is ``()``.

    Jitted with the mesh's shardings (``stacking.Models``): one model's batch split over
    ``data``, everything else replicated; K stacked models vmapped and split over ``model``."""

    def step(state, frozen, stats, data, batch, rng):
        if augment is not None:
            batch = resident.materialize(data, batch, augment)
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(method.loss, has_aux=True)
        (loss, (aux, model_state)), grads = grad_fn(state.params, state.model_state, frozen, stats,
                                                    batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), {"loss": loss, **aux}

    models = models or stacking.Models.single("", None, mesh)
    return models.jit_step(step, device_data=augment is not None)


def restore(mngr, method: Method, tx, frozen, rng, mesh):
    """Latest (state, stats) in ``mngr`` (state replicated on ``mesh``), or None."""
    abstract = jax.eval_shape(lambda: initial_state(method, tx, frozen, rng))
    return checkpoint.restore_latest(mngr, parallel.abstract_replicated(abstract, mesh))


def is_calibrated(stats) -> bool:
    return not any(np.isnan(np.asarray(v)).any() for v in stats.values())


def checkpoint_dir(workdir: str, category: str) -> str:
    return os.path.join(workdir, "checkpoints", category)


def _fit(config, workdir, category, method, tx, state, frozen, stats, train_images, mngr, mesh):
    batches, device_data = _training_input(config, [train_images], int(state.step))
    return run_steps(config, workdir, category, method, tx, state, frozen, stats, batches[0],
                     mngr, mesh, device_data=device_data)


def _training_input(config, train_images: list, start_step: int, stacked: bool = False):
    """(one batch iterator per image set, device data or None) for steps ``start_step ..``.
    ``stacked``: the sets feed stacked models (``[K, N, H, W, 3]`` on the device, a group of
    one too), else one set feeds one model (``[N, H, W, 3]``).

    Training images go to the device when all of them fit ``config.data.device_data_mb``
    (stacked, padded to the largest set: each set's indices stay inside its own images); the
    penalty images (EfficientAD) too when they fit what is left, else the host sends them."""
    penalty = None  # pretraining images only for methods that penalize them (EfficientAD)
    if "penalty" in config:
        penalty = penalty_data.penalty_source(config.penalty.root, config.image_size)
    budget = int(config.data.get("device_data_mb", 0) * 2 ** 20)
    largest = max(len(images) for images in train_images)
    needed = largest * train_images[0][0].nbytes * len(train_images)
    if not 0 < needed <= budget:
        return [pipeline.training_batches(images, penalty, config, start_step)
                for images in train_images], None
    penalty_images = resident.penalty_array(penalty, budget - needed)
    padded = [np.concatenate([images, np.zeros((largest - len(images), *images.shape[1:]), np.uint8)])
              for images in train_images]
    data = resident.Resident(np.stack(padded) if stacked else padded[0], penalty_images, jax.random.key(config.seed + 2))
    augment = resident.Augment(config.train.get("color_jitter"), penalty is not None,
                               config.penalty.grayscale_prob if penalty is not None else 0.0)
    on_device = 0 if penalty_images is None else len(penalty_images)
    host_penalty = penalty if penalty_images is None else None
    batches = [pipeline.index_batches(len(images), on_device, host_penalty, config, start_step)
               for images in train_images]
    return batches, (data, augment)


class _DurationNote:
    """After a few steps, one line when the rest of the run would take long on a CPU: the
    projected time and the config's CPU preset (``config.cpu_preset``), e.g. for a user who types
    the paper preset (70 000 steps at 256²) on a laptop. Steps after the first (compilation) are
    timed, with the device synchronized (``sync``) where the clock is read."""

    FIRST, TIMED = 1, 4          # skip the compiling step, then time this many
    THRESHOLD_S = 3600.0         # say nothing about runs shorter than an hour

    def __init__(self, config, name: str, first_step: int):
        self.config, self.name = config, name
        self.start_step, self.start_time = first_step + self.FIRST, None
        self.done = jax.default_backend() != "cpu" or config.train.steps - first_step <= self.FIRST + self.TIMED

    def after(self, step: int, sync=lambda: None):
        """Called after each step is dispatched; returns the line once, when there is one to say.
        ``sync()`` waits for the device (called only where the clock is read)."""
        if self.done:
            return None
        if step == self.start_step:
            sync()
            self.start_time = time.time()
        if step < self.start_step + self.TIMED or self.start_time is None:
            return None
        sync()
        self.done = True
        per_step = (time.time() - self.start_time) / self.TIMED
        remaining = per_step * (self.config.train.steps - step)
        if remaining < self.THRESHOLD_S:
            return None
        hint = self.config.get("cpu_preset", "")
        advice = f"; on a CPU use --config={hint} instead" if hint else ""
        return (f"note: {self.name}: {self.config.train.steps - step} more steps at {per_step:.2f} "
                f"s/step take about {_duration(remaining)} on this CPU{advice}")


def _duration(seconds: float) -> str:
    hours = seconds / 3600.0
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def run_steps(config, workdir, name, method, tx, state, frozen, stats, batches, mngr, mesh,
              device_data=None, models=None):
    """The loop every training job shares: jitted steps over ``batches`` (this process's slices,
    starting at ``state.step``), a progress bar with loss and ETA, ``W/metrics.jsonl`` every
    ``config.train.log_every`` steps, checkpoints every ``config.train.checkpoint_every`` and on
    a preemption notice (SIGTERM: save, then raise ``parallel.Preempted``). The loss is checked
    at every logged step and the weights before every save and at the end: NaN or Inf raises
    ``TrainingDiverged`` and nothing is saved after it (host syncs only at those steps).

    ``device_data``: (``resident.Resident`` of host arrays, ``resident.Augment``) when
    ``batches`` are indices into training images kept on the device (copied there once here).
    ``models``: K models stacked (``stacking.Models``; ``state``, ``stats`` and batches with a
    leading [K] axis); default one model, ``name``, saved by ``mngr``.

    Returns the state on the mesh."""
    models = models or stacking.Models.single(name, mngr, mesh)
    data, augment = device_data if device_data is not None else ((), None)
    step_fn = make_train_step(method, tx, mesh, augment, models)
    schedule_lr = learning_rate_schedule(config)
    state, frozen_on_mesh, stats_on_mesh, data = models.place(state, frozen, stats, data)
    rng = parallel.replicate(jax.random.key(config.seed + 1), models.mesh)
    total = config.train.steps
    writer = parallel.is_writer()
    logs = logs_module.Logs(workdir) if writer else None
    start = time.time()
    first_step = models.first_step(state)  # the one read of the step counter from the device
    bar = tqdm(total=total, initial=first_step, desc=models.label, unit="step", dynamic_ncols=True,
               disable=not writer)
    last_checked = first_step
    duration_note = _DurationNote(config, models.label, first_step)
    in_flight = collections.deque()  # the newest steps' losses, to bound how far the host runs ahead

    def check_weights(params, step):
        for finite, (model, model_mngr) in zip(models.finite(params), zip(models.names, models.mngrs)):
            if not finite:
                raise _diverged("the weights became NaN or Inf", step, last_checked, model, model_mngr)

    try:
        with parallel.Preemption() as preemption:
            for step, local_batch in enumerate(batches, start=first_step + 1):
                batch = models.shard_batch(local_batch)
                state, metrics = step_fn(state, frozen_on_mesh, stats_on_mesh, data, batch, rng)
                _bound_run_ahead(in_flight, metrics["loss"])
                preempted = preemption.reached(step)
                saves = step < total and (step % config.train.checkpoint_every == 0 or preempted)
                logs_now = step % config.train.log_every == 0 or step == total
                if logs_now or saves:
                    metrics = parallel.to_host(metrics)
                    for model, model_mngr, values in models.per_model(metrics):
                        if not np.isfinite(values["loss"]):
                            raise _diverged(f"the loss became {values['loss']}", step, last_checked,
                                            model, model_mngr)
                        if writer and logs_now:
                            logs.train(model, step, values, float(schedule_lr(step - 1)),
                                       time.time() - start)
                    last_checked = step
                    bar.set_postfix(loss=f"{np.mean(metrics['loss']):.4f}")
                bar.update(1)
                note = duration_note.after(step, lambda: jax.block_until_ready(metrics["loss"]))
                if note and writer:
                    bar.write(note)
                if saves:
                    check_weights(state.params, step)
                    models.save(state, stats)
                if preempted and step < total:
                    raise parallel.Preempted(step, models.directory)
        check_weights(state.params, total)
    finally:
        bar.close()
        if logs:
            logs.close()
    return state


MAX_STEPS_IN_FLIGHT = 2


def _bound_run_ahead(in_flight: collections.deque, loss) -> None:
    """Let the host dispatch up to ``MAX_STEPS_IN_FLIGHT`` steps ahead of the device (so it
    prepares and copies the next batches while the device computes), never more: each step
    holds its batch in device memory until it runs."""
    in_flight.append(loss)
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:
        in_flight.popleft().block_until_ready()


def _diverged(what: str, step: int, last_checked: int, name: str, mngr) -> TrainingDiverged:
    """One line: what became non-finite where, and which checkpoint is kept."""
    kept = mngr.latest_step()
    where = f"at step {step}" if step - last_checked <= 1 else f"between steps {last_checked} and {step}"
    saved = (f"the last good checkpoint (step {kept}) is kept in {mngr.directory}; rerun to resume "
             f"from it" if kept is not None else "no checkpoint had been saved yet")
    return TrainingDiverged(f"{name}: {what} {where}; training stopped, nothing saved after it; {saved} "
                            f"(lower config.train.learning_rate or check the input images)")


def fit_and_validation(config, train_images: np.ndarray, validation_images=None):
    """(images to fit [N, H, W, 3], validation images [V, H, W, 3]): the dataset's own validation
    split when it has one (LOCO), else ``config.data.validation_fraction`` held out of train."""
    if validation_images is not None:
        return train_images, validation_images
    if len(train_images) < 2:
        raise UserError(f"{len(train_images)} readable training image(s): at least 2 are needed, "
                        f"one of them held out for validation")
    fit_idx, val_idx = pipeline.split_train_validation(
        len(train_images), config.data.validation_fraction, config.seed)
    return train_images[fit_idx], train_images[val_idx]


def _open_category(config, workdir: str, category: str, method: Method):
    """What training and loading a category both start from (one restore path): (mesh, frozen
    teacher, its description, the init RNG, the category's checkpoint manager)."""
    rng_teacher, rng_init = jax.random.split(jax.random.key(config.seed))
    mesh = parallel.make_mesh()
    frozen, teacher = method.load_frozen(rng_teacher)
    mngr = checkpoint.manager(checkpoint_dir(workdir, category), config.train.checkpoint_every)
    return mesh, frozen, teacher, rng_init, mngr


@dataclasses.dataclass
class _Category:
    """A category set up for training: its config (steps resolved), checkpoint manager, teacher,
    optimizer, start state and stats (restored or fresh), and its image split."""

    name: str
    config: Any
    mngr: Any
    mesh: Any
    frozen: Any
    teacher: str
    tx: Any
    state: Any
    stats: Any
    fit_images: np.ndarray
    validation_images: np.ndarray

    @property
    def step(self) -> int:
        return int(self.state.step)


def _prepare(config, workdir, category, method, train_images, resume_only, validation_images,
             batch_mesh=None) -> _Category:
    """``batch_mesh``: the mesh whose ``data`` axis splits the batch (default: all devices; one
    device per model when categories train as a group)."""
    mesh, frozen, teacher, rng_init, mngr = _open_category(config, workdir, category, method)
    config = parallel.resolve_batch_size(config, batch_mesh or mesh)
    if teacher == "random-init":
        logging.warning("%s: no teacher checkpoint given (config.teacher.checkpoint): using a FROZEN "
                        "RANDOMLY-INITIALIZED teacher; results will be weaker than with a pretrained one",
                        category)
    fit_images, validation_images = fit_and_validation(config, train_images, validation_images)
    config = with_total_steps(config, len(fit_images))
    tx = make_optimizer(config)
    restored = restore(mngr, method, tx, frozen, rng_init, mesh)
    if restored is None:
        if resume_only:
            raise UserError(f"{mngr.directory}: no checkpoint to evaluate; train first")
        state = initial_state(method, tx, frozen, rng_init)
        stats = method.prepare_stats(frozen, pipeline.image_batches(fit_images, config.eval.batch_size))
    else:
        state, stats = restored
        if parallel.is_writer():
            print(f"{category}: resuming from step {int(state.step)} in {mngr.directory}", flush=True)
    return _Category(category, config, mngr, mesh, frozen, teacher, tx, state, stats, fit_images,
                     validation_images)


def _finish(prepared: _Category, method: Method, state, trained: bool, resume_only: bool) -> Trained:
    """Calibrate the maps on the validation images and save the final state (after training or
    on eval); the category's ``Trained``."""
    stats, mngr, config = prepared.stats, prepared.mngr, prepared.config
    # Evaluation and calibration run on each process's own devices with host copies.
    params, model_state = parallel.to_host((state.params, state.model_state))
    # Calibration belongs to the final params: redo it after any training (a checkpoint may carry
    # quantiles of an earlier, shorter run) and on eval. Held-out *training* images only.
    if trained or resume_only or not is_calibrated(stats):
        stats = method.fit_stats(params, model_state, prepared.frozen, stats, pipeline.image_batches(
            prepared.validation_images, config.eval.batch_size))
        if not resume_only:
            checkpoint.save_state(mngr, state, stats, replace=True)
    mngr.close()
    return Trained(params, model_state, prepared.frozen, stats, prepared.teacher, int(state.step),
                   prepared.validation_images)


def train_category(config, workdir: str, category: str, method: Method, train_images: np.ndarray,
                   resume_only: bool = False, validation_images=None) -> Trained:
    """Train (or resume, or just load when finished) one category. train_images: [N, H, W, 3] uint8.

    ``resume_only``: do not train; load the latest checkpoint (for --mode=eval).
    ``validation_images``: the dataset's own validation split, if any (see fit_and_validation).
    """
    prepared = _prepare(config, workdir, category, method, train_images, resume_only,
                        validation_images)
    state = prepared.state
    trains = prepared.step < prepared.config.train.steps and not resume_only
    if trains:
        state = _fit(prepared.config, workdir, category, method, prepared.tx, state,
                     prepared.frozen, prepared.stats, prepared.fit_images, prepared.mngr,
                     prepared.mesh)
    return _finish(prepared, method, state, trains, resume_only)


def train_categories(config, workdir: str, names: list, method: Method, train_images: list,
                     validation_images: list) -> dict:
    """Train several categories as one program (``stacking``): {name: Trained}, each equal (to
    float rounding) to training it alone with ``train_category``.

    The categories must train the same number of steps from the same step (fresh, or resumed
    from checkpoints of one interrupted group); otherwise each trains alone, with a note."""
    mesh = stacking.group_mesh(len(names))  # data axis 1: each model keeps its whole batch
    prepared = [_prepare(config, workdir, name, method, images, False, validation, mesh)
                for name, images, validation in zip(names, train_images, validation_images)]
    starts = {(p.step, p.config.train.steps) for p in prepared}
    if len(starts) > 1 or jax.process_count() > 1:
        if parallel.is_writer():
            why = ("several processes" if jax.process_count() > 1 else
                   "their steps differ: " + ", ".join(f"{p.name} {p.step}/{p.config.train.steps}"
                                                      for p in prepared))
            print(f"note: {', '.join(names)} train one at a time ({why})", flush=True)
        for p in prepared:
            p.mngr.close()
        return {name: train_category(config, workdir, name, method, images,
                                     validation_images=validation)
                for name, images, validation in zip(names, train_images, validation_images)}
    first = prepared[0]
    states, trains = [p.state for p in prepared], first.step < first.config.train.steps
    if trains:
        models = stacking.Models(names, [p.mngr for p in prepared], mesh, stacked=True)
        batches, device_data = _training_input(first.config, [p.fit_images for p in prepared],
                                               first.step, stacked=True)
        stats = stacking.stack([p.stats for p in prepared])
        state = run_steps(first.config, workdir, models.label, method, first.tx,
                          stacking.stack(states), first.frozen, stats,
                          (stacking.stack(group) for group in zip(*batches)), None, mesh,
                          device_data=device_data, models=models)
        host_state = jax.device_get(state)
        states = [stacking.take(host_state, i) for i in range(len(prepared))]
    return {p.name: _finish(p, method, state_i, trains, False) for p, state_i in zip(prepared, states)}


def load_trained(config, workdir: str, category: str, method: Method) -> Trained:
    """The latest calibrated checkpoint of ``category``, without any training data (predict)."""
    mesh, frozen, teacher, rng_init, mngr = _open_category(config, workdir, category, method)
    restored = restore(mngr, method, make_optimizer(config), frozen, rng_init, mesh)
    mngr.close()
    if restored is None:
        raise UserError(f"{mngr.directory}: no checkpoint; train first")
    state, stats = restored
    if not is_calibrated(stats):
        raise UserError(f"{mngr.directory}: the checkpoint's maps are not calibrated; finish "
                        f"training or run --mode=eval first")
    params, model_state = parallel.to_host((state.params, state.model_state))
    return Trained(params, model_state, frozen, stats, teacher, int(state.step))
