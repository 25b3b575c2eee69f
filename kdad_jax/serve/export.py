"""``--mode=export``: each trained category as a self-contained inference artifact.

    python -m kdad_jax.main --config=configs/efficientad.py:demo --workdir=W --mode=export

Writes ``W/export/<category>/``:
  model.jax_export   the anomaly-map function serialized with ``jax.export`` (StableHLO), batch
                     size symbolic: images [B, S, S, 3] float32 RGB in [0, 1] -> maps [B, S, S]
  weights.msgpack    its arguments: trained params, BatchNorm state, frozen teacher and the
                     normalization constants (``stats``: teacher mean/std, map quantiles, ...)
  meta.json          format version, the sha256 of each file above, image size, method, platforms (cpu, cuda and tpu, whatever exported it),
                     the parity report (``kdad_jax.serve.parity``: the artifact run by deploy
                     against the in-process maps),
                     the normalization constants' names and shapes, and the image-score
                     threshold when evaluation chose one
With ``--config.export.format=onnx`` instead:
  model.onnx         the same function as one ONNX model (opset 18, weights inside, batch
                     dynamic): images [batch, S, S, 3] float32 RGB in [0, 1] -> maps [batch, S, S];
                     runs in ONNX Runtime, OpenVINO, TensorRT (``kdad_jax.serve.onnx_export``)
  meta.json          as above, ``format`` 'kdad_jax onnx v2'
``kdad_jax.serve.deploy.load`` runs either (JAX, or ONNX Runtime), without training code or configs.
"""

import hashlib
import json
import os
import shutil
from typing import Callable, Optional, Sequence

import flax.serialization
import jax
import numpy as np
from jax import export as jax_export

from kdad_jax import files
from kdad_jax.training import parallel
from kdad_jax.errors import UserError
from kdad_jax.serve.deploy import (FUNCTION_FILE, JAX_FORMAT, META_FILE,  # the reader owns the layout
                                   ONNX_FILE, ONNX_FORMAT, WEIGHTS_FILE)

# jax.export lowers for platforms it is not running on: one artifact made on a laptop runs on a
# CPU server, a CUDA GPU or a TPU (deploy picks the platform it finds).
PLATFORMS = ("cpu", "cuda", "tpu")


FORMATS = ("jax_export", "onnx")


