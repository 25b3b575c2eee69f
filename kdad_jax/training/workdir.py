"""The run's folder: created (or refused) in one line, and guarded against a second config.

``W/config.json`` records the config the checkpoints in ``W/checkpoints`` were trained with. A
rerun that changes what the networks' shapes or meaning depend on (method, image size, model,
student, teacher architecture) would meet an Orbax shape error deep in a restore, or silently
resume a network trained for another input; it stops first, naming the key and both values.

``W/.lock`` keeps a second job out of a workdir in use: two runs into one folder would interleave
their logs and overwrite each other's checkpoints. The lock is the kernel's ``flock`` on that file
(released when the holder exits, however it exits; NFS passes it between hosts), and the file's
text names the holder for the message. Only process 0 of a multi-process job takes it.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Dict, Iterator, List, Optional

from kdad_jax import files
from kdad_jax.config_files import flatten
from kdad_jax.errors import UserError, warn

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Keys (or sections) a trained checkpoint depends on; everything else may change between runs
# (more steps, other eval settings, moved data).
_TRAINED_WITH = ("method", "image_size", "model", "student", "students", "dskd", "mixed",
                 "teacher.arch", "teacher.taps")


def _trained_with(flat: Dict[str, object]) -> Dict[str, object]:
    return {k: v for k, v in flat.items()
            if any(k == p or k.startswith(p + ".") for p in _TRAINED_WITH)}


def config_changes(previous: Dict, config) -> List[str]:
    """'key: old -> new' for each checkpoint-defining key that differs (lists compare as tuples)."""
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 - JSON has lists
    old = _trained_with(dict(flatten(previous)))
    new = _trained_with(dict(flatten(json.loads(config.to_json()))))
    return [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if norm(old.get(k)) != norm(new.get(k))]


def has_checkpoints(workdir: str) -> bool:
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(os.scandir(folder))


def make(path: str, what: str = "--workdir") -> None:
    """Create ``path`` as a folder, or one line saying why not (a file, under a file, read-only)."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{what}={path}: is a file, not a folder") from None
    except NotADirectoryError:
        raise UserError(f"{what}={path}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise UserError(f"{what}={path}: cannot create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{what}={path}: the folder is not writable")


def prepare(workdir: str, config, writer: bool) -> None:
    """Make ``workdir``, refuse a config its checkpoints were not trained with, write config.json."""
    make(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(path) and has_checkpoints(workdir):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None  # unreadable: nothing to compare; the restore still checks shapes
        changes = config_changes(previous, config) if isinstance(previous, dict) else []
        if changes:
            raise UserError(f"{workdir}: its checkpoints were trained with {'; '.join(changes)} "
                            f"({path}); use a new --workdir, or the workdir's values")
    if writer:
        files.write_text(path, config.to_json(indent=2))


def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def _read_holder(fd: int) -> Optional[dict]:
    """The holder recorded in the lock file, or None when it is empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "null")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "another run (its pid is not recorded)"
    return (f"another run: pid {holder.get('pid')} on host {holder.get('host')}, "
            f"since {holder.get('since')}")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _take_without_flock(workdir: str, fd: int) -> None:
    """Filesystems without locks (ENOLCK): trust the recorded pid where it can be checked."""
    holder = _read_holder(fd)
    if not holder:
        return
    if holder.get("host") != socket.gethostname():
        raise UserError(f"{workdir}: in use by {_describe(holder)} (this filesystem has no locks: "
                        f"delete {os.path.join(workdir, LOCK_FILE)} if that run is gone)")
    if _pid_alive(holder.get("pid")) and int(holder["pid"]) != os.getpid():
        raise UserError(f"{workdir}: in use by {_describe(holder)}; wait for it to end or use "
                        f"another --workdir")


@contextlib.contextmanager
def locked(workdir: str, writer: bool = True) -> Iterator[None]:
    """Make ``workdir`` and hold its lock for the block; a workdir held by a live run is one
    ``UserError`` naming that run's pid and host. A lock left by a process that died (``kill -9``,
    a lost node) is taken over with a warning."""
    make(workdir)
    if not writer:
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{path}: cannot open the workdir's lock ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{workdir}: in use by {_describe(_read_holder(fd))}; wait for it to "
                            f"end or use another --workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise UserError(f"{path}: cannot lock the workdir ({e.strerror})") from None
            _take_without_flock(workdir, fd)
        stale = _read_holder(fd)
        if stale:
            warn(f"{workdir}: taking over the lock of pid {stale.get('pid')} on host "
                 f"{stale.get('host')} (that run ended without releasing it)")
        os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # a full disk: the flock still holds, unnamed
            os.pwrite(fd, _holder_text().encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty lock file: nobody holds the workdir
    finally:
        os.close(fd)
