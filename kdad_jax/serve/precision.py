"""Reduced-precision ONNX models: int8 for CPU lines, float16 for GPUs (``config.export.precision``).

Both come from ONNX Runtime's own tools (the ``onnx`` extra), not ours: int8 is its static
post-training quantization (``onnxruntime.quantization.quantize_static``, QDQ format, int8
weights per output channel, uint8 activations, min/max calibration) calibrated on the category's
*training* images only; float16 is its ``convert_float_to_float16`` with float32 inputs and
outputs kept, so callers feed the same arrays. What each changes in the maps and the metrics is
measured on every export by the parity report (``kdad_jax.serve.parity``).
"""

import os
import tempfile

import numpy as np

PRECISIONS = ("float32", "float16", "int8")
CALIBRATION_IMAGES = 32  # training images the int8 calibration runs (spread over the set)


def reduce(model, precision: str, calibration_images: np.ndarray):
    """``model`` (ONNX, float32) at ``precision``; ``calibration_images`` [N, S, S, 3] uint8."""
    if precision == "float32":
        return model
    if precision == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        return convert_float_to_float16(model, keep_io_types=True)
    return _int8(model, calibration_images)


class _Images:
    """ONNX Runtime's calibration reader over a few training images, one at a time."""

    def __init__(self, images: np.ndarray):
        chosen = np.linspace(0, len(images) - 1, min(CALIBRATION_IMAGES, len(images))).round().astype(int)
        self._batches = iter([images[i:i + 1].astype(np.float32) / 255.0 for i in chosen])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def _int8(model, calibration_images: np.ndarray):
    import onnx
    from onnxruntime import quantization
    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "float32.onnx"), os.path.join(folder, "int8.onnx")
        onnx.save(model, source)
        quantization.quantize_static(
            source, target, _Images(calibration_images), quant_format=quantization.QuantFormat.QDQ,
            per_channel=True, weight_type=quantization.QuantType.QInt8,
            activation_type=quantization.QuantType.QUInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)
        return onnx.load(target)
