"""Checkpoints: the Orbax manager for the training state (teacher files: ``teachers/params_file.py``).

Restore order (as MaxText documents it): the run's own newest *readable* checkpoint in
``<workdir>/checkpoints/<category>``, else a fresh start. A step folder that cannot be read
(deleted or overwritten files, an empty folder) is moved to ``<category>/corrupt/<step>`` with a
one-line warning and the next older one is tried; one saved with other shapes than the config
makes is an error (the workdir was trained with another config). A save that fails (disk full,
read-only) is one line and the last good checkpoint stays. Teacher weights are never part of the
training checkpoint: they are reloaded from ``config.teacher.checkpoint`` at start-up.
"""

import contextlib
import glob
import logging
import os
import re
import shutil
import sys
import time
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdad_jax.errors import PROCESS_INDEX_ENV, UserError, warn

_NO_STATS = "no_stats"  # stands in for a method's empty stats dict in a checkpoint


CORRUPT_DIR = "corrupt"  # unreadable step folders are moved here, never deleted


def manager(directory: str, save_every: int, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """Orbax manager; the caller decides when to save (``save_state`` forces every save, so a
    preemption save off the ``save_every`` interval happens at the step it announces). Opening it
    removes what a save cut off half-way (``kill -9``, a lost node) left behind."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=max_to_keep, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)  # a save cut off by kill -9 leaves N.orbax-checkpoint-tmp
    try:
        os.makedirs(directory, exist_ok=True)
        return ocp.CheckpointManager(os.path.abspath(directory), options=options)
    except OSError as e:
        raise UserError(f"{directory}: cannot create the checkpoint folder ({_os_reason(e)})") from None


def _os_reason(error: BaseException) -> str:
    """The OS's words for a failed file operation, however deep Orbax wrapped it (TensorStore
    reports the errno inside its message: ``[os_error_code='28']``)."""
    while error is not None:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
        code = re.search(r"os_error_code='(\d+)'", str(error))
        if code:
            return os.strerror(int(code.group(1)))
        error = error.__cause__ or error.__context__
    return "write failed"


class _DropOrbaxThreadErrors(logging.Filter):
    """Orbax's writer threads log each failure with its traceback before the save re-raises it
    (two tracebacks for one full disk); the save's own one-line error says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_SignalingThread.run() raised an exception" not in str(record.msg)


@contextlib.contextmanager
def _quiet_orbax_threads():
    absl_logger, drop = logging.getLogger("absl"), _DropOrbaxThreadErrors()
    absl_logger.addFilter(drop)
    try:
        yield
    finally:
        absl_logger.removeFilter(drop)


class _DropOrbaxOrphanedWrites(logging.Filter):
    """When one of Orbax's parallel writes fails (a full disk), ``asyncio.gather`` raises the
    first error and the sibling writes' errors are never retrieved: asyncio logs each, with its
    traceback, whenever the garbage collector reaches the task (during or after the save). The
    save's own one-line error already says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not ("Task exception was never retrieved" in message and "orbax" in message)


def _quiet_orphaned_orbax_writes() -> None:
    """Installs ``_DropOrbaxOrphanedWrites`` on asyncio's logger, once."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropOrbaxOrphanedWrites) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_DropOrbaxOrphanedWrites())


def _quiet_closed_event_loop_callbacks() -> None:
    """After a failed Orbax read or write, TensorStore's threads call back into an asyncio loop
    Orbax has already closed, and each callback prints a 'RuntimeError: Event loop is closed'
    traceback (a hundred of them). Those callbacks have nothing left to do: drop exactly those
    reports, pass every other unraisable exception to the previous hook. Installed once."""
    previous = sys.unraisablehook
    if getattr(previous, "kdad_quiet", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and "Event loop is closed" in str(unraisable.exc_value)):
            previous(unraisable)

    hook.kdad_quiet = True
    sys.unraisablehook = hook


