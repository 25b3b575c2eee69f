"""What one training loop trains: one model, or K models stacked on a leading axis.

EfficientAD's recipe is batch 1, which cannot be split over devices; a GPU is filled instead by
training K models at once (K categories, or K seeds): every leaf of the train state, the method's
stats and the batch gets a leading ``[K]`` axis, the step is ``jax.vmap``-ped over it, and that
axis is split over the mesh's ``model`` axis (K / devices models per device). Each model still
sees the paper's batch of 1, its own images and its own optimizer; the frozen teacher and the
penalty images are shared (one copy per device). Checkpoints stay per category, so a category
trained in a group loads, evaluates, exports and resumes like one trained alone.

``Models`` hides the difference from ``train.run_steps``: placement on the mesh, the jitted
step, per-model metrics and saves.
"""

from typing import Any, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kdad_jax.training import checkpoint, parallel
from kdad_jax.kernels import compilation
from kdad_jax.data import resident


def take(tree: Any, index: int) -> Any:
    """Model ``index`` of a stacked pytree (host or device arrays)."""
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def stack(trees: Sequence[Any]) -> Any:
    """K pytrees of one structure -> one pytree of ``[K, ...]`` numpy arrays."""
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def group_mesh(count: int) -> Mesh:
    """A mesh whose ``model`` axis holds as many devices as divide ``count`` models evenly."""
    devices = jax.devices()
    used = max(d for d in range(1, min(count, len(devices)) + 1) if count % d == 0)
    return parallel.make_mesh(devices[:used], model_parallelism=used)


class Models:
    """One model (``stacked=False``: the loop every job has used) or ``len(names)`` stacked."""

    def __init__(self, names: List[str], mngrs: list, mesh: Mesh, stacked: bool):
        self.names, self.mngrs, self.mesh, self.stacked = names, mngrs, mesh, stacked
        self.replicated = parallel.replicated(mesh)
        self.split = NamedSharding(mesh, PartitionSpec(parallel.MODEL)) if stacked else None
        all_finite = lambda tree: jnp.all(jnp.stack(  # noqa: E731
            [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)]))
        self._all_finite = jax.jit(jax.vmap(all_finite) if stacked else all_finite)

    @classmethod
    def single(cls, name: str, mngr, mesh: Mesh) -> "Models":
        return cls([name], [mngr], mesh, stacked=False)

    @property
    def label(self) -> str:
        return self.names[0] if not self.stacked else f"{len(self.names)} models"

    @property
    def directory(self) -> str:
        return self.mngrs[0].directory if not self.stacked else \
            ", ".join(m.directory for m in self.mngrs)

    def place(self, state, frozen, stats, data):
        """Host values -> the mesh: per-model leaves split over ``model``, shared ones replicated."""
        if not self.stacked:
            return parallel.replicate((state, frozen, stats, data), self.mesh)
        put = lambda tree: jax.device_put(tree, self.split)  # noqa: E731
        if isinstance(data, resident.Resident):
            data = resident.Resident(put(data.images), parallel.replicate(data.penalty, self.mesh),
                                     parallel.replicate(data.key, self.mesh))
        return put(state), parallel.replicate(frozen, self.mesh), put(stats), data

    def shard_batch(self, local_batch):
        if not self.stacked:
            return parallel.shard_batch(local_batch, self.mesh)
        return jax.device_put(local_batch, self.split)

    def first_step(self, state) -> int:
        steps = np.asarray(jax.device_get(state.step)).ravel()
        return int(steps[0])

    def jit_step(self, step, device_data: bool):
        """``step(state, frozen, stats, data, batch, rng)`` for one model -> the jitted step
        (``device_data``: ``data`` is a ``resident.Resident``, else ``()``). Compiled, on the
        first call or ``lower``, with the options ``compilation.train_compiler_options`` picks for
        the state's parameters."""
        if not self.stacked:
            batch = parallel.batch_sharding(self.mesh)
            return _JitForParams(lambda options: jax.jit(
                step, in_shardings=(self.replicated,) * 4 + (batch, self.replicated),
                out_shardings=(self.replicated, self.replicated), donate_argnums=(0,),
                compiler_options=options))
        data_axes = resident.Resident(0, None, None) if device_data else None
        stepped = jax.vmap(step, in_axes=(0, None, 0, data_axes, 0, None))
        return _JitForParams(lambda options: jax.jit(stepped, donate_argnums=(0,),
                                                     compiler_options=options))

    def per_model(self, metrics_host: dict):
        """[(name, manager, scalar metrics)] for each model."""
        if not self.stacked:
            return [(self.names[0], self.mngrs[0], metrics_host)]
        return [(name, mngr, {k: v[i] for k, v in metrics_host.items()})
                for i, (name, mngr) in enumerate(zip(self.names, self.mngrs))]

    def finite(self, params) -> List[bool]:
        """Whether each model's weights are all finite (one device read)."""
        return np.atleast_1d(parallel.to_host(self._all_finite(params))).tolist()

    def save(self, state, stats) -> None:
        """A checkpoint per model, each in its own category's folder."""
        if not self.stacked:
            checkpoint.save_state(self.mngrs[0], state, stats)
            return
        host_state = jax.device_get(state)
        for i, mngr in enumerate(self.mngrs):
            checkpoint.save_state(mngr, take(host_state, i), take(stats, i))


class _JitForParams:
    """A jitted step whose compiler options depend on the network (``state.params``), made on
    the first call or ``lower``; behaves as the jitted function for both."""

    def __init__(self, make):
        self._make = make
        self._jitted = None

    def _for(self, state):
        if self._jitted is None:
            self._jitted = self._make(compilation.train_compiler_options(state.params) or None)
        return self._jitted

    def __call__(self, state, *args):
        return self._for(state)(state, *args)

    def lower(self, state, *args):
        return self._for(state).lower(state, *args)
