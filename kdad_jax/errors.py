"""Errors and warnings about the user's input. ``main`` prints errors as one line and exits
non-zero; warnings are one line on stderr from the process that writes (process 0)."""

import os
import sys

PROCESS_INDEX_ENV = "KDAD_PROCESS_INDEX"  # set by parallel.initialize_distributed


class UserError(Exception):
    """Bad input (paths, files, config values): the message names the culprit and the problem."""


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the message says where the last good checkpoint is."""


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, from process 0 only (every process reads the data)."""
    if os.environ.get(PROCESS_INDEX_ENV, "0") == "0":
        print(f"warning: {message}", file=sys.stderr, flush=True)
