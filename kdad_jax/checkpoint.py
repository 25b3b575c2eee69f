"""Checkpoints: Orbax manager for the training state; single-file params for teachers.

Restore order (as MaxText documents it): the run's own latest checkpoint in
``<workdir>/checkpoints/<category>``, else a fresh start. Teacher weights are never part of the
training checkpoint: they are reloaded from ``config.teacher.checkpoint`` at start-up.
"""

import os
from typing import Any, Optional

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from kdad_jax.errors import UserError


def manager(directory: str, save_every: int, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=max_to_keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, force: bool = False) -> bool:
    saved = mngr.save(step, args=ocp.args.StandardSave(state), force=force)
    mngr.wait_until_finished()
    return saved


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any) -> Optional[Any]:
    """Latest state (with the structure of ``abstract_state``) or None when there is none."""
    step = mngr.latest_step()
    if step is None:
        return None
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


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
