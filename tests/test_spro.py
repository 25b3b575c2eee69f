"""MVTec LOCO's AU-sPRO: hand-computed cases, a slow literal implementation, the layout's regions."""

import json

import numpy as np
import pytest

from kdad_jax.evaluation import evaluate, metrics
from kdad_jax.data import dataset, loco
from kdad_jax.errors import UserError
from tests.test_layouts import LOCO_DEFECTS, build_loco


def slow_spro_curve(maps, regions):
    """The evaluator's definition read literally: for every threshold t (each distinct score, and
    one below all), positive = score > t; per region min(tp / saturation, 1), averaged; FPR over
    pixels outside every region of their image. Points ordered from the highest threshold.
    ``maps``: [N, H, W] or a list of [H_i, W_i]."""
    maps = [np.asarray(m, np.float64) for m in maps]
    defect = [np.zeros(m.shape, bool) for m in maps]
    for index, mask, _ in regions:
        defect[index] |= mask
    thresholds = np.r_[np.unique(np.concatenate([m.ravel() for m in maps]))[::-1], -np.inf]
    normal = sum(int((~d).sum()) for d in defect)
    fprs, spros = [], []
    for t in thresholds:
        positive = [m > t for m in maps]
        fprs.append(sum(int((p & ~d).sum()) for p, d in zip(positive, defect)) / normal)
        spros.append(np.mean([min((positive[i] & m).sum() / s, 1.0) for i, m, s in regions]))
    return np.array(fprs), np.array(spros)


def slow_au_spro(maps, regions, limit):
    fpr, spro = slow_spro_curve(maps, regions)
    keep = fpr <= limit
    x, y = fpr[keep], spro[keep]
    if x[-1] < limit:  # interpolate at the limit between the last kept point and the next
        nxt = np.argmax(fpr > limit)
        y_limit = y[-1] + (spro[nxt] - y[-1]) * (limit - x[-1]) / (fpr[nxt] - x[-1])
        x, y = np.r_[x, limit], np.r_[y, y_limit]
    return np.trapezoid(y, x) / limit


def test_hand_computed_case():
    # Image 0: a 2-pixel region (scores 0.9, 0.1) saturating at 2 pixels; image 1 is good. Normal
    # pixels: 0.5, 0.2 (image 0) and 0.3, 0.4, 0.6, 0.05 (image 1): six of them.
    maps = np.array([[[0.9, 0.1, 0.5, 0.2]], [[0.3, 0.4, 0.6, 0.05]]])
    region = np.array([[True, True, False, False]])
    regions = [(0, region, 2.0)]
    # sPRO 0.5 from FPR 0 to 5/6 (0.9 is positive before any normal pixel, 0.1 after five), then 1.
    assert metrics.au_spro(maps, regions, 0.5) == pytest.approx(0.5)
    assert metrics.au_spro(maps, regions, 1.0) == pytest.approx(0.5 * 5 / 6 + 1 / 6)
    # Saturating at one pixel: 0.9 alone gives sPRO 1 at FPR 0.
    assert metrics.au_spro(maps, [(0, region, 1.0)], 0.05) == pytest.approx(1.0)
    # A fractional saturation of 1.5: 0.9 gives 1 / 1.5.
    assert metrics.au_spro(maps, [(0, region, 1.5)], 0.5) == pytest.approx(1 / 1.5)


def test_spro_is_capped_at_one_against_rounding():
    """Nine pixels of 1/9 each sum to 1 + 2e-16 in floating point; a region's sPRO is min(·, 1),
    so the curve ends at exactly 1 (a mean sPRO above 1 would lift every area)."""
    maps = np.zeros((1, 6, 6))
    region = np.zeros((6, 6), bool)
    region[:3, :3] = True
    maps[0][region] = np.linspace(1.0, 0.9, 9)
    _, spro = metrics.spro_curve(maps, [(0, region, 9.0)])
    assert spro.max() == 1.0 and spro[-1] == 1.0


def test_au_spro_defaults_to_locos_first_limit():
    """Without a limit, AU-sPRO is integrated to FPR 0.05 (the first of LOCO's limits, what the
    results table shows), as the literal implementation gives it."""
    rng = np.random.default_rng(3)
    maps = rng.random((2, 8, 8))
    region = np.zeros((8, 8), bool)
    region[2:5, 2:6] = True
    maps[0][region] += 0.2
    regions = [(0, region, 12.0)]
    assert metrics.SPRO_FPR_LIMITS[0] == 0.05
    assert metrics.au_spro(maps, regions) == pytest.approx(slow_au_spro(maps, regions, 0.05), abs=1e-12)
    assert metrics.au_spro(maps, regions) != pytest.approx(metrics.au_spro(maps, regions, 0.3), abs=1e-3)


