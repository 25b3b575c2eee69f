"""An MVTec-layout folder -> a TFDS dataset in array_record format, for cluster jobs.

    python -m kdad_jax.data.tfds_build --root /data/mvtec_ad --out /shared/tfds [--categories all]
        [--image_size 0]

Writes ``<out>/kdad_mvtec/<category>/1.0.0/`` (one TFDS builder config per category, splits
``train`` and ``test``). Features are plain uint8 tensors (``image`` [H, W, 3] RGB, ``mask``
[H, W] 0/255) plus ``label``, ``defect`` and ``path``: TFDS's ``Image`` feature would need
TensorFlow, tensors do not, and neither writing nor reading here imports it. Every process of a
job then reads one array_record file per split from shared storage instead of walking thousands
of files: pass ``--config.data.root=<out>`` (data/dataset.py recognizes the layout).

``--image_size`` > 0 stores images already resized (bilinear; masks nearest) to cut the size of
the dataset; 0 keeps the originals, so any ``config.image_size`` can be used later.
"""

import argparse
import os
from typing import List

import numpy as np
from PIL import Image

from kdad_jax.data import dataset
from kdad_jax.data import images as image_io
from kdad_jax.data.tfds_source import NAME, VERSION, tfds_module
from kdad_jax.errors import UserError


def _examples(category_root: str, split: str, size: int):
    """(key, example) for one split of one MVTec-layout category folder."""
    split_root = os.path.join(category_root, split)
    if not os.path.isdir(split_root):
        raise UserError(f"{split_root}: no {split} folder")
    for defect in sorted(os.listdir(split_root)):
        folder = os.path.join(split_root, defect)
        if not os.path.isdir(folder) or (split == "train" and defect != "good"):
            continue
        for path in image_io.list_images(folder):
            rgb = image_io.to_rgb(image_io.open_image(path))  # as the folder reader: EXIF upright
            width, height = rgb.size
            if defect == "good":
                mask = Image.new("L", (width, height), 0)
            else:
                stem = os.path.splitext(os.path.basename(path))[0]
                mask_path = os.path.join(category_root, "ground_truth", defect, f"{stem}_mask.png")
                if not os.path.isfile(mask_path):
                    raise UserError(f"{mask_path}: ground-truth mask missing for {path}")
                mask = Image.fromarray((image_io.mask_values(image_io.open_image(mask_path)) > 0)
                                       .astype(np.uint8) * 255)
                if mask.size != (width, height):
                    raise UserError(f"{mask_path}: mask size {mask.size} differs from its image's")
            if size:
                rgb = rgb.resize((size, size), Image.BILINEAR)
                mask = mask.resize((size, size), Image.NEAREST)
            relative = os.path.relpath(path, category_root)
            yield relative, {
                "image": np.asarray(rgb, np.uint8),
                "mask": np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8),
                "label": np.int64(defect != "good"),
                "defect": defect,
                "path": relative,
            }


def _builder_class(root: str, categories: List[str], size: int):
    tfds = tfds_module()

    class KdadMvtec(tfds.core.GeneratorBasedBuilder):
        """MVTec-layout categories as uint8 tensors (see kdad_jax/data/tfds_build.py)."""

        name = NAME
        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in categories]
        url_infos = None  # nothing to download

        def _info(self):
            tensor = tfds.features.Tensor
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
                "mask": tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
                "label": tensor(shape=(), dtype=np.int64),
                "defect": tfds.features.Text(),
                "path": tfds.features.Text(),
            }))

        def _split_generators(self, dl_manager):
            category_root = os.path.join(root, self.builder_config.name)
            return {split: _examples(category_root, split, size) for split in ("train", "test")}

        def _generate_examples(self):  # splits are generated above
            raise NotImplementedError

    return KdadMvtec


def build(root: str, out: str, categories="all", image_size: int = 0) -> List[str]:
    """Write every category of ``root`` under ``out``; returns the category names."""
    names = dataset.list_categories("mvtec", root, categories)
    builder = _builder_class(os.path.abspath(root), names, image_size)
    for name in names:
        builder(config=name, data_dir=out, file_format="array_record").download_and_prepare()
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="MVTec-layout folder")
    parser.add_argument("--out", required=True, help="TFDS data_dir to write")
    parser.add_argument("--categories", default="all", help="'all' or a comma-separated list")
    parser.add_argument("--image_size", type=int, default=0, help="store resized (0 = originals)")
    args = parser.parse_args(argv)
    try:
        names = build(args.root, args.out, args.categories, args.image_size)
    except UserError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"wrote {', '.join(names)} to {os.path.join(args.out, NAME)}; train with "
          f"--config.data.root={args.out}")


if __name__ == "__main__":
    main()
