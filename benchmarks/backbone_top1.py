"""ImageNet top-1 of a converted backbone on the 300-photo sample, next to the PyTorch model's.

    python benchmarks/backbone_top1.py [--variant efficientnet_lite0] [--images ../shared/data/imagenet_sample_256]

The sample keeps files ``i*1000//300`` of the 1000 one-per-class photos sorted by WordNet id, so
file i (sorted) has class index ``i*1000//300``. Preprocessing: short side 256 (bilinear),
centre crop 224, ImageNet mean/std. Prints one JSON object.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_sample(folder: str, crop: int = 224):
    """-> images [N, crop, crop, 3] normalized float32, labels [N]."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    if len(names) != 300:
        raise SystemExit(f"{folder}: expected the 300-photo sample, found {len(names)} files")
    images = []
    for name in names:
        image = Image.open(os.path.join(folder, name)).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        array = np.asarray(image.crop((left, top, left + crop, top + crop)), np.float32) / 255.0
        images.append((array - MEAN) / STD)
    labels = np.array([i * 1000 // 300 for i in range(len(names))])
    return np.stack(images), labels


def flax_top1(variant: str, images: np.ndarray, labels: np.ndarray, batch: int = 50) -> float:
    from kdad_jax.kernels import compilation
    from kdad_jax.teachers import backbones

    backbone = backbones.load(variant, ("logits",))
    apply = compilation.jit(lambda x: backbone.module.apply(backbone.variables, x)["logits"])
    predictions = np.concatenate([np.asarray(apply(images[i:i + batch])).argmax(-1)
                                  for i in range(0, len(images), batch)])
    return float((predictions == labels).mean())


def torch_top1(variant: str, images: np.ndarray, labels: np.ndarray, weights: str) -> float:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(variant.replace("_", "-"), weights_path=weights).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    return float((logits.argmax(-1) == labels).mean())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="efficientnet_lite0")
    parser.add_argument("--images", default=os.path.join(HERE, "..", "..", "shared", "data", "imagenet_sample_256"))
    args = parser.parse_args()
    from kdad_jax.teachers import backbones

    images, labels = load_sample(args.images)
    start = time.perf_counter()
    result = {"variant": args.variant, "images": len(images),
              "weights": backbones.packaged_weights(args.variant),
              "jax_top1": flax_top1(args.variant, images, labels),
              "jax_seconds": time.perf_counter() - start}
    try:
        result["torch_top1"] = torch_top1(args.variant, images, labels, result["weights"])
    except ImportError as error:
        result["torch_top1"] = None
        result["torch_skipped"] = str(error)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