def test_saturation_area_is_the_evaluators():
    assert loco.saturation_area(7, 0.5, relative=True) == 3      # int(3.5)
    assert loco.saturation_area(100, 6300, relative=False) == 100  # capped by the area
    assert loco.saturation_area(100, 5, relative=False) == 5
    assert loco.saturation_area(1, 0.5, relative=True) == 1      # ours: never zero


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_slow_literal_implementation(seed):
    """Random maps with many ties (scores rounded), overlapping regions, several regions per
    image, fractional saturations: every FPR limit of the issue."""
    rng = np.random.default_rng(seed)
    maps = np.round(rng.uniform(size=(4, 9, 11)), 1)
    regions = []
    for index in (0, 0, 1, 3):
        mask = np.zeros((9, 11), bool)
        y, x = rng.integers(0, 6, size=2)
        mask[y:y + rng.integers(1, 4), x:x + rng.integers(1, 5)] = True
        regions.append((index, mask, float(rng.uniform(0.5, mask.sum()))))
    maps[0][regions[0][1]] += 0.3  # some signal
    fpr, spro = metrics.spro_curve(maps, regions)
    slow_fpr, slow_spro = slow_spro_curve(maps, regions)
    np.testing.assert_allclose(fpr, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(spro, slow_spro, atol=1e-12)
    for limit in metrics.SPRO_FPR_LIMITS:
        assert metrics.au_spro(maps, regions, limit) == pytest.approx(slow_au_spro(maps, regions, limit), abs=1e-12)


def test_loco_layout_reads_regions_with_their_saturation(tmp_path):
    base = build_loco(tmp_path)
    data = dataset.read_category("loco", str(tmp_path), "boxes", 32)
    counts = [len(r) for r in data.test_regions]
    assert counts == [0, 0, 2, 1, 1, 1]  # the first logical image has two mask files
    first, extra = data.test_regions[2]
    assert (first.defect, extra.defect) == ("missing_part", "extra_part")
    # 12×12 = 144 original pixels saturating at 20: the same fraction of the resized region.
    assert first.saturation == pytest.approx(20 * first.mask.sum() / 144)
    assert extra.saturation == pytest.approx(5 * extra.mask.sum() / 36)
    structural = data.test_regions[4][0]
    assert structural.defect == "scratch" and structural.saturation == pytest.approx(structural.mask.sum())
    # the united mask is still what AU-PRO sees
    np.testing.assert_array_equal(data.test_masks[2], first.mask | extra.mask)
    # At the original size (config.eval.original_size): the evaluator's own areas, unscaled.
    masks, regions = dataset.original_ground_truth(data)
    first, extra = regions[2]
    assert first.mask.shape == masks[2].shape == (48, 56) and first.mask.sum() == 144
    assert (first.saturation, extra.saturation) == (20.0, 5.0)
    np.testing.assert_array_equal(masks[2], first.mask | extra.mask)

    (base / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS[1:]))
    with pytest.raises(UserError, match=r"000.png: pixel value 10 is not in defects_config.json"):
        dataset.read_category("loco", str(tmp_path), "boxes", 32)
    (base / "defects_config.json").write_text("{not json")
    with pytest.raises(UserError, match="defects_config.json: not a LOCO defects config"):
        dataset.read_category("loco", str(tmp_path), "boxes", 32)
    (base / "defects_config.json").unlink()
    assert dataset.read_category("loco", str(tmp_path), "boxes", 32).test_regions is None


def test_metrics_group_logical_and_structural_as_the_evaluator(tmp_path):
    """'logical' is over good + logical images only, 'structural' over good + structural: each
    FPR counts the good images' pixels and ignores the other type's. The good images' maps run
    hotter here, so a group that left them out would score higher (checked)."""
    build_loco(tmp_path)
    data = dataset.read_category("loco", str(tmp_path), "boxes", 32)
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=data.test_masks.shape) + 0.1 * data.test_masks
    defects = np.asarray(data.test_defects)
    maps[defects == "good"] += 0.2
    result = evaluate.compute_metrics(maps, data.test_labels, data.test_masks, data.test_has_mask,
                                      data.test_defects, data.test_regions)
    assert set(result["au_spro"]) == {"all", "logical", "structural"}
    for kind in ("logical", "structural"):
        with_good = np.flatnonzero((defects == "good") | (defects == f"{kind}_anomalies"))
        alone = np.flatnonzero(defects == f"{kind}_anomalies")
        assert 0 < len(alone) < len(with_good)
        for limit in metrics.SPRO_FPR_LIMITS:
            expected = slow_au_spro(maps[with_good], _regions(data, with_good), limit)
            assert result["au_spro"][kind][str(limit)] == pytest.approx(expected, abs=1e-12), (kind, limit)
        assert slow_au_spro(maps[alone], _regions(data, alone), 0.05) > result["au_spro"][kind]["0.05"] + 0.01


def _regions(data, chosen):
    return [(n, r.mask, r.saturation) for n, i in enumerate(chosen) for r in data.test_regions[i]]


@pytest.mark.parametrize("seed", [0, 1])
def test_images_of_different_sizes_equal_the_slow_implementation(seed):
    """Evaluation at the original size: maps and regions of differently sized images."""
    rng = np.random.default_rng(seed)
    shapes = [(9, 11), (7, 13), (12, 5)]
    maps = [np.round(rng.uniform(size=shape), 1) for shape in shapes]
    regions = []
    for index in (0, 1, 1, 2):
        mask = np.zeros(shapes[index], bool)
        y, x = rng.integers(0, 4, size=2)
        mask[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = True
        regions.append((index, mask, float(rng.uniform(0.5, mask.sum()))))
    fpr, spro = metrics.spro_curve(maps, regions)
    slow_fpr, slow_spro = slow_spro_curve(maps, regions)
    np.testing.assert_allclose(fpr, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(spro, slow_spro, atol=1e-12)
