"""Metrics against scikit-learn, hand-made AU-PRO cases and a slow straightforward AU-PRO."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from kdad_jax.evaluation import evaluate, metrics


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels * 0.7, 1)  # rounding makes many ties
    assert metrics.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_curve_equals_sklearns_when_a_good_image_scores_highest():
    """The curve starts at (0, 0) even when the top threshold admits only negatives (a good
    image scoring highest): the first segment then runs along the FPR axis."""
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.3, 0.3, 0.1])
    fpr, tpr = metrics.roc_curve(scores, labels)
    want_fpr, want_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, want_tpr, atol=1e-15)
    assert metrics.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pooled_of_no_arrays_is_empty():
    """An empty sequence of maps pools to no elements (not one zero, which would be a score)."""
    assert metrics.pooled([], np.float64).shape == (0,)
    assert metrics.pooled([np.ones((2, 3)), np.zeros(4)]).tolist() == [1.0] * 6 + [0.0] * 4


def test_every_reported_metric_key_holds_its_metric():
    """``METRIC_KEYS`` names what a run reports: on a case that defines every metric, each key
    holds the value scikit-learn (AUROC) or our checked functions give, none is missing."""
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 8, 8), bool)
    masks[3:, 2:5, 2:5] = True
    maps = rng.random((6, 8, 8)) + masks
    labels = np.array([0, 0, 0, 1, 1, 1])
    result = evaluate.compute_metrics(maps, labels, masks)
    assert list(metrics.METRIC_KEYS) == ["image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max"]
    want = {"image_auroc": roc_auc_score(labels, maps.max(axis=(1, 2))),
            "pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
            "au_pro": metrics.au_pro(maps, masks),
            "image_f1_max": metrics.f1_max(maps.max(axis=(1, 2)), labels)[0],
            "pixel_f1_max": metrics.f1_max(maps, masks)[0]}
    assert {k: result[k] for k in metrics.METRIC_KEYS} == pytest.approx(want, abs=1e-12)


def test_auroc_single_class_is_none():
    assert metrics.auroc(np.arange(5.0), np.zeros(5)) is None


@pytest.mark.parametrize("seed", range(3))
def test_f1_max_matches_sklearn_curve(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 2)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best, threshold = metrics.f1_max(scores, labels)
    assert best == pytest.approx(f1[:-1].max(), abs=1e-12)
    predicted = scores >= threshold
    tp = np.sum(predicted & (labels == 1))
    assert best == pytest.approx(2 * tp / (predicted.sum() + labels.sum()), abs=1e-12)


def test_f1_max_when_the_best_threshold_has_low_precision_and_recall():
    """A good image scores highest and the last anomalous images score lowest: the best F1 (the
    top 8 hold 4 of the 10 anomalies: 4/9) is at a threshold where precision + recall = 0.9, the first
    threshold admits no anomaly (F1 0, not undefined), and recall divides by every anomaly."""
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1] + [0] * 86 + [1] * 6)
    scores = np.linspace(1.0, 0.0, len(labels))
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best, threshold = metrics.f1_max(scores, labels)
    assert best == pytest.approx(4 / 9, abs=1e-12) and best == pytest.approx(f1.max(), abs=1e-12)
    assert threshold == scores[7]


def test_au_pro_is_undefined_without_a_region_or_without_a_normal_pixel():
    maps = np.random.default_rng(0).random((2, 6, 6))
    assert metrics.pro_curve(maps, np.zeros((2, 6, 6), bool)) is None  # no defect region
    assert metrics.au_pro(maps, np.ones((2, 6, 6), bool)) is None  # no normal pixel: no FPR


def test_au_pro_one_region_fully_found():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 2:5, 2:5] = True
    maps = masks.astype(float)  # every anomalous pixel scores above every normal pixel
    assert metrics.au_pro(maps, masks) == pytest.approx(1.0)


def test_au_pro_two_regions_half_found():
    """Two regions; the detector finds exactly half of each at FPR 0, nothing more until FPR 1.

    PRO = 0.5 on the whole range [0, 0.3] → AU-PRO = 0.5.
    """
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 1:3, 1:5] = True     # region A: 8 px
    masks[0, 10:14, 10:14] = True  # region B: 16 px
    maps = np.zeros((1, 20, 20))
    maps[0, 1:3, 1:3] = 2.0        # half of A
    maps[0, 10:12, 10:14] = 2.0    # half of B
    maps[0][~masks[0]] = 1.0       # normal pixels all above the unfound halves
    assert metrics.au_pro(maps, masks) == pytest.approx(0.5)


def test_au_pro_fpr_cutoff_interpolates():
    """The region is found only once 60 % of the normal pixels are flagged: PRO = 0 on [0, 0.3]."""
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0, :4] = True  # 4 anomalous px; 96 normal
    maps = np.zeros((1, 10, 10))
    normal = np.flatnonzero(~masks[0].ravel())
    flat = maps[0].ravel()
    flat[normal[:48]] = 3.0   # half of the normal pixels score highest (FPR jumps 0 → 0.5)
    flat[masks[0].ravel()] = 2.0
    flat[normal[48:]] = 1.0
    assert metrics.au_pro(flat.reshape(1, 10, 10), masks) == pytest.approx(0.0)
    # Region found at FPR 0 → 1.0; a quarter of normals before it (FPR 0.25), then PRO 1:
    flat2 = np.where(masks[0].ravel(), 2.0, 1.0)
    flat2[normal[:24]] = 3.0
    area = (0.3 - 0.25) * 1.0  # PRO jumps from 0 to 1 at FPR 0.25 (a vertical step)
    assert metrics.au_pro(flat2.reshape(1, 10, 10), masks) == pytest.approx(area / 0.3)


def _slow_au_pro(maps, masks, limit=0.3):
    """Straightforward definition: loop over every distinct threshold (maps and masks [N, H, W]
    or lists of [H_i, W_i])."""
    regions = []
    for i, mask in enumerate(masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labeled == k) for k in range(1, count + 1)]
    normal = sum(int((~m).sum()) for m in masks)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([np.ravel(m) for m in maps]))[::-1]:
        flagged = [m >= t for m in maps]
        fpr = sum(int((f & ~m).sum()) for f, m in zip(flagged, masks)) / normal
        pro = np.mean([flagged[i][r].mean() for i, r in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    keep = fpr <= limit
    xs, ys = list(fpr[keep]), list(pro[keep])
    if xs[-1] < limit:
        j = np.argmax(fpr > limit)
        ys.append(pro[j - 1] + (pro[j] - pro[j - 1]) * (limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1]))
        xs.append(limit)
    return np.trapezoid(ys, xs) / limit


@pytest.mark.parametrize("seed", range(3))
def test_metrics_of_images_of_different_sizes(seed):
    """Evaluation at the original size: a list of [H_i, W_i] maps and masks — pixel AUROC and
    F1-max over the pooled pixels (scikit-learn), AU-PRO against the slow definition."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score
    rng = np.random.default_rng(seed)
    shapes = [(16, 16), (12, 20), (21, 9)]
    masks = []
    for shape in shapes:
        mask = np.zeros(shape, bool)
        y, x = rng.integers(0, 8, 2)
        mask[y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
        masks.append(mask)
    maps = [np.round(rng.uniform(size=m.shape) + 0.6 * m, 2) for m in masks]
    pooled_maps = np.concatenate([m.ravel() for m in maps])
    pooled_masks = np.concatenate([m.ravel() for m in masks])
    assert metrics.auroc(maps, masks) == pytest.approx(roc_auc_score(pooled_masks, pooled_maps), abs=1e-12)
    precision, recall, _ = precision_recall_curve(pooled_masks, pooled_maps)
    f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300))
    assert metrics.f1_max(maps, masks)[0] == pytest.approx(f1, abs=1e-12)
    assert metrics.au_pro(maps, masks) == pytest.approx(_slow_au_pro(maps, masks), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_au_pro_matches_slow_implementation(seed):
    """Three anomalous images and two good ones (empty masks) whose maps run hotter: the
    false-positive rate counts every normal pixel, the good images' included."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 16, 16), bool)
    for i in range(3):
        for _ in range(2):
            y, x = rng.integers(0, 12, 2)
            masks[i, y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
    maps = np.round(rng.uniform(size=masks.shape) + 0.6 * masks, 2)
    maps[3:] += 0.3
    value = metrics.au_pro(maps, masks)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(_slow_au_pro(maps, masks), abs=1e-9)


def test_au_pro_regions_are_eight_connected():
    """(1,1) touches (2,2) only diagonally: one 3-px region with 8-connectivity.

    Finding (1,1) alone gives PRO 1/3; 4-connectivity would give two regions and (1 + 0) / 2.
    """
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 2, 3] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 1, 1] = 1.0
    fpr, pro = metrics.pro_curve(maps, masks)
    assert pro[1] == pytest.approx(1 / 3)


def test_border_maxima_counts_good_images_peaking_in_the_frame_band():
    """32² maps, band 2 px: good images peaking at a corner, on an edge's inner band row, just
    inside the band and at the centre; an anomalous image peaking at a corner is not counted."""
    from kdad_jax.evaluation import evaluate
    maps = np.zeros((5, 32, 32))
    for n, (y, x) in enumerate([(0, 0), (16, 30), (2, 2), (16, 16), (31, 31)]):
        maps[n, y, x] = 1.0
    labels = np.array([0, 0, 0, 0, 1])
    found = evaluate.border_maxima(maps, labels)
    assert found["border_band_px"] == [2, 2] and found["good_images"] == 4
    assert found["fraction_in_border"] == 0.5  # (0, 0) and (16, 30); (2, 2) is inside
    assert found["band_share_of_pixels"] == pytest.approx(1 - (28 / 32) ** 2)
    assert evaluate.border_maxima(maps[4:], labels[4:]) is None
