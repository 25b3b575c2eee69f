"""Maps for the test images -> metrics, heat-map pictures and the results table."""

import os
from typing import Dict, List

import numpy as np

from kdad_jax import inference, metrics, visualize
from kdad_jax.data.mvtec import Category
from kdad_jax.methods.base import Method

METRIC_KEYS = ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max")


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


def compute_metrics(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> Dict[str, float]:
    scores = maps.reshape(len(maps), -1).max(axis=1)
    image_f1, image_threshold = metrics.f1_max(scores, labels)
    pixel_f1, pixel_threshold = metrics.f1_max(maps, masks)
    return {
        "image_auroc": metrics.auroc(scores, labels),
        "pixel_auroc": metrics.auroc(maps, masks),
        "au_pro": metrics.au_pro(maps, masks),
        "image_f1_max": image_f1,
        "pixel_f1_max": pixel_f1,
        "image_threshold": image_threshold,
        "pixel_threshold": pixel_threshold,
    }


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


def mean_over_categories(per_category: Dict[str, dict]) -> Dict[str, float]:
    mean = {}
    for key in METRIC_KEYS:
        values = [r[key] for r in per_category.values() if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean


def format_table(per_category: Dict[str, dict], mean: Dict[str, float]) -> str:
    header = ["category", *METRIC_KEYS]
    rows = [[name, *(r.get(k) for k in METRIC_KEYS)] for name, r in per_category.items()]
    rows.append(["mean", *(mean[k] for k in METRIC_KEYS)])
    cells = [header] + [[row[0]] + ["-" if v is None else f"{v:.4f}" for v in row[1:]] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
