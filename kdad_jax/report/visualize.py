"""Heat-map overlay pictures (PIL only): image | heat-map overlay | ground truth."""

import os
from typing import List

import numpy as np
from PIL import Image, ImageDraw

from kdad_jax import files
from kdad_jax.data.records import Category

MIN_SIDE = 256  # pixels: panels of smaller images are enlarged (nearest) to this height


def heat_colors(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8, a jet-like blue→cyan→yellow→red ramp."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 0.5], [0, 0.4, 1], [0, 1, 1], [1, 1, 0], [1, 0.3, 0], [0.6, 0, 0]])
    position = v * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = position - low
    colors = stops[low[..., 0]] * (1 - frac) + stops[low[..., 0] + 1] * frac
    return (colors * 255).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5):
    """image [H, W, 3] uint8, map [H, W] -> blended [H, W, 3] uint8 on a fixed colour scale."""
    scaled = (amap - vmin) / max(vmax - vmin, 1e-12)
    return (image * (1 - alpha) + heat_colors(scaled) * alpha).astype(np.uint8)


def save_panel(path: str, image, amap, mask, vmin, vmax, title: str) -> None:
    """One PNG: input, overlay, ground-truth mask (white), with a caption."""
    gt = np.repeat((np.asarray(mask, np.uint8) * 255)[..., None], 3, axis=-1)
    canvas = captioned([image, overlay(image, amap, vmin, vmax), gt], title)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(path, canvas)


def save_png(path: str, picture: Image.Image) -> None:
    """``picture`` as ``path`` (written beside it, then renamed: see ``kdad_jax.files``)."""
    with files.replacing(path, "wb") as f:
        picture.save(f, format="PNG")


def captioned(columns, title: str) -> Image.Image:
    """[H, W, 3] uint8 pictures side by side, enlarged (nearest) to at least ``MIN_SIDE`` high,
    under a one-line caption."""
    panel = Image.fromarray(np.concatenate(columns, axis=1))
    scale = max(1, -(-MIN_SIDE // panel.height))  # small training sizes are enlarged to stay readable
    panel = panel.resize((panel.width * scale, panel.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (panel.width, panel.height + 16), (255, 255, 255))
    canvas.paste(panel, (0, 16))
    ImageDraw.Draw(canvas).text((2, 2), title, fill=(0, 0, 0))
    return canvas


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
        save_panel(path, data.test[i], maps[i], data.test_masks[i], vmin, vmax, title)
        paths.append(path)
    return paths
