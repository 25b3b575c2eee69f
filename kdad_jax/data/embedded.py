"""The embedded default dataset: an MVTec-layout tree built offline from real images.

(ours) Normal images are 256² crops of the real texture photographs scikit-image ships in its
wheel (brick, grass, gravel; 512² grayscale), tinted per category, randomly rotated/flipped and
with ±5 % lighting changes. Anomalous test images get one defect with an exact mask:
``foreign`` (a patch of a real photo — astronaut, coffee, cat, rocket — pasted in an ellipse),
``scratch`` (a thick random polyline) or ``stain`` (an ellipse whose colour is shifted).
Generation is deterministic (seeded per category).

    python -m kdad_jax.data.embedded --out DIR
"""

import argparse
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = "1"
CATEGORIES = {  # name -> RGB tint of the grayscale texture
    "brick": (1.0, 0.72, 0.58),
    "gravel": (0.92, 0.9, 0.82),
    "grass": (0.7, 1.0, 0.6),
}
DEFECTS = ("foreign", "scratch", "stain")
PHOTOS = ("astronaut", "coffee", "cat", "rocket")
SIZE = 256
COUNTS = {"train": 80, "test_good": 20, "per_defect": 8}


def _texture(name: str) -> np.ndarray:
    import skimage.data
    return np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0


def _normal_image(texture: np.ndarray, tint, rng: np.random.Generator) -> np.ndarray:
    """[SIZE, SIZE, 3] float in [0, 1]: a random crop, rotation/flip and lighting change."""
    y, x = rng.integers(0, texture.shape[0] - SIZE + 1), rng.integers(0, texture.shape[1] - SIZE + 1)
    crop = np.rot90(texture[y:y + SIZE, x:x + SIZE], k=int(rng.integers(4)))
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    gain, offset = rng.uniform(0.95, 1.05), rng.uniform(-0.03, 0.03)
    return np.clip((crop[..., None] * np.asarray(tint, np.float32)) * gain + offset, 0, 1)


def _ellipse_mask(rng, min_r=12, max_r=40) -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    cx, cy = rng.integers(max_r, SIZE - max_r, size=2)
    rx, ry = rng.integers(min_r, max_r, size=2)
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    return mask


def _paste(image: np.ndarray, source: np.ndarray, mask: Image.Image) -> np.ndarray:
    alpha = (np.asarray(mask) > 127).astype(np.float32)[..., None]
    return image * (1 - alpha) + source * alpha


def _foreign(image, rng, photos):
    photo = photos[rng.integers(len(photos))]
    y, x = rng.integers(0, photo.shape[0] - SIZE + 1), rng.integers(0, photo.shape[1] - SIZE + 1)
    mask = _ellipse_mask(rng)
    return _paste(image, photo[y:y + SIZE, x:x + SIZE], mask), mask


def _scratch(image, rng, photos):
    del photos
    mask = Image.new("L", (SIZE, SIZE), 0)
    points = [tuple(int(v) for v in rng.integers(30, SIZE - 30, size=2))]
    for _ in range(int(rng.integers(2, 5))):
        step = rng.integers(-50, 51, size=2)
        points.append(tuple(int(v) for v in np.clip(np.add(points[-1], step), 5, SIZE - 5)))
    ImageDraw.Draw(mask).line(points, fill=255, width=int(rng.integers(3, 7)), joint="curve")
    color = np.full((SIZE, SIZE, 3), 0.05 if rng.uniform() < 0.5 else 0.95, np.float32)
    return _paste(image, color, mask), mask


def _stain(image, rng, photos):
    del photos
    mask = _ellipse_mask(rng, 10, 32)
    shift = np.asarray(rng.uniform(-0.35, 0.35, size=3), np.float32)
    blurred = np.asarray(Image.fromarray((image * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(3)), np.float32) / 255.0
    return _paste(image, np.clip(blurred + shift, 0, 1), mask), mask


DEFECT_FUNCTIONS = {"foreign": _foreign, "scratch": _scratch, "stain": _stain}


def save(array: np.ndarray, path: str, mode: str = "RGB") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "RGB":
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(array, mode).save(path)


def defect_photos():
    """The real photos pasted as foreign objects, [H, W, 3] float32 in [0, 1]."""
    import skimage.data
    return [np.asarray(getattr(skimage.data, p)(), np.float32) / 255.0 for p in PHOTOS]


def write_category(out: str, name: str, seed: int = 0) -> None:
    rng = np.random.default_rng([seed, list(CATEGORIES).index(name)])
    texture, tint = _texture(name), CATEGORIES[name]
    photos = defect_photos()
    root = os.path.join(out, name)
    for i in range(COUNTS["train"]):
        save(_normal_image(texture, tint, rng), os.path.join(root, "train", "good", f"{i:03d}.png"))
    for i in range(COUNTS["test_good"]):
        save(_normal_image(texture, tint, rng), os.path.join(root, "test", "good", f"{i:03d}.png"))
    for defect in DEFECTS:
        for i in range(COUNTS["per_defect"]):
            image, mask = DEFECT_FUNCTIONS[defect](_normal_image(texture, tint, rng), rng, photos)
            save(image, os.path.join(root, "test", defect, f"{i:03d}.png"))
            save(np.asarray(mask), os.path.join(root, "ground_truth", defect, f"{i:03d}_mask.png"), "L")


def ensure(out: str, categories: Sequence[str] = tuple(CATEGORIES), seed: int = 0) -> str:
    """Write the dataset to ``out`` unless a complete copy of this version is there. Returns ``out``."""
    marker = os.path.join(out, f".complete-v{VERSION}-seed{seed}")
    if os.path.exists(marker):
        return out
    for name in categories:
        write_category(out, name, seed)
    with open(os.path.join(out, "readme.txt"), "w") as f:
        f.write("kdad_jax embedded dataset (generated; see kdad_jax/data/embedded.py).\n"
                "Textures and photos: scikit-image's bundled sample data (skimage.data).\n")
    open(marker, "w").close()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (MVTec AD layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ensure(args.out, seed=args.seed)
    print(f"wrote {', '.join(CATEGORIES)} to {args.out}")


if __name__ == "__main__":
    main()
