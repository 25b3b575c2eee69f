"""A tuning set without test data: defects pasted into held-out *training* images.

    python -m kdad_jax.data.synthetic --root /data/mvtec_ad --category bottle --out /tmp/tune

Choosing an image size, a step count or a learning rate on a dataset's test split leaks it into
the result. This writes an MVTec-layout category ``<out>/<category>/`` from the training images
alone: a seeded ``--holdout`` fraction of ``train/good`` is set aside; half of it becomes
``test/good``, the other half gets one defect each — a pasted patch of a real photo
(``foreign``), a scratch or a colour stain, with exact masks (the embedded dataset's defects,
``kdad_jax/data/embedded.py``) — and the rest stays ``train/good``. ``--defects`` picks the kinds:
the pasted ones are large and high-contrast, and every preset finds them; ``faint``, ``missing``
and ``misplaced`` (``kdad_jax/data/object_defects.py``) are small, low-contrast or of the whole
object, like the defects of small parts on a plain background (screw) or of placed components
(transistor)::

    python -m kdad_jax.data.synthetic --root R --category screw --defects faint,missing --out DIR

Train and evaluate a preset on it as on any folder (``--config.data.root=<out>``), then run the
chosen settings once on the real test split. Images are written at 256² (the defect sizes are set
for that side).
"""

import argparse
import os

import numpy as np

from kdad_jax.data import embedded, object_defects
from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError


DEFECT_FUNCTIONS = {**embedded.DEFECT_FUNCTIONS, "faint": object_defects.faint,
                    "missing": object_defects.missing, "misplaced": object_defects.misplaced}


def write_tuning_category(root: str, category: str, out: str, holdout: float = 0.3, seed: int = 0,
                          defects=embedded.DEFECTS) -> dict:
    """Write ``out/category`` (see the module docstring). Returns the image counts per folder."""
    unknown = [d for d in defects if d not in DEFECT_FUNCTIONS]
    if unknown or not defects:
        raise UserError(f"--defects: {', '.join(unknown) or 'none given'} not among "
                        f"{', '.join(DEFECT_FUNCTIONS)}")
    folder = os.path.join(root, category, "train", "good")
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no train/good folder (MVTec layout expected)")
    skipped = []
    images, _ = image_io.read_images(image_io.list_images(folder), embedded.SIZE, skipped)
    if images is None or len(images) < 6:
        raise UserError(f"{folder}: at least 6 readable training images are needed, "
                        f"{0 if images is None else len(images)} found")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    held = max(4, int(round(holdout * len(images))))
    good, defective, train = order[:held // 2], order[held // 2:held], order[held:]
    target = os.path.join(out, category)
    for i, index in enumerate(sorted(train)):
        embedded.save(images[index] / 255.0, os.path.join(target, "train", "good", f"{i:03d}.png"))
    for i, index in enumerate(sorted(good)):
        embedded.save(images[index] / 255.0, os.path.join(target, "test", "good", f"{i:03d}.png"))
    photos = embedded.defect_photos()
    counts = {"train/good": len(train), "test/good": len(good)}
    for i, index in enumerate(sorted(defective)):
        defect = defects[i % len(defects)]
        image, mask = _visible_defect(defect, images[index] / 255.0, rng, photos, folder)
        number = counts.get(f"test/{defect}", 0)
        embedded.save(image, os.path.join(target, "test", defect, f"{number:03d}.png"))
        embedded.save(np.asarray(mask), os.path.join(target, "ground_truth", defect,
                                                     f"{number:03d}_mask.png"), "L")
        counts[f"test/{defect}"] = number + 1
    return counts


def _visible_defect(defect, image, rng, photos, folder, tries=5):
    """A defect that changed at least one pixel (a faint blob or a moved part can vanish on a
    featureless image): redrawn up to ``tries`` times."""
    for _ in range(tries):
        changed, mask = DEFECT_FUNCTIONS[defect](image, rng, photos)
        if np.asarray(mask).any():
            return changed, mask
    raise UserError(f"{folder}: a '{defect}' defect changed no pixel in {tries} tries "
                    "(featureless images?): choose other --defects")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root in the MVTec layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--out", required=True, help="output root (MVTec layout)")
    parser.add_argument("--holdout", type=float, default=0.3, help="fraction of train/good set aside")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defects", default=",".join(embedded.DEFECTS),
                        help=f"comma-separated kinds among {', '.join(DEFECT_FUNCTIONS)}")
    args = parser.parse_args(argv)
    try:
        counts = write_tuning_category(args.root, args.category, args.out, args.holdout, args.seed,
                                       tuple(d for d in args.defects.split(",") if d))
    except UserError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {os.path.join(args.out, args.category)}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
