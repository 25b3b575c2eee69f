"""Run an exported detector (``--mode=export``): no training code, no configs.

    import kdad_jax.serve.deploy as deploy
    detector = deploy.load("W/export/bottle")
    maps = detector.maps(images)        # [B, S, S] anomaly maps
    scores = detector.scores(images)    # [B], max over each map
    flags = detector.is_anomalous(images)  # scores ≥ threshold (the one chosen at evaluation)

``images``: image files (a path, a PIL image, or a list of them: read as training reads its images,
EXIF-upright, RGB, bilinear resize), or arrays: uint8 in 0–255 or floats in [0, 1]; one image ``[H, W, 3]`` (RGB), ``[H, W]`` or
``[H, W, 1]`` (grayscale), or a batch of them ``[B, H, W, 3]``, ``[B, H, W]``, ``[B, H, W, 1]``;
any H, W (resized bilinearly to the export's size). Shapes that could be read two ways are
refused: a last axis of 2 or 4 (gray+alpha, RGBA) and channels first (``[3, H, W]``,
``[B, 3, H, W]``); pass a grayscale batch of three as ``[3, H, W, 1]``. Anything else — other dtypes (uint16, int64,
a Python list of ints), floats outside [0, 1], NaN or Inf (a broken camera frame) — is a
``ValueError`` saying what was expected: never a score that reads as "good". An empty batch
``[0, H, W, 3]`` gives empty results.

A ``jax_export`` artifact runs with JAX (on whichever of cpu, cuda, tpu it finds); an ONNX one
(``--config.export.format=onnx``) with ONNX Runtime, on its CUDA provider when that build is
installed, else on CPU — JAX is then not used at all. This module imports only NumPy,
Pillow, for the artifact it loads JAX with Flax's msgpack reader or ONNX Runtime, and for image
files ``kdad_jax.data.images`` (the reader training uses), so a production image runs none of
the training code.
"""

import hashlib
import json
import math
import os
from typing import Callable, Optional

import numpy as np
from PIL import Image

FUNCTION_FILE, WEIGHTS_FILE, META_FILE = "model.jax_export", "weights.msgpack", "meta.json"
ONNX_FILE = "model.onnx"
JAX_FORMAT, ONNX_FORMAT = "kdad_jax export v2", "kdad_jax onnx v2"  # v2: meta.json lists the files' sha256