def save_state(mngr: ocp.CheckpointManager, state: Any, stats: Any, replace: bool = False) -> None:
    """Save the train state and the method's stats at ``state.step`` (synchronously).

    ``replace``: overwrite an existing checkpoint of the same step (the calibrated final state).
    A failed write is one ``UserError`` line; Orbax writes to a temporary folder first, so the
    last good checkpoint stays whole.
    """
    step = int(state.step)
    # Stats are host values (identical on every process); Orbax refuses an empty item.
    stats = {k: np.asarray(v) for k, v in stats.items()} or {_NO_STATS: np.zeros((), np.int32)}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), stats=ocp.args.StandardSave(stats))
    _quiet_closed_event_loop_callbacks()
    _quiet_orphaned_orbax_writes()
    try:
        if replace and step in mngr.all_steps():
            mngr.delete(step)
        with _quiet_orbax_threads():
            mngr.save(step, args=args, force=True)
            mngr.wait_until_finished()
    except Exception as e:  # Orbax wraps OS errors in several types
        if os.environ.get(PROCESS_INDEX_ENV, "0") == "0":  # give the half-written save's space back
            _remove_partial_save(mngr, step)
        kept = [s for s in mngr.all_steps() if s != step]
        keeps = (f"the last good checkpoint (step {max(kept)}) is kept" if kept
                 else "no earlier checkpoint exists")
        raise UserError(f"{mngr.directory}: could not save the checkpoint of step {step} "
                        f"({_os_reason(e)}); {keeps}; free space or fix the folder's permissions, "
                        f"then rerun to resume") from None


def _remove_partial_save(mngr: ocp.CheckpointManager, step: int) -> None:
    """Remove ``step``'s temporary folder of a failed save. Orbax's writer threads may still be
    finishing (and recreating files in it) after the error reached us: wait for them, then
    remove until the folder stays gone (up to 5 s)."""
    with contextlib.suppress(Exception), _quiet_orbax_threads():
        mngr.wait_until_finished()
    pattern = os.path.join(glob.escape(str(mngr.directory)), f"{step}.orbax-checkpoint-tmp*")
    for _ in range(50):
        partials = glob.glob(pattern)
        if not partials:
            return
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        time.sleep(0.1)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any) -> Optional[Tuple[Any, dict]]:
    """(state with the structure of ``abstract_state``, stats dict) at the newest readable step,
    or None. Unreadable steps are moved aside (see the module docstring)."""
    _quiet_closed_event_loop_callbacks()
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), stats=ocp.args.StandardRestore()))
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types on bad files
            if "not compatible with the stored shape" in str(e) or "tree structures" in str(e):
                raise UserError(
                    f"{mngr.directory}: the checkpoint of step {step} holds other shapes than this "
                    f"config makes ({_first_line(e)}); the workdir was trained with another config "
                    f"(see config.json in the workdir): use a new --workdir or its settings") from None
            _set_aside(mngr, step, e)
            continue
        stats = {k: jax.numpy.asarray(v) for k, v in restored.stats.items() if k != _NO_STATS}
        return restored.state, stats
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _set_aside(mngr: ocp.CheckpointManager, step: int, error: BaseException) -> None:
    """Move an unreadable step folder to ``corrupt/<step>`` (kept for inspection) and say so."""
    source = os.path.join(mngr.directory, str(step))
    target = os.path.join(mngr.directory, CORRUPT_DIR, str(step))
    if os.environ.get(PROCESS_INDEX_ENV, "0") == "0":  # one process moves it; all skip it
        if os.path.exists(target):
            shutil.rmtree(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(source, target)
    mngr.reload()
    older = [s for s in mngr.all_steps() if s < step]
    then = f"resuming from step {max(older)} instead" if older else "no older checkpoint: starting over"
    warn(f"{source}: unreadable checkpoint ({type(error).__name__}: {_first_line(error)}); "
         f"moved to {target}; {then}")
