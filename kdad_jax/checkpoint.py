"""Checkpoints: Orbax manager for the training state; single-file params for teachers.

Restore order (as MaxText documents it): the run's own latest checkpoint in
``<workdir>/checkpoints/<category>``, else a fresh start. Teacher weights are never part of the
training checkpoint: they are reloaded from ``config.teacher.checkpoint`` at start-up.
"""

import os
from typing import Any, Optional, Tuple

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from kdad_jax.errors import UserError

_NO_STATS = "no_stats"  # stands in for a method's empty stats dict in a checkpoint


def manager(directory: str, save_every: int, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=max_to_keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_state(mngr: ocp.CheckpointManager, state: Any, stats: Any, replace: bool = False) -> None:
    """Save the train state and the method's stats at ``state.step`` (synchronously).

    ``replace``: overwrite an existing checkpoint of the same step (the calibrated final state).
    """
    step = int(state.step)
    if replace and step in mngr.all_steps():
        mngr.delete(step)
    # Stats are host values (identical on every process); Orbax refuses an empty item.
    stats = {k: np.asarray(v) for k, v in stats.items()} or {_NO_STATS: np.zeros((), np.int32)}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), stats=ocp.args.StandardSave(stats))
    mngr.save(step, args=args, force=replace)
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any) -> Optional[Tuple[Any, dict]]:
    """(state with the structure of ``abstract_state``, stats dict) at the latest step, or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), stats=ocp.args.StandardRestore()))
    stats = {k: jax.numpy.asarray(v) for k, v in restored.stats.items() if k != _NO_STATS}
    return restored.state, stats


def save_params(path: str, params: Any) -> None:
    """Write a params pytree to one msgpack file (teacher weights, converted checkpoints)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.device_get(params)))


def load_params(path: str, abstract: Any) -> Any:
    """Params from a msgpack file or an Orbax directory, checked against ``abstract`` shapes."""
    if not os.path.exists(path):
        raise UserError(f"{path}: teacher checkpoint not found")
    if os.path.isdir(path):
        restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    else:
        try:
            with open(path, "rb") as f:
                restored = flax.serialization.msgpack_restore(f.read())
        except Exception as e:  # msgpack raises several unrelated types on corrupt input
            raise UserError(f"{path}: not a msgpack params file ({type(e).__name__})") from None
    expected = jax.tree_util.tree_map(lambda a: a.shape, abstract)
    got = jax.tree_util.tree_map(lambda a: np.shape(a), restored)
    if expected != got:
        raise UserError(f"{path}: parameter shapes do not match the configured teacher "
                        f"(check config.model.size / out_channels)")
    return jax.tree_util.tree_map(lambda a, b: np.asarray(a, b.dtype), restored, abstract)
