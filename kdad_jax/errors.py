"""Errors and warnings about the user's input. ``main`` prints errors as one line and exits
non-zero; warnings are one line on stderr from the process that writes (process 0)."""

import errno
import os
import sys
from typing import Optional

PROCESS_INDEX_ENV = "KDAD_PROCESS_INDEX"  # set by parallel.initialize_distributed


class UserError(Exception):
    """Bad input (paths, files, config values): the message names the culprit and the problem."""


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the message says where the last good checkpoint is."""


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, from process 0 only (every process reads the data)."""
    if os.environ.get(PROCESS_INDEX_ENV, "0") == "0":
        print(f"warning: {message}", file=sys.stderr, flush=True)


# Errors of the disk, not of the program: full, over quota, read-only, no permission, failing.
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.EFBIG)


def disk_error_line(error: OSError) -> Optional[str]:
    """``PATH: reason`` for an error of the disk (a write the files module does not wrap, e.g. a
    library's own files); None for any other OSError (a bug: let it raise)."""
    if error.errno not in _DISK_ERRORS:
        return None
    return f"{error.filename}: {error.strerror or error}" if error.filename else str(error.strerror or error)


def one_line(message: str) -> str:
    """First and last lines of a multi-line message (absl embeds whole tracebacks)."""
    lines = [l.strip() for l in message.replace("\\n", "\n").replace("\\'", "'").splitlines() if l.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0][:-1]}: {lines[-1]}"
    text = " ".join(lines)
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text
