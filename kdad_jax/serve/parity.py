"""Does the written artifact score what training scored? Checked on every ``--mode=export``.

The artifact is loaded with ``kdad_jax.serve.deploy`` (the runtime a user deploys with: JAX for
``jax_export``, ONNX Runtime for ONNX) and run on the category's test images read *from their
files* the way deploy reads them, and on its validation images; the in-process maps are the
training code's (``evaluate.predict_maps`` on the images the dataset reader decoded). The report
gives the largest map and image-score differences, how many decisions flip at the threshold (an
image scoring within the tolerance of the threshold flips by rounding alone and is counted apart) and
the latency per image at batch 1 and 8 (files in, maps out: decoding and resizing included),
and the test metrics (image AUROC, pixel AUROC, AU-PRO) of the artifact's maps beside the
training code's. A reduced precision's artifact also gets its own threshold, chosen by the
evaluation's rule on its own scores. A float32 artifact whose decisions flip, or whose maps differ by more than its
format's tolerance of the maps' range, fails the check: the caller does not write it. A reduced
precision (int8, float16) changes the maps by design: its report says by how much, and it is
written.
"""

import os
import statistics
import time
from typing import List, Optional

import numpy as np

from kdad_jax.evaluation import evaluate, metrics
from kdad_jax.serve import deploy

# Largest |exported − in-process| map difference allowed, as a fraction of the in-process maps'
# range: float32 rounding of another compilation (jax_export) or another runtime (ONNX Runtime).
TOLERANCE = {"jax_export": 1e-5, "onnx": 1e-4}
BATCH = 8
QUALITY_KEYS = ("image_auroc", "pixel_auroc", "au_pro")


def _sources(data) -> List:
    """The test images as their files where every file is there (a folder layout), else arrays."""
    paths = list(getattr(data, "test_paths", None) or [])
    if len(paths) == len(data.test) and all(os.path.isfile(p) for p in paths):
        return paths
    return list(data.test)


def _as_input(chosen: list):
    """A batch for ``detector.maps``: the file paths as they are, arrays stacked [B, H, W, C]."""
    return chosen if isinstance(chosen[0], str) else np.stack(chosen)


def _exported_maps(detector, sources: list) -> np.ndarray:
    return np.concatenate([detector.maps(_as_input(sources[i:i + BATCH]))
                           for i in range(0, len(sources), BATCH)])


def _latency_ms(detector, sources: list, batch: int) -> float:
    """Median milliseconds per image of ``detector.maps`` on ``batch`` inputs (after a warm-up)."""
    chosen = _as_input([sources[i % len(sources)] for i in range(batch)])
    times = []
    for _ in range(4):
        start = time.perf_counter()
        detector.maps(chosen)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:]) / batch


def _metrics(maps: np.ndarray, data) -> dict:
    """The evaluation's metrics of test maps [M, S, S] (thresholds included)."""
    return evaluate.compute_metrics(maps, data.test_labels, data.test_masks, data.test_has_mask,
                                    data.test_defects)


def _quality(result: dict) -> dict:
    """Image AUROC, pixel AUROC and AU-PRO of a ``_metrics`` result (None where undefined)."""
    return {key: result.get(key) for key in QUALITY_KEYS}


