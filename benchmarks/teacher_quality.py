"""How much of EfficientNet-Lite0's knowledge a distilled PDN teacher keeps, without training a detector.

    python benchmarks/teacher_quality.py [--image-size 128] [--pdn shipped=builtin:pdn_s_efficientnet_lite0]
        [--mvtec-root ../shared/data/mvtec_ad_256] [--photos ../shared/data/imagenet_sample_256]

For each feature extractor — every ``--pdn NAME=FILE`` teacher (default: the shipped one), a
random-init PDN-S and Lite0's own distillation targets — and each category (real MVTec ``bottle``
when the shared data is there, the embedded brick/gravel/grass), a nearest-neighbour detector with
no training: features of the training images (per-channel standardized with their mean/std) form
a memory bank; each test position's score is the squared distance to its nearest bank vector; an
image's score is the maximum over its positions; image AUROC over the test set (the columns the
teachers are judged on) and, for information, the pixel AUROC of the distance maps up-sampled to
the image (EfficientAD's padding and resize). The PDN runs as
EfficientAD runs its teacher (no padding, image_size² input); Lite0's targets are what the PDN is
distilled to (the taps of a 2× view, aggregated and pooled to 384 channels, configs/efficientad_teacher.py).

``heldout_loss``: the distillation loss (MSE to the standardized targets, as in training) on the
photos the ``ship`` recipe holds out (every 10th of the folder + scikit-image photos), at the
recipe's 256² backbone view; the target statistics are those of the training photos.

The memory bank is a seeded random subset of at most ``--bank`` vectors (default 50 000; bottle at
128² has 120 000) so that every extractor is judged on the same footing in minutes. Prints JSON.
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
sys.path.insert(0, PROJECT)
LITE0_TAPS = ("stage2_expand", "stage4_expand")


def nearest_neighbour_aurocs(train_features, test_features, labels, masks, bank_size: int, seed: int = 0):
    """train [N, h, w, C], test [M, h, w, C], labels [M], masks [M, S, S] -> (image AUROC of the
    max-over-positions NN distance, pixel AUROC of the NN-distance maps up-sampled to S²)."""
    import jax
    import jax.numpy as jnp
    from kdad_jax.evaluation import metrics
    from kdad_jax.methods.efficientad import resize_maps
    bank = train_features.reshape(-1, train_features.shape[-1]).astype(np.float32)
    mean, std = bank.mean(0), bank.std(0) + 1e-6
    bank = (bank - mean) / std
    if len(bank) > bank_size:
        bank = bank[np.random.default_rng(seed).choice(len(bank), bank_size, replace=False)]
    bank = jnp.asarray(bank)
    bank_sq = jnp.sum(bank ** 2, axis=1)
    grid, image_hw = test_features.shape[1:3], masks.shape[1:3]

    @jax.jit
    def distance_maps(queries):  # [b, h, w, C] -> [b, S, S]
        q = queries.reshape(-1, queries.shape[-1])
        distance = jnp.sum(q ** 2, axis=1, keepdims=True) - 2 * q @ bank.T + bank_sq[None]
        # PDN maps: EfficientAD's padding to S/4 then up-sampling; Lite0's grid is already S/4
        return resize_maps(jnp.min(distance, axis=1).reshape(queries.shape[0], *grid), image_hw)

    test = (test_features - mean) / std
    maps = np.concatenate([np.asarray(distance_maps(jnp.asarray(test[i:i + 4], jnp.float32)))
                           for i in range(0, len(test), 4)])
    image = metrics.auroc(maps.reshape(len(maps), -1).max(axis=1), labels)
    return image, metrics.auroc(maps.ravel(), masks.ravel())


def _batched(fn, images, batch: int = 8):
    return np.concatenate([np.asarray(fn(images[i:i + batch].astype(np.float32) / 255.0))
                           for i in range(0, len(images), batch)])


def pdn_extractor(path: str, image_size: int, seed: int = 0):
    """images [B, S, S, 3] in [0, 1] -> unpadded PDN-S features [B, h, w, 384]; '' = random init."""
    import jax
    from kdad_jax.teachers import params_file
    from kdad_jax.kernels import compilation
    from kdad_jax.teachers import shipped
    from kdad_jax.methods.base import imagenet_normalize
    from kdad_jax.models.pdn import PDN
    pdn = PDN("s", 384, padded=False)
    dummy = np.zeros((1, image_size, image_size, 3), np.float32)
    variables = jax.jit(pdn.init)(jax.random.key(seed), dummy)
    if path:
        variables = params_file.load_params(shipped.resolve(path), variables)
    return compilation.jit(lambda x: pdn.apply(variables, imagenet_normalize(x))), variables


def lite0_targets():
    """images [B, V, V, 3] in [0, 1] -> Lite0's raw distillation targets [B, V/8, V/8, 384]."""
    from kdad_jax.kernels import compilation
    from kdad_jax.teachers import backbones
    from kdad_jax.methods.teacher_pretraining import backbone_targets
    backbone = backbones.load("efficientnet_lite0", LITE0_TAPS)
    apply = functools.partial(backbone.module.apply, backbone.variables)
    return compilation.jit(lambda x: backbone_targets(apply, LITE0_TAPS, 1024, 384, x))


