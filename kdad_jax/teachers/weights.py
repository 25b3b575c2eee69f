"""Frozen teacher weights from a file: the one place methods get their teachers' parameters.

``config.teacher.checkpoint`` may name a msgpack file (``params_file.save_params``), an Orbax
folder or ``builtin:<name>`` (a teacher shipped in this package, see ``shipped``).
"""

import os
from typing import Any, Tuple

from kdad_jax.teachers import params_file
from kdad_jax.teachers import shipped


def load(location: str, abstract: Any) -> Tuple[Any, str]:
    """(params checked against ``abstract``'s shapes, the file's absolute path)."""
    path = shipped.resolve(location)
    return params_file.load_params(path, abstract), os.path.abspath(path)