class Detector:
    """``run`` maps a [B, S, S, 3] float32 batch to [B, S, S] maps (the exported function)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], meta: dict):
        self._run, self.meta = run, meta
        self.image_size = int(meta["image_size"])
        self.threshold: Optional[float] = meta.get("threshold")

    def prepare(self, images) -> np.ndarray:
        """-> [B, S, S, 3] float32 in [0, 1], what the model runs on (see the module docstring for
        what is accepted); ``maps`` of the result equals ``maps`` of ``images``."""
        if _is_file_input(images):
            return _read_files(images, self.image_size)
        return _resize(_as_rgb_batch(_checked(images)), self.image_size)

    def maps(self, images) -> np.ndarray:
        """[B, S, S] anomaly maps."""
        batch = self.prepare(images)
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
    """[H, W], [H, W, 1|3], [B, H, W], [B, H, W, 1|3] -> [B, H, W, 3] (same dtype). Layouts that
    would otherwise read as a batch of narrow images are refused (see ``_ambiguity``)."""
    problem = _ambiguity(array.shape)
    if problem:
        raise ValueError(f"images are shaped {list(array.shape)}: {problem}; expected {_EXPECTED}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        array = array[..., None]  # grayscale without a channel axis
    if array.ndim == 3:
        array = array[None]  # one image
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or 0 in array.shape[1:]:
        raise ValueError(f"images are shaped {list(np.shape(array))}: expected {_EXPECTED}")
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def _ambiguity(shape) -> Optional[str]:
    """Why a 3-D or 4-D shape is not one of the accepted layouts, when it looks like another."""
    if len(shape) not in (3, 4) or shape[-1] in (1, 3):
        return None
    if shape[-1] in (2, 4):
        return ("a last axis of 2 or 4 reads as gray+alpha or RGBA channels, which are not taken: "
                "drop the alpha channel (image[..., :3]; for a grayscale batch of such width pass "
                "[B, H, W, 1])")
    if shape[-3] == 3:
        return ("channels first ([3, H, W] or [B, 3, H, W]) is not taken: move the channels last "
                "(np.moveaxis(images, -3, -1); for three grayscale images pass [3, H, W, 1])")
    return None


def _is_file_input(images) -> bool:
    """A path, a PIL image, or a list/tuple of them (not an array, not a list of numbers)."""
    one = lambda x: isinstance(x, (str, os.PathLike, Image.Image))  # noqa: E731
    return one(images) or (isinstance(images, (list, tuple)) and len(images) > 0
                           and all(one(x) for x in images))


def _read_files(images, size: int) -> np.ndarray:
    """Paths or PIL images -> [B, size, size, 3] float32 in [0, 1], read exactly as training reads
    its images (``kdad_jax.data.images``: EXIF upright, 16-bit and float scaled, RGB, bilinear
    resize, then / 255), so an artifact scores a file as training scored it."""
    from kdad_jax.data import images as image_io  # the one reader training uses too
    from kdad_jax.errors import UserError
    batch = []
    for item in images if isinstance(images, (list, tuple)) else [images]:
        try:
            batch.append(image_io.resize_rgb(item, size) if isinstance(item, Image.Image)
                         else image_io.load_rgb(os.fspath(item), size))
        except UserError as e:
            raise ValueError(str(e)) from None
    return np.stack(batch).astype(np.float32) / 255.0


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


class ArtifactError(ValueError):
    """The export folder is not a whole, consistent artifact; one line naming the file."""


def load(folder: str) -> Detector:
    """The detector exported to ``folder`` (either format; ``meta.json`` says which).

    Before anything runs, ``meta.json`` is validated (known format, positive image size, a finite
    threshold or none) and every file it lists must have the sha256 it records, so a file copied
    in from another export, a truncated copy or a hand-edited meta is refused with one
    ``ArtifactError`` line naming the file."""
    meta = _read_meta(folder)
    _verify_files(folder, meta)
    if meta["format"].startswith("kdad_jax onnx"):
        return Detector(_onnx_runner(os.path.join(folder, ONNX_FILE)), meta)
    return Detector(_jax_runner(folder, meta["arguments"]), meta)


def _read_meta(folder: str) -> dict:
    path = os.path.join(folder, META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f, parse_constant=_no_constant)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found ({folder} is not an export folder)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    problem = _meta_problem(meta)
    if problem:
        raise ArtifactError(f"{path}: {problem}; re-export the model")
    return meta


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _meta_problem(meta: dict) -> Optional[str]:
    """What makes ``meta`` unusable, or None."""
    if meta.get("format") not in (JAX_FORMAT, ONNX_FORMAT):
        known = f"{JAX_FORMAT!r} or {ONNX_FORMAT!r}"
        return f"format is {meta.get('format')!r}, expected {known}"
    size = meta.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        return f"image_size is {size!r}, expected a positive integer"
    if meta.get("threshold") is not None and not _is_number(meta["threshold"]):
        return f"threshold is {meta['threshold']!r}, expected a finite number (or null)"
    needed = [ONNX_FILE] if meta["format"] == ONNX_FORMAT else [FUNCTION_FILE, WEIGHTS_FILE]
    listed = meta.get("files")
    if not isinstance(listed, dict) or any(not isinstance(listed.get(n), str) for n in needed):
        return f"files must give the sha256 of {', '.join(needed)}"
    arguments = meta.get("arguments")
    if meta["format"] == JAX_FORMAT and not (isinstance(arguments, list) and arguments
                                             and all(isinstance(a, str) for a in arguments)):
        return "arguments must list the names of the function's arguments"
    return None


def _verify_files(folder: str, meta: dict) -> None:
    for name, expected in meta["files"].items():
        path = os.path.join(folder, os.path.basename(str(name)))
        try:
            digest = _sha256(path)
        except OSError as e:
            raise ArtifactError(f"{path}: cannot read ({e.strerror})") from None
        if digest != expected:
            raise ArtifactError(f"{path}: sha256 {digest[:12]}… differs from {expected[:12]}… in "
                                f"{META_FILE}: the file is not the one this export wrote (copied "
                                f"from another export, truncated or changed); re-export")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jax_runner(folder: str, argument_names) -> Callable:
    from flax import serialization
    from jax import export as jax_export
    path = os.path.join(folder, FUNCTION_FILE)
    try:
        with open(path, "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
        path = os.path.join(folder, WEIGHTS_FILE)
        with open(path, "rb") as f:
            weights = serialization.msgpack_restore(f.read())
        arguments = [weights[name] for name in argument_names]
    except Exception as e:  # noqa: BLE001 - the readers raise many types on a file they cannot parse
        raise ArtifactError(f"{path}: cannot load ({type(e).__name__}: {_first_line(e)})") from None
    import jax
    on_device = jax.device_put(arguments)  # once, not with every batch
    run = jax.jit(exported.call)  # compiled once per batch size
    return lambda batch: run(*on_device, batch)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


def _onnx_runner(path: str) -> Callable:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"{path} is an ONNX model: pip install onnxruntime (or kdad_jax[onnx])") from None
    preferred = ("CUDAExecutionProvider", "CPUExecutionProvider")  # TensorRT: build an engine from the file
    available = onnxruntime.get_available_providers()
    try:
        session = onnxruntime.InferenceSession(path, providers=[p for p in preferred if p in available])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types on a bad model
        raise ArtifactError(f"{path}: not a loadable ONNX model ({_first_line(e)})") from None
    return lambda batch: session.run(["maps"], {"images": batch})[0]
