"""Anomaly-detection metrics as the field computes them (numpy, exact, all thresholds).

- AUROC over image scores or pooled pixels;
- F1-max: the best 2PR/(P+R) over the precision–recall curve, with its threshold;
- AU-PRO as the official MVTec AD evaluator defines it: 8-connected ground-truth regions per
  image, the exact PRO-vs-FPR curve over every threshold, integrated up to FPR 0.3 (interpolated
  there) and divided by 0.3 — never by the curve's end point.
Functions return None when the labels hold a single class (the metric is undefined). Pixel
metrics take maps and masks as arrays [N, H, W] or as sequences of [H_i, W_i] arrays (each test
image at its own original size, as MVTec's evaluators score them).
"""

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

# The metrics every run reports per category (and their mean), in table order.
METRIC_KEYS = ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max")


def _descending_cumulative(scores: np.ndarray, weights_pos: np.ndarray, weights_neg: np.ndarray):
    """Cumulative positive/negative weights at each distinct threshold, scores high → low.

    Returns (neg_cum, pos_cum, thresholds); entry i counts every element with score ≥ thresholds[i].
    """
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    pos = np.cumsum(weights_pos[order], dtype=np.float64)
    neg = np.cumsum(weights_neg[order], dtype=np.float64)
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return neg[last_of_tie], pos[last_of_tie], sorted_scores[last_of_tie]


def pooled(values, dtype=None) -> np.ndarray:
    """All elements of an array, or of a sequence of differently shaped arrays, as one flat array."""
    if isinstance(values, (list, tuple)):
        return np.concatenate([np.asarray(v, dtype).ravel() for v in values]) if values else np.zeros(0, dtype)
    return np.asarray(values, dtype).ravel()


def image_scores(maps) -> np.ndarray:
    """[N] image scores: the max of each map ([N, H, W], or a sequence of [H_i, W_i] maps)."""
    return np.array([np.max(m) for m in maps])


def _binary_counts(scores, labels):
    scores = pooled(scores, np.float64)
    labels = pooled(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return _descending_cumulative(scores, labels.astype(np.float64), (~labels).astype(np.float64))


def roc_curve(scores, labels) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); None for one class."""
    counts = _binary_counts(scores, labels)
    if counts is None:
        return None
    fps, tps, _ = counts
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def auroc(scores, labels) -> Optional[float]:
    curve = roc_curve(scores, labels)
    if curve is None:
        return None
    fpr, tpr = curve
    return float(np.trapezoid(tpr, fpr))


def f1_max(scores, labels) -> Tuple[Optional[float], Optional[float]]:
    """(best F1, the score threshold reaching it: predict anomalous when score ≥ threshold)."""
    counts = _binary_counts(scores, labels)
    if counts is None:
        return None, None
    fps, tps, thresholds = counts
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def _area_until(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) for x in [0, limit]; x ascending, y interpolated at limit."""
    end = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:end], y[:end]
    if end < len(x) and xs[-1] < limit:
        y_limit = ys[-1] + (y[end] - ys[-1]) * (limit - xs[-1]) / (x[end] - xs[-1])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return float(np.trapezoid(ys, xs))


def pro_curve(maps, masks):
    """(fpr, pro) over all thresholds. maps [N, H, W] float, masks [N, H, W] bool (or sequences
    of [H_i, W_i] arrays)."""
    structure = np.ones((3, 3), bool)  # 8-connectivity
    region_weights, regions = [], 0
    for mask in masks:
        mask = np.asarray(mask, bool)
        labeled, count = ndimage.label(mask, structure=structure)
        weights = np.zeros(mask.shape, np.float64)
        if count:
            sizes = np.bincount(labeled.ravel())
            weights = np.where(labeled > 0, 1.0 / sizes[labeled], 0.0)
            regions += count
        region_weights.append(weights.ravel())
    normal = ~pooled(masks).astype(bool)
    if regions == 0 or not normal.any():
        return None
    fp_weights = normal.astype(np.float64) / normal.sum()
    fps, pros, _ = _descending_cumulative(pooled(maps, np.float64), np.concatenate(region_weights) / regions,
                                          fp_weights)
    return np.r_[0.0, fps], np.r_[0.0, pros]


def normalized_area(curve, fpr_limit: float) -> Optional[float]:
    """Area under a (fpr, y) curve for FPR ≤ ``fpr_limit``, divided by it; None for no curve."""
    if curve is None:
        return None
    return _area_until(*curve, fpr_limit) / fpr_limit


def au_pro(maps, masks, fpr_limit: float = 0.3) -> Optional[float]:
    """Normalized area under the PRO curve for FPR ≤ ``fpr_limit`` (1.0 = perfect)."""
    return normalized_area(pro_curve(maps, masks), fpr_limit)


# --- MVTec LOCO AD's saturated per-region overlap (sPRO) -----------------------------------------

SPRO_FPR_LIMITS = (0.05, 0.1, 0.3, 1.0)


def spro_curve(maps: np.ndarray, regions: Sequence[Tuple[int, np.ndarray, float]]):
    """(fpr, mean sPRO) over all thresholds, as MVTec LOCO's evaluator defines them.

    maps [N, H, W]; ``regions``: (image index, bool mask [H, W], saturation area in pixels) — one
    per ground-truth mask file (a "channel" in the evaluator), overlapping or not. At threshold t
    a pixel is positive when its score > t; a region's sPRO is min(positive pixels in it /
    saturation area, 1); the curve's y is the mean over regions. The FPR counts the pixels of all
    N images that lie outside every region of their image. Every distinct score is a threshold,
    so the curve is exact (the evaluator refines a threshold grid towards it).

    Exact in one sort: a region's pixels, taken from the highest score down, each add
    1 / (saturation · regions) until ``saturation`` of them have been counted, then nothing; the
    curve is sampled only where a run of equal scores ends, so the order inside a run is moot.
    ``saturation`` may be fractional (masks resized from the original size): min(tp / s, 1).
    """
    maps = [np.asarray(m, np.float64) for m in maps]
    if not regions:
        return None
    defect = [np.zeros(m.shape, bool) for m in maps]
    for index, mask, _ in regions:
        defect[index] |= mask
    normal_scores = np.concatenate([m[~d] for m, d in zip(maps, defect)])
    if not normal_scores.size:
        return None
    scores = [normal_scores]
    positive = [np.zeros(scores[0].size)]
    for index, mask, saturation in regions:
        inside = np.sort(maps[index][mask])[::-1]
        # The k-th pixel adds the part of [k, k + 1) below the saturation (a fractional
        # saturation, from a resized mask, lets one pixel add part of its share).
        rank = np.arange(inside.size, dtype=np.float64)
        weights = (np.minimum(rank + 1, saturation) - np.minimum(rank, saturation)) / (
            saturation * len(regions))
        scores.append(inside)
        positive.append(weights)
    negative = [np.full(scores[0].size, 1.0 / scores[0].size)] + [np.zeros(s.size) for s in scores[1:]]
    fps, spros, _ = _descending_cumulative(np.concatenate(scores), np.concatenate(positive),
                                           np.concatenate(negative))
    return np.r_[0.0, fps], np.r_[0.0, np.minimum(spros, 1.0)]


def au_spro(maps, regions, fpr_limit: float = 0.05) -> Optional[float]:
    """Area under the mean-sPRO curve for FPR ≤ ``fpr_limit``, divided by ``fpr_limit``."""
    return normalized_area(spro_curve(maps, regions), fpr_limit)
