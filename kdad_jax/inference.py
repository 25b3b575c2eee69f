"""Compilation of the inference programs (anomaly maps, teacher statistics, calibration).

On CPU, XLA's default YNNPACK fusion runs k×k convolutions several times slower than its Eigen
kernels (measured: conv 128→256, 4×4 on a 126² map, 0.57 s vs 0.11 s). The option is per
compilation: inference programs and the train step (``stacking.Models.jit_step``, whose
convolutions and their gradients are XLA's own since ``models/conv.py`` stopped gathering
patches) are compiled without YNNPACK fusions. Other platforms get no extra options.
"""

import functools
from typing import Callable, Dict

import jax

_CPU_INFERENCE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def _cpu_options_supported() -> bool:
    """Older or newer jaxlibs may not know the option; then compile with the defaults."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_INFERENCE_OPTIONS).lower(1.0).compile()
        return True
    except Exception:  # noqa: BLE001 - any rejection means "not supported here"
        return False


def compiler_options() -> Dict[str, str]:
    if jax.default_backend() == "cpu" and _cpu_options_supported():
        return dict(_CPU_INFERENCE_OPTIONS)
    return {}


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit`` for an undifferentiated (inference) function, with the platform's options."""
    return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)
