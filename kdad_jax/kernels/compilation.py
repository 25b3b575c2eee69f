"""Compiler options of the programs this process compiles (inference, calibration, train step).

These are options of a compilation on the local backend, not of a lowering, so they never travel
into an export. On CPU, XLA's default YNNPACK fusion runs k×k convolutions several times slower
than its Eigen kernels: inference programs are compiled without YNNPACK fusions, and so is the
train step (``stacking.Models.jit_step``) unless its network has depthwise convolutions, whose 1×1
and depthwise layers (EfficientNet) train faster with them; dense k×k networks (PDN, ResNet,
Uninformed Students' patch networks) train slower with them. Other platforms get no extra
options.
"""

import functools
from typing import Callable, Dict

import jax
import numpy as np

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


def train_compiler_options(params) -> Dict[str, str]:
    """The train step's options for a network with these parameters (see the module docstring):
    YNNPACK stays on when any kernel is depthwise ([kh, kw, 1, C], kh·kw > 1, any leading axes)."""
    depthwise = any(np.ndim(leaf) >= 4 and leaf.shape[-2] == 1 and leaf.shape[-4] * leaf.shape[-3] > 1
                    for leaf in jax.tree_util.tree_leaves(params))
    return {} if depthwise else compiler_options()


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit`` for an undifferentiated (inference) function, with the platform's options."""
    return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)
