"""Devices and hosts: one data-parallel path for 1 CPU, forced host devices, GPUs and TPU pods.

The mesh spans every device of every process with a ``data`` axis and a ``model`` axis (size 1
for now: room for sharding large teachers later). Training batches are split along ``data``;
params, optimizer state, frozen teacher and stats are replicated. The train step is the same
``jax.jit`` everywhere, given these shardings: XLA inserts the gradient all-reduce and the global
batch statistics (BatchNorm, EfficientAD's hard-feature quantile), so no method has parallel code.

Batch sizes: ``config.train.batch_size`` is the *global* batch (what the papers report; a run
gives the same result on any number of devices). ``config.train.per_device_batch_size``, when
set (> 0), overrides it with per-device × data-axis size. Each process loads only its own
``global / process_count`` images per step (see data/pipeline.py).

Multi-host: ``initialize_distributed`` calls ``jax.distributed.initialize`` when the process was
started by a cluster launcher (SLURM ``srun`` with several tasks, a multi-host TPU VM, Open MPI)
or with explicit coordinator flags; JAX discovers the rest. On CPU it selects gloo collectives.
"""

import os
import signal
import threading
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from kdad_jax import errors
from kdad_jax.errors import UserError

DATA, MODEL = "data", "model"


def _launched_by_cluster() -> bool:
    """True inside a multi-process job that ``jax.distributed.initialize()`` can auto-detect."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in env:  # srun, not sbatch
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # multi-host TPU VM slice
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return env.get("KDAD_DISTRIBUTED") == "1"  # any other launcher JAX knows (e.g. GKE)


_INSTALL_HINT = {"gpu": "pip install -e '.[cuda]' (CUDA 12; '.[cuda13]' for CUDA 13)",
                 "tpu": "pip install -e '.[tpu]'", "cpu": "pip install -e ."}


def check_platform(expected: Optional[str]) -> None:
    """One line when JAX found another backend than the job asked for (e.g. the CPU build of jax
    on a GPU node: the job would run, hours slower, without a word)."""
    if not expected:
        return
    found = jax.default_backend()
    if found != expected:
        raise UserError(f"--expect_platform={expected}: JAX found the {found} backend "
                        f"({jax.device_count()} {found} device(s)); install the {expected} build: "
                        f"{_INSTALL_HINT[expected]}")


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
    """Join the multi-process job, if this is one. Returns whether ``jax.distributed`` was started.

    Call before any other JAX call. Explicit ``coordinator`` ('host:port') needs the other two."""
    explicit = coordinator is not None
    if not explicit and not _launched_by_cluster():
        return False
    if explicit and (num_processes is None or process_id is None):
        raise UserError("--coordinator needs --num_processes and --process_id")
    # CPU processes exchange gradients through gloo; GPU/TPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    # errors.warn (also in data-loading worker processes) prints only where this is "0".
    os.environ[errors.PROCESS_INDEX_ENV] = str(jax.process_index())
    return True


def make_mesh(devices: Optional[Sequence[jax.Device]] = None, model_parallelism: int = 1) -> Mesh:
    """Mesh [data, model] over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) % model_parallelism:
        raise UserError(f"{len(devices)} devices cannot be split into model groups of {model_parallelism}")
    grid = np.asarray(devices).reshape(len(devices) // model_parallelism, model_parallelism)
    return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def data_size(mesh: Mesh) -> int:
    return mesh.shape[DATA]


def resolve_batch_size(config, mesh: Mesh):
    """``config`` with ``train.batch_size`` = the global batch, checked against the mesh."""
    per_device = config.train.get("per_device_batch_size") or 0
    global_batch = per_device * data_size(mesh) if per_device else config.train.batch_size
    if global_batch % data_size(mesh):
        raise UserError(
            f"global batch {global_batch} cannot be split over {data_size(mesh)} devices: set "
            f"--config.train.batch_size to a multiple of {data_size(mesh)} (or "
            f"--config.train.per_device_batch_size), or run on fewer devices "
            f"(CUDA_VISIBLE_DEVICES / XLA_FLAGS)")
    if global_batch == config.train.batch_size:
        return config
    config = config.copy_and_resolve_references()
    config.train.batch_size = global_batch
    return config


def process_batch_size(global_batch: int) -> int:
    """Images this process loads per step."""
    return global_batch // jax.process_count()


def _replicate_leaf(value, sharding: NamedSharding):
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value  # already on the mesh (e.g. restored by Orbax)
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = _replicate_leaf(jax.random.key_data(value), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host-identical values (numpy or single-device arrays) -> arrays replicated on the mesh.

    Every process must pass the same values (seeded init, the same teacher file)."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda v: _replicate_leaf(v, sharding), tree)


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """This process's slice of the batch ([b, ...] per leaf) -> global [b × processes, ...] arrays."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree: Any) -> Any:
    """Replicated (or local) arrays -> numpy, on every process (evaluation runs per process)."""
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree_util.tree_map(fetch, tree)


def abstract_replicated(abstract: Any, mesh: Mesh) -> Any:
    """ShapeDtypeStructs with the replicated sharding (what Orbax restores onto)."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)


def is_writer() -> bool:
    """Only process 0 writes results, logs, heat maps and teacher files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Preemption:
    """Preemption notice (SIGTERM) -> save and stop at a step every process agrees on.

    One process: our own SIGTERM handler sets a flag. Several: JAX's preemption service catches
    SIGTERM on any host and ``reached_preemption_sync_point`` names the same step on all of them.
    Use as a context manager around the training loop."""

    def __init__(self):
        self.notified = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _on_sigterm(self, signum, frame):
        self.notified = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.notified


def _in_main_thread() -> bool:
    """Python accepts signal handlers only there (a notebook's worker thread cannot install one)."""
    return threading.current_thread() is threading.main_thread()


class Preempted(Exception):
    """Training stopped on a preemption notice after saving a checkpoint at ``step``."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted: checkpoint saved at step {step} in {directory}; "
                         f"rerun the same command to resume")
        self.step = step
