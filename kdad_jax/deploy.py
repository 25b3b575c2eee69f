"""Alias kept for ``kdad_jax.deploy.load`` (documented): see ``kdad_jax.serve.deploy``."""

from kdad_jax.serve.deploy import *  # noqa: F401,F403
from kdad_jax.serve.deploy import Detector, load  # noqa: F401
