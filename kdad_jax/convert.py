"""Alias kept for ``python -m kdad_jax.convert`` (documented): see ``kdad_jax.teachers.convert``."""

import sys

from kdad_jax.teachers.convert import *  # noqa: F401,F403
from kdad_jax.teachers.convert import main

if __name__ == "__main__":
    sys.exit(main())
