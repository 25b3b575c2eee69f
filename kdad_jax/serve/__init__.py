"""Serving a trained detector: ``export`` (jax.export or ONNX), ``parity`` (the written artifact
checked against the training code's maps), ``deploy`` (the standalone loader: JAX or ONNX
Runtime), and ``service`` (``python -m kdad_jax.serve``: the HTTP service over deploy). Imports nothing, so
``kdad_jax.serve.deploy`` stays free of the training code."""
