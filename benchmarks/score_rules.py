"""Which image score follows the defects? Image AUROC of a trained run under several rules.

    python benchmarks/score_rules.py --config=configs/stfpm.py:cpu --workdir=W \
        --root=/tmp/tune --category=screw

Loads the run's checkpoint, computes its test maps [M, S, S] once and prints JSON: for each rule
the image AUROC, and where the good images' maps peak (``kdad_jax.evaluation.evaluate.border_maxima``:
fraction in the border band beside the band's share of the pixels). Rules:

  max              the map's maximum (what every method scores today)
  smoothed_max_s   the maximum after a Gaussian blur of σ = s pixels (anomalib's and PatchCore's
                   smoothing of the map, mirrored at the frame as their reflect padding: isolated
                   hot pixels lose, regions win)
  top_mean_p       the mean of the top p % of the map's pixels
  interior_max     the maximum outside the border band (what the score would be if the frame
                   never counted)

Run it on a tuning set (``python -m kdad_jax.data.synthetic``: defects pasted into held-out
training images), never on a test split you report.
"""

import argparse
import json
import os
import sys

import numpy as np
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SIGMAS = (2, 4, 8)
TOP_PERCENTS = (0.1, 1.0)


def rule_scores(maps: np.ndarray, band_fraction: float = 1 / 16) -> dict:
    """{rule: image scores [M]} for maps [M, S, S]."""
    flat = maps.reshape(len(maps), -1)
    scores = {"max": flat.max(axis=1)}
    for sigma in SIGMAS:
        scores[f"smoothed_max_{sigma}"] = np.array(
            [ndimage.gaussian_filter(m.astype(np.float64), sigma, mode="mirror").max() for m in maps])
    for percent in TOP_PERCENTS:
        k = max(1, int(round(flat.shape[1] * percent / 100)))
        scores[f"top_mean_{percent:g}"] = np.sort(flat, axis=1)[:, -k:].mean(axis=1)
    band = max(1, round(maps.shape[1] * band_fraction))
    scores["interior_max"] = maps[:, band:-band, band:-band].reshape(len(maps), -1).max(axis=1)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/FILE.py:PRESET of the run")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--root", required=True, help="dataset root (MVTec layout)")
    parser.add_argument("--category", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config key that changes only the maps (e.g. model.map_border=edge)")
    args = parser.parse_args()

    from kdad_jax import config_files
    from kdad_jax.evaluation import evaluate, metrics
    from kdad_jax.training import train
    from kdad_jax.data import dataset
    from kdad_jax.methods import get_method

    path, _, preset = args.config.partition(":")
    config = config_files.load(path).get_config(preset)
    config.data.root, config.data.category = args.root, args.category
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        parent = config
        for part in key.split(".")[:-1]:
            parent = parent[part]
        parent[key.split(".")[-1]] = type(parent[key.split(".")[-1]])(value)
    data = dataset.read_category(config.data.format, args.root, args.category, config.image_size)
    method = get_method(config)
    trained = train.load_trained(config, args.workdir, args.category, method)
    maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                 trained.stats, data.test, config.eval.batch_size)
    rules = {name: round(metrics.auroc(scores, data.test_labels), 4)
             for name, scores in rule_scores(maps).items()}
    print(json.dumps({"config": args.config, "set": args.set, "category": args.category, "workdir": args.workdir,
                      "image_size": config.image_size, "test_images": len(maps),
                      "pixel_auroc": round(metrics.auroc(maps, data.test_masks), 4),
                      "image_auroc_by_rule": rules,
                      "good_maxima": evaluate.border_maxima(maps, data.test_labels)}, indent=1))


if __name__ == "__main__":
    main()
