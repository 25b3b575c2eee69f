"""One params pytree in one file: teacher weights, converted checkpoints, distilled teachers.

A msgpack file (flax's serialization: data only, never code) written atomically, or an Orbax
folder; read back checked against the shapes the configured network expects.
"""

import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from kdad_jax import files
from kdad_jax.errors import UserError


def save_params(path: str, params: Any) -> None:
    """Write a params pytree to one msgpack file (teacher weights, converted checkpoints)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_bytes(path, flax.serialization.msgpack_serialize(jax.device_get(params)))


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
