"""Serving a trained detector: ``export`` (jax.export), ``deploy`` (the standalone loader, JAX
alone) and ``predict`` (score image files with a workdir's checkpoint). Imports nothing, so
``kdad_jax.serve.deploy`` stays free of the training code."""
