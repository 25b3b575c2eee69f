"""The run's folder: created (or refused) in one line, and guarded against a second config.

``W/config.json`` records the config the checkpoints in ``W/checkpoints`` were trained with. A
rerun that changes what the networks' shapes or meaning depend on (method, image size, model,
student, teacher architecture) would meet an Orbax shape error deep in a restore, or silently
resume a network trained for another input; it stops first, naming the key and both values.
"""

import json
import os
from typing import Dict, List

from kdad_jax.config_files import flatten
from kdad_jax.errors import UserError

CONFIG_FILE = "config.json"
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
        try:
            with open(path, "w") as f:
                f.write(config.to_json(indent=2))
        except OSError as e:
            raise UserError(f"{path}: cannot write ({e.strerror})") from None
