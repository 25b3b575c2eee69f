"""Maps for the test images -> metrics (with the reason when one is undefined) and decision
thresholds. Tables, curve plots and heat-map pictures are in ``report/``."""

from typing import Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from kdad_jax.errors import UserError
from kdad_jax.evaluation import metrics
from kdad_jax.evaluation.metrics import METRIC_KEYS  # noqa: F401 - re-exported: run.py and tests read it here
from kdad_jax.kernels import compilation
from kdad_jax.methods.base import Method


def predict_maps(method: Method, params, model_state, frozen, stats, images: np.ndarray,
                 batch_size: int):
    """[N, H, W, 3] uint8 -> maps [N, H, W] float32 in fixed-size jitted batches (no recompiles)."""
    anomaly_map = compilation.jit(method.anomaly_map)
    maps = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].astype(np.float32) / 255.0
        count = len(chunk)
        if count < batch_size:  # pad the last batch to the compiled shape
            chunk = np.concatenate([chunk, np.zeros((batch_size - count, *chunk.shape[1:]), chunk.dtype)])
        maps.append(np.asarray(anomaly_map(params, model_state, frozen, stats, chunk))[:count])
    return np.concatenate(maps)


def to_original_size(maps: np.ndarray, sizes) -> List[np.ndarray]:
    """[N, S, S] maps -> each at its image's (width, height) in ``sizes``: [H_i, W_i] float32.

    Bilinear with half-pixel centres and no antialiasing — torch's ``F.interpolate(...,
    mode='bilinear')``, with which the EfficientAD reference brings its maps to the original
    size before MVTec's evaluator scores them."""
    return [np.asarray(jax.image.resize(m, (height, width), "bilinear", antialias=False))
            for m, (width, height) in zip(maps, sizes)]


# Peak memory of the metrics per test pixel at the original size (float64 scores, weights, sort
# order and cumulative sums; measured: 103 bytes a pixel for 20 M pixels).
BYTES_PER_ORIGINAL_PIXEL = 110