def check_format(export_format: str, precision: str = "float32") -> None:
    """Before any work: the chosen format and precision can be written here (``UserError``
    naming the key and the fix)."""
    from kdad_jax.serve.precision import PRECISIONS
    if precision not in PRECISIONS:
        raise UserError(f"config.export.precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "float32" and export_format != "onnx":
        raise UserError(f"config.export.precision={precision!r} needs config.export.format='onnx' "
                        f"(jax_export artifacts are float32)")
    if export_format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise UserError("config.export.format='onnx' needs the onnx package: "
                            "pip install -e '.[onnx]'") from None


def export_category(folder: str, method, trained, image_size: int, extra_meta: Optional[dict] = None,
                    platforms: Sequence[str] = PLATFORMS, export_format: str = "jax_export",
                    check: Optional[Callable[[str], dict]] = None, precision: str = "float32",
                    calibration_images: Optional[np.ndarray] = None) -> str:
    """Serialize ``method.anomaly_map`` with the trained arguments into ``folder``: with
    ``jax.export``, lowered for every platform in ``platforms``, or as ONNX (at ``precision``,
    ``kdad_jax.serve.precision``; int8 calibrates on ``calibration_images``, training images
    [N, S, S, 3] uint8).

    With ``check`` (e.g. the parity check, ``kdad_jax.serve.parity``) the artifact is written to a
    hidden folder beside ``folder`` first and ``check(that folder)`` runs it: its report goes into
    ``meta.json`` under ``parity``; when it raises, nothing in ``folder`` changes."""
    contents, meta = _artifact(method, plain_arguments(trained), image_size, extra_meta, platforms,
                               export_format, precision, calibration_images)
    if check is None:
        return _write(folder, contents, meta)
    parent, name = os.path.split(os.path.abspath(folder))
    staging = os.path.join(parent, f".{name}.checking-{os.getpid()}")
    try:
        _write(staging, contents, meta)
        report = check(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _write(folder, contents, _with_report(meta, report))


def _with_report(meta: dict, report: dict) -> dict:
    """``meta`` with the check's report under ``parity``; a reduced-precision artifact's threshold
    becomes the one the report chose on its own scores (the float32 one is kept beside it)."""
    meta = {**meta, "parity": report}
    if report.get("artifact_threshold") is not None:
        meta.update(float32_threshold=meta.get("threshold"), threshold=report["artifact_threshold"],
                    threshold_rule=report["artifact_threshold_rule"])
    return meta


def _artifact(method, args, image_size, extra_meta, platforms, export_format, precision="float32",
              calibration_images=None):
    """({file name: bytes}, meta) of the artifact."""
    if export_format == "onnx":
        return _onnx_artifact(method, args, image_size, extra_meta, precision, calibration_images)
    batch = jax_export.symbolic_shape("b")[0]
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.float32)
    specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args)
    exported = jax_export.export(jax.jit(method.anomaly_map), platforms=tuple(platforms))(*specs, images)
    names = ("params", "model_state", "frozen", "stats")
    contents = {FUNCTION_FILE: bytes(exported.serialize()),
                WEIGHTS_FILE: flax.serialization.msgpack_serialize(dict(zip(names, args)))}
    meta = {
        "format": JAX_FORMAT,
        "method": method.name,
        "image_size": image_size,
        "input": "float32 RGB in [0, 1], [B, S, S, 3] (kdad_jax.serve.deploy resizes and scales uint8 images)",
        "output": "anomaly maps [B, S, S]; image score = max over the map",
        "platforms": list(exported.platforms),
        "compute_dtype": method.info.get("compute_dtype", "float32"),
        "arguments": list(names),
        "normalization_constants": {k: list(np.shape(v)) for k, v in args[3].items()},
        **(extra_meta or {}),
    }
    return contents, meta


def plain_arguments(trained) -> list:
    """The anomaly-map function's arguments (params, model_state, frozen, stats) on the host, as
    nested plain dicts of numpy arrays: the pytree structure deploy gets back from msgpack."""
    host = parallel.to_host((trained.params, trained.model_state, trained.frozen, trained.stats))
    return [_plain(a) for a in host]


def _write(folder: str, contents: dict, meta: dict) -> str:
    """The artifact's files and, renamed into place last, ``meta.json`` with their sha256
    (``deploy.load`` checks them: a file copied in from another export is refused)."""
    meta = {**meta, "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}}
    files.replace_together(folder, {**contents, META_FILE: json.dumps(meta, indent=2).encode()})
    return folder


def _onnx_artifact(method, args, image_size: int, extra_meta: Optional[dict],
                   precision: str = "float32", calibration_images=None):
    from kdad_jax.serve import onnx_export
    from kdad_jax.serve import precision as precision_module
    try:
        model = onnx_export.to_onnx(method.anomaly_map, args, (image_size, image_size, 3),
                                    doc=f"kdad_jax {method.name} anomaly maps")
    except onnx_export.UnsupportedError as e:
        raise UserError(f"config.export.format='onnx': {method.name} cannot be written as ONNX "
                        f"({e}); export it with export.format='jax_export'") from None
    model = precision_module.reduce(model, precision, calibration_images)
    meta = {
        "format": ONNX_FORMAT,
        "method": method.name,
        "image_size": image_size,
        "input": "images: float32 RGB in [0, 1], [batch, S, S, 3] (NHWC; kdad_jax.serve.deploy resizes "
                 "and scales uint8 images)",
        "output": "maps: anomaly maps [batch, S, S]; image score = max over the map",
        "onnx_opset": onnx_export.OPSET,
        "compute_dtype": "float32",
        "precision": precision,
        **(extra_meta or {}),
    }
    return {ONNX_FILE: model.SerializeToString()}, meta


def _plain(tree):
    """Nested plain dicts of numpy arrays (what msgpack stores and deploy hands back)."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {str(k): _plain(v) for k, v in tree.items()}
    return np.asarray(tree)
