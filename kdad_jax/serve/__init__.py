"""Serving a trained detector: ``export`` (jax.export or ONNX), ``parity`` (the written artifact
checked against the training code's maps), ``deploy`` (the standalone loader: JAX or ONNX
Runtime), ``service`` (``python -m kdad_jax.serve``: the HTTP service over deploy) and
``predict`` (score image files with a workdir's checkpoint). Imports nothing, so
``kdad_jax.serve.deploy`` stays free of the training code."""
