"""Writing results, tables, reports and exports so that a failed write never leaves half a file.

Every file goes to a hidden temporary file beside its target (``.<name>.tmp-<pid>``), is flushed
to disk, and only then renamed over the target: a full disk, a read-only folder or a killed
process leaves the previous file whole (or no file), never a truncated one. A failed write is one
``UserError`` naming the file and the OS's reason; the temporary file is removed.
"""

import contextlib
import os
from typing import Dict, Iterator, IO

from kdad_jax.errors import UserError


def _temporary(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def _failed(path: str, error: OSError) -> UserError:
    return UserError(f"{path}: cannot write ({error.strerror or type(error).__name__}); "
                     f"the previous file, if any, is kept")


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


@contextlib.contextmanager
def replacing(path: str, mode: str = "w", **open_args) -> Iterator[IO]:
    """``with replacing(path) as f: f.write(...)``: ``path`` appears (or is replaced) only when
    the block finishes; on any failure the old file stays and the temporary one goes."""
    temporary = _temporary(path)
    try:
        with open(temporary, mode, **open_args) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise _failed(path, error) from None
    except BaseException:
        _remove(temporary)
        raise


def write_text(path: str, text: str) -> None:
    with replacing(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with replacing(path, "wb") as stream:
        stream.write(data)


def replace_together(folder: str, contents: Dict[str, bytes]) -> None:
    """Write every ``{name: bytes}`` of ``contents`` into ``folder``: all temporary files first,
    then the renames in the dict's order (put the file that vouches for the others last, e.g. an
    export's ``meta.json`` with their digests). A failure before the renames changes nothing."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise _failed(folder, error) from None
    written = []
    try:
        for name, data in contents.items():
            temporary = _temporary(os.path.join(folder, name))
            written.append(temporary)
            with open(temporary, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
    except OSError as error:
        for temporary in written:
            _remove(temporary)
        raise _failed(os.path.join(folder, list(contents)[len(written) - 1]), error) from None
    for index, (name, temporary) in enumerate(zip(contents, written)):
        try:
            os.replace(temporary, os.path.join(folder, name))
        except OSError as error:
            for left in written[index:]:
                _remove(left)
            raise _failed(os.path.join(folder, name), error) from None
