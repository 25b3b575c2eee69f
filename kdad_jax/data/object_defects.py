"""Defects of the object, not of a patch: what a plain-background part or a placed component
shows on a line (ours: the tuning set's harder kinds; the pasted kinds are in ``embedded``).

``faint``      a small (radius 3–8 px at 256²) low-contrast (±6–12 % of the range) blob on the object
``missing``    a bite (radius 8–18 px) out of the object's outline painted over from its
               surroundings (biharmonic inpainting: the thread, lead or edge is gone, the
               background continues)
``misplaced``  the object's central region turned by 8–25° or moved by 8–20 px: the part is
               placed wrongly (a defect of aligned parts only — on parts that lie at random angles
               it is normal variation, so leave it out of their tuning sets)

Each returns ``(image, mask)``: the image differs from the input only inside the mask, and the mask
is where it differs. Object pixels are those whose colour lies far from the frame's median (a plain
background); where the frame is not plain (a board, a texture) the whole interior counts as object.
"""

import numpy as np
from PIL import Image
from scipy import ndimage

MARGIN = 24  # defects start this far from the frame (px at 256²)


def object_mask(image: np.ndarray) -> np.ndarray:
    """[H, W] bool: the object on a plain background, or the whole interior where there is none."""
    frame = np.concatenate([image[:8].reshape(-1, 3), image[-8:].reshape(-1, 3),
                            image[:, :8].reshape(-1, 3), image[:, -8:].reshape(-1, 3)])
    median = np.median(frame, axis=0)
    spread = np.percentile(np.abs(frame - median).max(axis=1), 95)
    interior = np.zeros(image.shape[:2], bool)
    interior[MARGIN:-MARGIN, MARGIN:-MARGIN] = True
    if spread > 0.15:
        return interior
    far = np.abs(image - median).max(axis=-1) > max(0.12, 2 * spread)
    far = ndimage.binary_opening(far, iterations=2) & interior
    return far if far.sum() > 200 else interior


def _centre_on(obj: np.ndarray, rng) -> tuple:
    ys, xs = np.nonzero(obj)
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def _disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _with_mask(image, changed, mask):
    mask = mask & (np.abs(changed - image).max(axis=-1) > 1.5 / 255)
    return np.where(mask[..., None], changed, image), Image.fromarray(mask.astype(np.uint8) * 255, "L")


def faint(image, rng, photos=None):
    obj = object_mask(image)
    cy, cx = _centre_on(obj, rng)
    disk = _disk(image.shape[:2], cy, cx, int(rng.integers(3, 9)))
    shift = rng.choice([-1, 1]) * rng.uniform(0.06, 0.12)
    return _with_mask(image, np.clip(image + shift, 0, 1), disk & ndimage.binary_dilation(obj, iterations=2))


def missing(image, rng, photos=None):
    from skimage.restoration import inpaint_biharmonic
    obj = object_mask(image)
    edge = obj & ~ndimage.binary_erosion(obj, iterations=2)
    cy, cx = _centre_on(edge if edge.any() else obj, rng)  # a bite out of the part's outline
    disk = _disk(image.shape[:2], cy, cx, int(rng.integers(8, 19)))
    region = disk & ndimage.binary_dilation(obj, iterations=3)
    top, bottom = max(0, cy - 40), min(image.shape[0], cy + 41)
    left, right = max(0, cx - 40), min(image.shape[1], cx + 41)
    window = inpaint_biharmonic(image[top:bottom, left:right], region[top:bottom, left:right],
                                channel_axis=-1)
    filled = image.copy()
    filled[top:bottom, left:right] = window
    return _with_mask(image, np.clip(filled, 0, 1), region)


def misplaced(image, rng, photos=None):
    obj = object_mask(image)
    ys, xs = np.nonzero(obj)
    cy, cx = float(ys.mean()), float(xs.mean())
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    if rng.uniform() < 0.5:
        moved = pil.rotate(float(rng.choice([-1, 1]) * rng.uniform(8, 25)), Image.BILINEAR,
                           center=(cx, cy))
    else:
        dy, dx = rng.choice([-1, 1], size=2) * rng.uniform(8, 20, size=2)
        moved = pil.transform(pil.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), Image.BILINEAR)
    moved = np.asarray(moved, np.float32) / 255.0
    half = 0.3 * image.shape[0]
    box = np.zeros(obj.shape, bool)
    box[int(max(0, cy - half)):int(cy + half), int(max(0, cx - half)):int(cx + half)] = True
    changed = ndimage.binary_closing(np.abs(moved - image).max(axis=-1) > 0.1, iterations=6)
    return _with_mask(image, moved, box & ndimage.binary_fill_holes(changed))
