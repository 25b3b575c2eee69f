"""kdad_jax: knowledge-distillation visual anomaly detection in JAX/Flax."""

__version__ = "0.1.0"