def check(folder: str, method, trained, data, test_maps: np.ndarray, threshold: Optional[float],
          export_format: str, precision: str = "float32", percentile: float = 99.0) -> dict:
    """The parity report of the artifact in ``folder`` (see the module docstring) against the
    training code's ``test_maps`` [M, S, S] of ``data.test``; ``ok`` False when it must not be
    written, ``worst`` naming the image whose map differs most. A reduced ``precision`` (int8,
    float16) is what the user asked for: its report says what it changes (the test metrics of its
    maps beside float32's) and never refuses; its maps' scale differs from float32's, so the
    report also gives ``artifact_threshold``: the image threshold chosen by the same rule on the
    artifact's own scores (image F1-max on the test set, else the ``percentile`` of its scores
    on the held-out normal training images), which export writes as the artifact's threshold."""
    detector = deploy.load(folder)
    sources = _sources(data)
    expected, got = np.asarray(test_maps), _exported_maps(detector, sources)
    if data.validation is not None and len(data.validation):
        args = (method, trained.params, trained.model_state, trained.frozen, trained.stats)
        expected = np.concatenate([expected, evaluate.predict_maps(*args, data.validation, BATCH)])
        got = np.concatenate([got, detector.maps(data.validation)])
    names = [str(s) if isinstance(s, str) else f"test image {i}" for i, s in enumerate(sources)]
    names += [f"validation image {i}" for i in range(len(expected) - len(names))]
    map_delta = np.abs(got.astype(np.float64) - expected).reshape(len(got), -1).max(axis=1)
    spread = float(expected.max() - expected.min()) or 1.0
    scores_expected, scores_got = metrics.image_scores(expected), metrics.image_scores(got)
    tolerance = TOLERANCE[export_format]
    flipped, on_threshold = _flips(scores_expected, scores_got, threshold, tolerance * spread)
    worst = int(np.argmax(map_delta))
    tested = len(data.test)
    artifact_metrics = _metrics(got[:tested], data)
    report = {
        "runtime": "onnxruntime" if export_format == "onnx" else "jax",
        "images": len(got),
        "from_files": isinstance(sources[0], str),
        "max_abs_map_delta": float(map_delta.max()),
        "map_range": spread,
        "tolerance": tolerance,
        "max_abs_score_delta": float(np.abs(scores_got.astype(np.float64) - scores_expected).max()),
        "threshold": threshold,
        "decisions_flipped": flipped,
        "flipped_on_threshold": on_threshold,
        "worst": names[worst],
        "latency_ms_per_image": {"batch_1": round(_latency_ms(detector, sources, 1), 2),
                                 f"batch_{BATCH}": round(_latency_ms(detector, sources, BATCH), 2)},
        "precision": precision,
        "test_metrics": {"training": _quality(_metrics(expected[:tested], data)),
                         "artifact": _quality(artifact_metrics)},
        "ok": bool(precision != "float32" or (flipped == 0 and map_delta.max() <= tolerance * spread)),
    }
    if precision != "float32" and threshold is not None:
        own = evaluate.decision_thresholds(
            artifact_metrics, lambda: metrics.image_scores(_exported_maps(detector, list(trained.validation))),
            percentile)
        changed, _ = _flips(scores_expected, scores_got, threshold, 0.0, own["image_threshold"])
        report.update(artifact_threshold=own["image_threshold"],
                      artifact_threshold_rule=f"{own['image_rule']}, on the {precision} artifact's scores",
                      decisions_changed_at_artifact_threshold=changed)
    return report


def _flips(scores_expected, scores_got, threshold, near_by, threshold_got=None):
    """(decisions that differ, of those how many are within ``near_by`` of the threshold):
    training's scores at ``threshold`` against the artifact's at ``threshold_got`` (the same by
    default). An image scoring within the tolerance of the threshold (F1-max puts it exactly on a
    test score) decides by rounding alone; it is counted apart, not as a flip."""
    if threshold is None:
        return 0, 0
    threshold_got = threshold if threshold_got is None else threshold_got
    flips = (scores_expected >= threshold) != (scores_got >= threshold_got)
    near = np.abs(scores_expected - threshold) <= near_by
    return int((flips & ~near).sum()), int((flips & near).sum())


def describe(name: str, report: dict) -> str:
    """One line for the log."""
    latency = report["latency_ms_per_image"]
    quality = ""
    if report["precision"] != "float32":
        pairs = [f"{k} {_fmt(report['test_metrics']['artifact'][k])} (float32 "
                 f"{_fmt(report['test_metrics']['training'][k])})" for k in QUALITY_KEYS]
        quality = f"; {report['precision']} test metrics: {', '.join(pairs)}"
        if report.get("artifact_threshold") is not None:
            quality += (f"; its own threshold {report['artifact_threshold']:.4g} (float32's "
                        f"{report['threshold']:.4g}) changes {report['decisions_changed_at_artifact_threshold']} "
                        f"decision(s)")
    return (f"{name}: parity of the {report['precision']} artifact ({report['runtime']}, {report['images']} images"
            f"{' from their files' if report['from_files'] else ''}): max |Δ map| "
            f"{report['max_abs_map_delta']:.2g} (maps span {report['map_range']:.3g}, tolerance "
            f"{report['tolerance']:g} of that), max |Δ score| {report['max_abs_score_delta']:.2g}, "
            f"{report['decisions_flipped']} decision(s) flipped"
            f"{' (+%d on the threshold)' % report['flipped_on_threshold'] if report['flipped_on_threshold'] else ''}; "
            f"{latency['batch_1']:g} ms per image at batch 1, {latency[f'batch_{BATCH}']:g} at "
            f"batch {BATCH}{quality}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def refusal(folder: str, report: dict) -> str:
    """Why the artifact was not written, naming the worst image."""
    return (f"{folder}: not written — the artifact does not score what training scored: "
            f"{report['decisions_flipped']} decision(s) flip at threshold {report['threshold']}, "
            f"max |Δ map| {report['max_abs_map_delta']:.3g} > {report['tolerance']:g} × "
            f"{report['map_range']:.3g} (worst: {report['worst']}); the previous export is kept")