def check_original_size_memory(name: str, sizes) -> None:
    """Before training: a ``UserError`` when scoring ``sizes`` (width, height) at their own size
    would not fit in the memory this machine has available (Linux; elsewhere no check)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    pixels = sum(w * h for w, h in sizes)
    needed = pixels * BYTES_PER_ORIGINAL_PIXEL
    if needed > available:
        raise UserError(f"{name}: config.eval.original_size=True scores {pixels / 1e6:.0f} M test pixels, "
                        f"about {needed / 2**30:.1f} GiB while the metrics run, and {available / 2**30:.1f} GiB "
                        f"are available: set --config.eval.original_size=False (metrics at image_size)")


def _image_reason(labels: np.ndarray) -> Optional[str]:
    if not labels.any():
        return "no anomalous test images"
    if labels.all():
        return "no good test images"
    return None


def _pixel_reason(labels, masks, has_mask, defects) -> Optional[str]:
    unmasked = (labels == 1) & ~np.asarray(has_mask, bool)
    if unmasked.any():
        names = sorted({defects[i] for i in np.flatnonzero(unmasked)}) if defects else []
        return (f"no ground-truth masks for {int(unmasked.sum())} anomalous test image(s)"
                f"{' (' + ', '.join(names) + ')' if names else ''}")
    pixels = metrics.pooled(masks).astype(bool)
    if not pixels.any():
        return "no anomalous pixels in the ground truth" if labels.any() else "no anomalous test images"
    if pixels.all():
        return "no normal pixels in the ground truth"
    return None


def compute_metrics(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                    has_mask: Optional[np.ndarray] = None, defects: Optional[List[str]] = None,
                    regions: Optional[List[list]] = None, fpr_limits: Sequence[float] = (0.3,)) -> dict:
    """Metrics of one category: maps [N, H, W], labels [N], masks [N, H, W] bool (maps and masks
    may also be lists of [H_i, W_i] arrays: each image at its original size).

    A metric the test set cannot define (one class only, anomalous images without masks) is None,
    and ``unavailable`` maps it to the reason. With LOCO's two anomaly types, image AUROC is also
    given per type (good images vs that type): ``image_auroc_logical``/``_structural``; with
    ``regions`` (LOCO's per-file regions, ``data/loco.py``) ``au_spro``: {'all' | 'logical' |
    'structural': {FPR limit: AU-sPRO}}, each over the good images and those of that type, and
    the table's ``au_spro_logical`` / ``_structural`` at FPR 0.05. ``au_pro`` is integrated up to
    ``fpr_limits[0]``; ``au_pro_at`` gives it at every limit of ``fpr_limits``."""
    labels = np.asarray(labels)
    has_mask = np.ones(len(labels), bool) if has_mask is None else np.asarray(has_mask, bool)
    scores = metrics.image_scores(maps)
    result = dict.fromkeys(METRIC_KEYS + ("image_threshold", "pixel_threshold"))
    unavailable = {}
    image_reason = _image_reason(labels)
    if image_reason is None:
        result["image_auroc"] = metrics.auroc(scores, labels)
        result["image_f1_max"], result["image_threshold"] = metrics.f1_max(scores, labels)
    else:
        unavailable.update(dict.fromkeys(("image_auroc", "image_f1_max"), image_reason))
    pixel_reason = _pixel_reason(labels, masks, has_mask, defects)
    if pixel_reason is None:
        result["pixel_auroc"] = metrics.auroc(maps, masks)
        curve = metrics.pro_curve(maps, masks)
        result["au_pro_at"] = {str(limit): metrics.normalized_area(curve, limit) for limit in fpr_limits}
        result["au_pro"] = result["au_pro_at"][str(fpr_limits[0])]
        result["pixel_f1_max"], result["pixel_threshold"] = metrics.f1_max(maps, masks)
    else:
        unavailable.update(dict.fromkeys(("pixel_auroc", "au_pro", "pixel_f1_max"), pixel_reason))
        result["au_pro_at"] = dict.fromkeys(map(str, fpr_limits))
    per_defect = _per_defect_auroc(scores, labels, defects)
    result["image_auroc_per_defect"] = per_defect
    for kind in ("logical", "structural"):
        if f"{kind}_anomalies" in per_defect:
            result[f"image_auroc_{kind}"] = per_defect[f"{kind}_anomalies"]
    if regions is not None:
        result["au_spro"] = _au_spro_by_type(maps, regions, defects)
        for kind in ("logical", "structural"):
            if kind in result["au_spro"]:
                result[f"au_spro_{kind}"] = result["au_spro"][kind]["0.05"]
    if unavailable:
        result["unavailable"] = unavailable
    return result


def border_maxima(maps, labels, band_fraction: float = 1 / 16) -> Optional[dict]:
    """Where the good test images' maps [M, S, S] peak: the fraction whose maximum lies in the
    border band (the outer ``band_fraction`` of the side, at least one pixel, on every edge),
    beside the fraction of the map's pixels the band covers (what a peak placed at random would
    give). A detector whose good images peak at the frame sets its image scores there, not on the
    object (zero padding meeting a plain background). None without good test images."""
    maps, good = np.asarray(maps), np.asarray(labels) == 0
    if not good.any():
        return None
    size_y, size_x = maps.shape[1:]
    band_y, band_x = max(1, round(size_y * band_fraction)), max(1, round(size_x * band_fraction))
    peaks = maps[good].reshape(int(good.sum()), -1).argmax(axis=1)
    rows, cols = np.unravel_index(peaks, (size_y, size_x))
    in_band = ((rows < band_y) | (rows >= size_y - band_y) | (cols < band_x) | (cols >= size_x - band_x))
    band_area = 1 - (1 - 2 * band_y / size_y) * (1 - 2 * band_x / size_x)
    return {"fraction_in_border": float(in_band.mean()), "border_band_px": [band_y, band_x],
            "band_share_of_pixels": float(band_area), "good_images": int(good.sum())}


def f1_thresholds(maps, labels, masks, has_mask=None, defects=None) -> Dict[str, Optional[float]]:
    """The image and pixel F1-max thresholds of ``maps`` alone, exactly as ``compute_metrics``
    gives them (None where it leaves them undefined): what evaluation at the original size keeps
    from the maps at ``config.image_size``, where predict and exports score."""
    labels = np.asarray(labels)
    has_mask = np.ones(len(labels), bool) if has_mask is None else np.asarray(has_mask, bool)
    image = None if _image_reason(labels) else metrics.f1_max(metrics.image_scores(maps), labels)[1]
    pixel = None if _pixel_reason(labels, masks, has_mask, defects) else metrics.f1_max(maps, masks)[1]
    return {"image_threshold": image, "pixel_threshold": pixel}


def validation_threshold(validation_maps) -> float:
    """The segmentation threshold from normal validation maps alone: mean + 3 standard deviations
    of their pixel scores — the statistic MVTec AD 2's baselines binarize with (as RoBiS, 2025,
    describes them; the protocol leaves the choice to the method: ours follows the baselines)."""
    pixels = metrics.pooled(validation_maps, np.float64)
    return float(pixels.mean() + 3.0 * pixels.std())


def segmentation_f1(maps, masks, threshold: float) -> Optional[float]:
    """SegF1: the F1 of all test pixels, anomalous where score ≥ ``threshold``, against the masks
    (pooled over images, as MVTec AD 2 scores it); None without anomalous pixels."""
    truth = metrics.pooled(masks).astype(bool)
    if not truth.any():
        return None
    predicted = metrics.pooled(maps) >= threshold
    true_positives = int((predicted & truth).sum())
    return 2.0 * true_positives / (int(predicted.sum()) + int(truth.sum()))


def _au_spro_by_type(maps, regions, defects) -> Dict[str, Dict[str, Optional[float]]]:
    """LOCO's AU-sPRO per anomaly type, as its evaluator groups images: 'logical' and
    'structural' over the good images plus that type's, 'all' over every test image."""
    defects = np.asarray(defects if defects is not None else ["?"] * len(maps))
    groups = {"all": np.ones(len(maps), bool)}
    for kind in ("logical", "structural"):
        if f"{kind}_anomalies" in defects:
            groups[kind] = (defects == "good") | (defects == f"{kind}_anomalies")
    found = {}
    for group, chosen in groups.items():
        indices = np.flatnonzero(chosen)
        flat = [(n, r.mask, r.saturation) for n, i in enumerate(indices) for r in regions[i]]
        curve = metrics.spro_curve([maps[i] for i in indices], flat)
        found[group] = {str(limit): metrics.normalized_area(curve, limit)
                        for limit in metrics.SPRO_FPR_LIMITS}
    return found


