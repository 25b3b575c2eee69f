"""Maps for the test images -> metrics (with the reason when one is undefined), decision
thresholds and heat-map pictures. Tables and curve plots are in ``report/tables.py``."""

import os
from typing import Callable, Dict, List, Optional

import numpy as np

from kdad_jax import inference, metrics
from kdad_jax.data.dataset import Category
from kdad_jax.methods.base import Method
from kdad_jax.metrics import METRIC_KEYS  # noqa: F401 - re-exported: run.py and tests read it here
from kdad_jax.report import visualize


def predict_maps(method: Method, params, model_state, frozen, stats, images: np.ndarray,
                 batch_size: int):
    """[N, H, W, 3] uint8 -> maps [N, H, W] float32 in fixed-size jitted batches (no recompiles)."""
    anomaly_map = inference.jit(method.anomaly_map)
    maps = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].astype(np.float32) / 255.0
        count = len(chunk)
        if count < batch_size:  # pad the last batch to the compiled shape
            chunk = np.concatenate([chunk, np.zeros((batch_size - count, *chunk.shape[1:]), chunk.dtype)])
        maps.append(np.asarray(anomaly_map(params, model_state, frozen, stats, chunk))[:count])
    return np.concatenate(maps)


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
    if not masks.any():
        return "no anomalous pixels in the ground truth" if labels.any() else "no anomalous test images"
    if masks.all():
        return "no normal pixels in the ground truth"
    return None


def compute_metrics(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                    has_mask: Optional[np.ndarray] = None, defects: Optional[List[str]] = None,
                    regions: Optional[List[list]] = None) -> dict:
    """Metrics of one category: maps [N, H, W], labels [N], masks [N, H, W] bool.

    A metric the test set cannot define (one class only, anomalous images without masks) is None,
    and ``unavailable`` maps it to the reason. With LOCO's two anomaly types, image AUROC is also
    given per type (good images vs that type): ``image_auroc_logical``/``_structural``; with
    ``regions`` (LOCO's per-file regions, ``data/loco.py``) ``au_spro``: {'all' | 'logical' |
    'structural': {FPR limit: AU-sPRO}}, each over the good images and those of that type, and
    the table's ``au_spro_logical`` / ``_structural`` at FPR 0.05."""
    labels = np.asarray(labels)
    has_mask = np.ones(len(labels), bool) if has_mask is None else np.asarray(has_mask, bool)
    scores = maps.reshape(len(maps), -1).max(axis=1)
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
        result["au_pro"] = metrics.au_pro(maps, masks)
        result["pixel_f1_max"], result["pixel_threshold"] = metrics.f1_max(maps, masks)
    else:
        unavailable.update(dict.fromkeys(("pixel_auroc", "au_pro", "pixel_f1_max"), pixel_reason))
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
        curve = metrics.spro_curve(maps[indices], flat)
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


def color_range(maps: np.ndarray) -> List[float]:
    """The fixed colour scale of a category's heat maps: 1st to 99.9th percentile of its maps."""
    return [float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))]


def write_heatmaps(folder: str, data: Category, maps: np.ndarray, count: int) -> List[str]:
    """Overlays for ``count`` test images spread over good and defective ones; fixed colour scale."""
    if count <= 0:
        return []
    picks = np.unique(np.linspace(0, len(maps) - 1, min(count, len(maps))).round().astype(int))
    vmin, vmax = color_range(maps)
    paths = []
    for i in picks:
        name = f"{data.test_defects[i]}_{os.path.splitext(os.path.basename(data.test_paths[i]))[0]}.png"
        path = os.path.join(folder, data.name, name)
        title = f"{data.test_defects[i]}  score {maps[i].max():.3f}"
        visualize.save_panel(path, data.test[i], maps[i], data.test_masks[i], vmin, vmax, title)
        paths.append(path)
    return paths