def upsample2(images: np.ndarray) -> np.ndarray:
    """[B, S, S, 3] uint8 -> [B, 2S, 2S, 3] uint8 bilinear (the backbone's 2× view)."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).resize((2 * im.shape[1], 2 * im.shape[0]),
                                                           Image.BILINEAR)) for im in images])


def categories(mvtec_root: str, image_size: int):
    """[(name, Category)] for bottle (if present) and the embedded categories."""
    from kdad_jax.data import dataset, embedded
    found = []
    if mvtec_root and os.path.isdir(os.path.join(mvtec_root, "bottle")):
        found.append(("bottle", dataset.read_category("mvtec", mvtec_root, "bottle", image_size)))
    root = embedded.ensure(os.path.join(tempfile.gettempdir(), "kdad_embedded_benchmark"))
    for name in embedded.CATEGORIES:
        found.append((name, dataset.read_category("mvtec", root, name, image_size)))
    return found


def heldout_losses(pdn_variables: dict, photos: str, batch: int = 8) -> dict:
    """{name: distillation loss on the ``ship`` recipe's held-out photos}: the recipe's own loss
    (methods/teacher_pretraining.py) on their centre views, with its target statistics computed
    once from the training photos' centre views, as the pretraining job computes them."""
    from kdad_jax import config_files
    from kdad_jax.kernels import compilation
    from kdad_jax.jobs import pretrain
    from kdad_jax.methods import get_method
    config = config_files.load(os.path.join(PROJECT, "configs", "efficientad_teacher.py")).get_config("ship")
    config.data.root = photos
    method = get_method(config)
    frozen, _ = method.load_frozen(None)
    train, held = pretrain.split_holdout(pretrain.image_source(config), config.data.holdout_every)

    def views(source, start, stop):  # [n, V, V, 3] float32 in [0, 1]
        return np.stack([pretrain.center_view(source[i], config.image_size)
                         for i in range(start, stop)]).astype(np.float32) / 255.0

    stats = method.prepare_stats(frozen, (views(train, i, min(len(train), i + batch))
                                          for i in range(0, len(train), batch)))
    loss = compilation.jit(lambda params, frozen, stats, images: method.loss(
        params, {}, frozen, stats, {"image": images}, None)[0])
    held_batches = [views(held, i, min(len(held), i + batch)) for i in range(0, len(held), batch)]
    return {name: sum(float(loss(variables, frozen, stats, b)) * len(b) for b in held_batches) / len(held)
            for name, variables in pdn_variables.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--pdn", action="append", default=None,
                        help="NAME=FILE of a PDN-S teacher (msgpack or builtin:NAME); repeatable")
    parser.add_argument("--mvtec-root", default=os.path.join(PROJECT, "..", "shared", "data", "mvtec_ad_256"))
    parser.add_argument("--photos", default=os.path.join(PROJECT, "..", "shared", "data", "imagenet_sample_256"))
    parser.add_argument("--bank", type=int, default=50000)
    args = parser.parse_args(argv)
    start = time.time()
    pdns = dict(p.split("=", 1) for p in (args.pdn or ["shipped=builtin:pdn_s_efficientnet_lite0"]))
    extractors = {name: pdn_extractor(path, args.image_size) for name, path in pdns.items()}
    extractors["random_pdn"] = pdn_extractor("", args.image_size)
    targets = lite0_targets()
    rows = {name: {} for name in [*extractors, "lite0"]}
    pixel_rows = {name: {} for name in rows}
    for category, data in categories(args.mvtec_root, args.image_size):
        features = {name: (_batched(extract, data.train), _batched(extract, data.test))
                    for name, (extract, _) in extractors.items()}
        features["lite0"] = (_batched(targets, upsample2(data.train)), _batched(targets, upsample2(data.test)))
        for name, (train_features, test_features) in features.items():
            rows[name][category], pixel_rows[name][category] = nearest_neighbour_aurocs(
                train_features, test_features, data.test_labels, data.test_masks, args.bank)
    if os.path.isdir(args.photos):
        losses = heldout_losses({n: v for n, (_, v) in extractors.items()}, args.photos)
        for name, value in losses.items():
            rows[name]["heldout_loss"] = value
        rows["lite0"]["heldout_loss"] = 0.0  # the targets themselves
    columns = [c for c in rows["lite0"] if c != "heldout_loss"]
    gaps = {name: {c: round(rows["lite0"][c] - rows[name][c], 4) for c in columns}
            for name in rows if name != "lite0"}
    print(json.dumps({
        "image_size": args.image_size, "bank": args.bank, "teachers": pdns,
        "image_auroc_and_loss": {n: {k: round(v, 4) for k, v in r.items()} for n, r in rows.items()},
        "lite0_minus_teacher": gaps,
        "max_gap": {n: max(g.values()) for n, g in gaps.items()},
        "pixel_auroc": {n: {k: round(v, 4) for k, v in r.items()} for n, r in pixel_rows.items()},
        "seconds": round(time.time() - start, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
