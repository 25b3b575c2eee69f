"""Checks of the whole resolved config before any work: one line per bad value.

Every rule names the key, the value and what is allowed; a key a config does not have is not
checked (configs differ by method). ``check(config)`` raises one ``UserError`` holding all the
lines, so a user fixes every mistake in one go instead of meeting them one run at a time.
"""

import math
import numbers
import os
from typing import Callable, List, Optional, Tuple

from kdad_jax.config_files import flatten
from kdad_jax.data.dataset import FORMATS
from kdad_jax.errors import UserError
from kdad_jax.methods.efficientad import MAP_BORDERS
from kdad_jax.serve.export import FORMATS as EXPORT_FORMATS
from kdad_jax.serve.precision import PRECISIONS as EXPORT_PRECISIONS


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int) -> Tuple[Callable, str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer ≥ {low}"


def _number_in(low: float, high: float, low_open=False, high_open=False) -> Tuple[Callable, str]:
    def ok(v):
        return (_is_number(v) and (v > low if low_open else v >= low)
                and (v < high if high_open else v <= high))
    brackets = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    return ok, f"a number in {brackets}"


def _positive_number() -> Tuple[Callable, str]:
    return (lambda v: _is_number(v) and v > 0), "a finite number > 0"


def _one_of(*choices) -> Tuple[Callable, str]:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


_RULES = {
    "seed": _int_at_least(0),
    "image_size": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    "train.per_device_batch_size": (
        lambda v: _is_int(v) and v >= 0, "an integer ≥ 0 (0: use train.batch_size)"),
    "train.checkpoint_every": _int_at_least(1),
    "train.log_every": _int_at_least(1),
    "train.learning_rate": _positive_number(),
    "train.lr_drop_fraction": _number_in(0, 1),
    "train.weight_decay": _number_in(0, math.inf, high_open=True),
    "train.momentum": _number_in(0, 1, high_open=True),
    "train.optimizer": _one_of("adam", "sgd"),
    "train.color_jitter": _number_in(0, 1),
    "data.validation_fraction": _number_in(0, 1, low_open=True, high_open=True),
    "data.num_threads": _int_at_least(1),
    "train.compute_dtype": _one_of("float32", "bfloat16"),
    "train.parallel_categories": _int_at_least(1),
    "data.device_data_mb": _number_in(0, float("inf")),
    "data.format": _one_of(*FORMATS),
    "eval.batch_size": _int_at_least(1),
    "eval.num_heatmaps": _int_at_least(0),
    "eval.threshold_percentile": _number_in(0, 100),
    "model.size": _one_of("s", "m"),
    "model.map_border": _one_of(*MAP_BORDERS),
    "model.out_channels": _int_at_least(1),
    "loss.hard_quantile": _number_in(0, 1),
    "penalty.grayscale_prob": _number_in(0, 1),
    "export.format": _one_of(*EXPORT_FORMATS),
    "export.precision": _one_of(*EXPORT_PRECISIONS),
    "eval.fpr_limits": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(
        _is_number(x) and 0 < x <= 1 for x in v), "a non-empty list of FPR limits in (0, 1]"),
}


_MISSING = object()


def _steps_problem(flat) -> Optional[str]:
    """Training length: ``train.epochs`` > 0 when a config counts epochs, else ``train.steps`` ≥ 1."""
    epochs, steps = flat.get("train.epochs", _MISSING), flat.get("train.steps", _MISSING)
    if epochs is not _MISSING and epochs:
        if not (_is_number(epochs) and epochs > 0):
            return f"config.train.epochs={epochs!r}: must be a finite number > 0"
        return None
    if steps is not _MISSING and not (_is_int(steps) and steps >= 1):
        hint = " (or train.epochs > 0)" if epochs is not _MISSING else ""
        return f"config.train.steps={steps!r}: must be an integer ≥ 1{hint}"
    return None


def _teacher_problem(flat) -> Optional[str]:
    """A teacher path that cannot hold weights: missing, or an empty folder."""
    path = flat.get("teacher.checkpoint", _MISSING)
    if path is _MISSING or not path or str(path).startswith("builtin:"):
        return None
    for item in str(path).split(","):
        if not os.path.exists(item):
            return f"config.teacher.checkpoint={path!r}: {item} does not exist"
        if os.path.isdir(item) and not os.listdir(item):
            return f"config.teacher.checkpoint={path!r}: {item} is an empty folder (a msgpack file " \
                   f"or an Orbax checkpoint folder is expected)"
    return None


def _export_problem(flat) -> Optional[str]:
    """ONNX exports are float32 (ONNX Runtime's CPU convolutions have no bfloat16)."""
    if flat.get("export.precision") in ("float16", "int8") and flat.get("export.format") != "onnx":
        return (f"config.export.precision={flat['export.precision']!r} needs "
                f"config.export.format='onnx' (jax_export artifacts are float32)")
    if flat.get("export.format") == "onnx" and flat.get("train.compute_dtype") == "bfloat16":
        return ("config.export.format='onnx' with config.train.compute_dtype='bfloat16': ONNX "
                "exports are float32; export this run with export.format='jax_export'")
    return None


def problems(config) -> List[str]:
    """Every bad value in ``config``, one line each (empty when all is well)."""
    flat, lines = dict(flatten(config)), []
    for key, (ok, allowed) in _RULES.items():
        value = flat.get(key, _MISSING)
        if value is not _MISSING and not ok(value):
            lines.append(f"config.{key}={value!r}: must be {allowed}")
    for extra in (_steps_problem(flat), _teacher_problem(flat), _export_problem(flat)):
        if extra:
            lines.append(extra)
    return lines


def check(config) -> None:
    """Raise one ``UserError`` listing every bad value (one line each)."""
    lines = problems(config)
    if lines:
        raise UserError("\n".join(lines))