def _per_defect_auroc(scores, labels, defects) -> Dict[str, Optional[float]]:
    """{defect: image AUROC of the good images vs that defect's images}."""
    if not defects or labels.all():
        return {}
    defects = np.asarray(defects)
    found = {}
    for defect in sorted(set(defects) - {"good"}):
        chosen = (labels == 0) | (defects == defect)
        found[defect] = metrics.auroc(scores[chosen], labels[chosen])
    return found


def decision_thresholds(result: dict, validation_scores: Callable[[], np.ndarray],
                        percentile: float) -> dict:
    """The thresholds predict and export use, and how each was chosen.

    Image: F1-max on the test set; without both classes there, the ``percentile`` of the
    validation images' scores (held-out normal training images; ``validation_scores`` is called
    only then). Pixel: F1-max on the test pixels, else the image threshold (a pixel that alone
    would make its image anomalous)."""
    image, image_rule = result["image_threshold"], "image F1-max on the test set"
    if image is None:
        scores = validation_scores()
        image = float(np.percentile(scores, percentile))
        why = result.get("unavailable", {}).get("image_f1_max", "no test F1")
        image_rule = (f"{percentile:g}th percentile of {len(scores)} validation image scores "
                      f"(test set: {why})")
    pixel, pixel_rule = result["pixel_threshold"], "pixel F1-max on the test set"
    if pixel is None:
        pixel, pixel_rule = image, "the image threshold (no pixel ground truth to fit one)"
    return {"image_threshold": image, "image_rule": image_rule,
            "pixel_threshold": pixel, "pixel_rule": pixel_rule}
