"""Run an exported detector (``--mode=export``): no training code, no configs.

    import kdad_jax.serve.deploy as deploy
    detector = deploy.load("W/export/bottle")
    maps = detector.maps(images)        # [B, S, S] anomaly maps
    scores = detector.scores(images)    # [B], max over each map
    flags = detector.is_anomalous(images)  # scores ≥ threshold (the one chosen at evaluation)

``images``: uint8 in 0–255 or floats in [0, 1]; one image ``[H, W, 3]`` (RGB), ``[H, W]`` or
``[H, W, 1]`` (grayscale), or a batch of them ``[B, H, W, 3]``, ``[B, H, W]``, ``[B, H, W, 1]``;
any H, W (resized bilinearly to the export's size). Anything else — other dtypes (uint16, int64,
a Python list of ints), floats outside [0, 1], NaN or Inf (a broken camera frame) — is a
``ValueError`` saying what was expected: never a score that reads as "good". An empty batch
``[0, H, W, 3]`` gives empty results.

A ``jax_export`` artifact runs with JAX (on whichever of cpu, cuda, tpu it finds); an ONNX one
(``--config.export.format=onnx``) with ONNX Runtime, on its CUDA provider when that build is
installed, else on CPU — JAX is then not used at all. This module imports only NumPy,
Pillow and, for the artifact it loads, JAX with Flax's msgpack reader or ONNX Runtime, so a
production image runs none of the training code.
"""

import json
import os
from typing import Optional

from typing import Callable

import numpy as np
from PIL import Image

FUNCTION_FILE, WEIGHTS_FILE, META_FILE = "model.jax_export", "weights.msgpack", "meta.json"
ONNX_FILE = "model.onnx"


class Detector:
    """``run`` maps a [B, S, S, 3] float32 batch to [B, S, S] maps (the exported function)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], meta: dict):
        self._run, self.meta = run, meta
        self.image_size = int(meta["image_size"])
        self.threshold: Optional[float] = meta.get("threshold")

    def _prepare(self, images) -> np.ndarray:
        """-> [B, S, S, 3] float32 in [0, 1] (see the module docstring for what is accepted)."""
        return _resize(_as_rgb_batch(_checked(images)), self.image_size)

    def maps(self, images) -> np.ndarray:
        """[B, S, S] anomaly maps."""
        batch = self._prepare(images)
        if len(batch) == 0:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        return np.asarray(self._run(batch))

    def scores(self, images) -> np.ndarray:
        maps = self.maps(images)
        if not len(maps):
            return np.zeros((0,), np.float32)
        return maps.reshape(len(maps), -1).max(axis=1)

    def is_anomalous(self, images, threshold: Optional[float] = None) -> np.ndarray:
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError("this export has no threshold; pass one")
        return self.scores(images) >= threshold  # as evaluation chose it: anomalous at score ≥ threshold


_EXPECTED = ("uint8 in 0-255 or floats in [0, 1], shaped [H, W, 3], [H, W], [H, W, 1] or a batch "
             "[B, H, W, 3], [B, H, W], [B, H, W, 1]")


def _checked(images) -> np.ndarray:
    """``images`` as an array of an accepted dtype and range, else ``ValueError``."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images are {array.dtype}: expected {_EXPECTED} (convert other "
                         f"integer types to uint8 yourself, e.g. uint16 // 257)")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"images hold {int((~np.isfinite(array)).sum())} NaN or Inf value(s): "
                         f"a broken frame cannot be scored; expected {_EXPECTED}")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"float images range over [{array.min():g}, {array.max():g}]: expected "
                         f"[0, 1] (divide 0-255 values by 255, or pass uint8)")
    return array


def _as_rgb_batch(array: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|3], [B, H, W], [B, H, W, 1|3] -> [B, H, W, 3] (same dtype)."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        array = array[..., None]  # grayscale without a channel axis
    if array.ndim == 3:
        array = array[None]  # one image
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or 0 in array.shape[1:]:
        raise ValueError(f"images are shaped {list(np.shape(array))}: expected {_EXPECTED}")
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    """[B, H, W, 3] uint8 or float -> [B, size, size, 3] float32 in [0, 1], bilinear."""
    if not len(batch):
        return np.zeros((0, size, size, 3), np.float32)
    if batch.shape[1:3] != (size, size):
        if batch.dtype == np.uint8:
            batch = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR))
                              for i in batch])
        else:  # PIL resizes 32-bit float images one channel at a time
            batch = np.stack([np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), "F")
                                                   .resize((size, size), Image.BILINEAR)) for c in range(3)],
                                       axis=-1) for image in batch])
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / 255.0
    return np.clip(batch.astype(np.float32), 0.0, 1.0)


def load(folder: str) -> Detector:
    """The detector exported to ``folder`` (either format; ``meta.json`` says which)."""
    with open(os.path.join(folder, META_FILE)) as f:
        meta = json.load(f)
    if str(meta.get("format", "")).startswith("kdad_jax onnx"):
        return Detector(_onnx_runner(os.path.join(folder, ONNX_FILE)), meta)
    return Detector(_jax_runner(folder, meta["arguments"]), meta)


def _jax_runner(folder: str, argument_names) -> Callable:
    from flax import serialization
    from jax import export as jax_export
    with open(os.path.join(folder, FUNCTION_FILE), "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
    with open(os.path.join(folder, WEIGHTS_FILE), "rb") as f:
        weights = serialization.msgpack_restore(f.read())
    arguments = [weights[name] for name in argument_names]
    return lambda batch: exported.call(*arguments, batch)


def _onnx_runner(path: str) -> Callable:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"{path} is an ONNX model: pip install onnxruntime (or kdad_jax[onnx])") from None
    preferred = ("CUDAExecutionProvider", "CPUExecutionProvider")  # TensorRT: build an engine from the file
    available = onnxruntime.get_available_providers()
    session = onnxruntime.InferenceSession(path, providers=[p for p in preferred if p in available])
    return lambda batch: session.run(["maps"], {"images": batch})[0]
