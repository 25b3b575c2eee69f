"""Run an exported detector (``--mode=export``) with JAX alone: no training code, no configs.

    import kdad_jax.deploy as deploy
    detector = deploy.load("W/export/bottle")
    maps = detector.maps(images)        # uint8 [B, H, W, 3] (any H, W: resized) or float in [0, 1]
    scores = detector.scores(images)    # [B], max over each map
    flags = detector.is_anomalous(images)  # scores ≥ threshold (the one chosen at evaluation)

This module imports only JAX, NumPy, Pillow and Flax's msgpack reader, so a production image
needs the ``kdad_jax`` wheel's dependencies but runs none of its training code.
"""

import json
import os
from typing import Optional

import numpy as np
from flax import serialization
from jax import export as jax_export
from PIL import Image

FUNCTION_FILE, WEIGHTS_FILE, META_FILE = "model.jax_export", "weights.msgpack", "meta.json"


class Detector:
    def __init__(self, exported, arguments, meta: dict):
        self._exported, self._arguments, self.meta = exported, arguments, meta
        self.image_size = int(meta["image_size"])
        self.threshold: Optional[float] = meta.get("threshold")

    def _prepare(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype == np.uint8:
            if images.shape[1:3] != (self.image_size, self.image_size):
                images = np.stack([np.asarray(Image.fromarray(i).convert("RGB").resize(
                    (self.image_size, self.image_size), Image.BILINEAR)) for i in images])
            images = images.astype(np.float32) / 255.0
        if images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be [B, {self.image_size}, {self.image_size}, 3] floats in "
                             f"[0, 1] or uint8 RGB of any size, not {images.shape}")
        return images.astype(np.float32)

    def maps(self, images) -> np.ndarray:
        """[B, S, S] anomaly maps."""
        return np.asarray(self._exported.call(*self._arguments, self._prepare(images)))

    def scores(self, images) -> np.ndarray:
        maps = self.maps(images)
        return maps.reshape(len(maps), -1).max(axis=1)

    def is_anomalous(self, images, threshold: Optional[float] = None) -> np.ndarray:
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError("this export has no threshold; pass one")
        return self.scores(images) >= threshold  # as evaluation chose it: anomalous at score ≥ threshold


def load(folder: str) -> Detector:
    with open(os.path.join(folder, META_FILE)) as f:
        meta = json.load(f)
    with open(os.path.join(folder, FUNCTION_FILE), "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
    with open(os.path.join(folder, WEIGHTS_FILE), "rb") as f:
        weights = serialization.msgpack_restore(f.read())
    return Detector(exported, [weights[name] for name in meta["arguments"]], meta)
