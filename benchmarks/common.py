"""Shared benchmark helpers: timing, per-case child processes (so peak RSS is per case), JSON."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, NamedTuple


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case_in_child(script: str, case: dict, timeout: int = 1800) -> dict:
    """Run ``script --case JSON`` in a fresh interpreter; it prints one JSON object last.

    ``case['devices']`` > 1 forces that many XLA host (CPU) devices in the child."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if case.get("devices", 1) > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={case['devices']}").strip()
    proc = subprocess.run([sys.executable, script, "--case", json.dumps(case)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# benchmark model name -> (config file, preset, method name in the JSON)
MODELS = {"s": ("efficientad", "s", "efficientad-s"), "m": ("efficientad", "m", "efficientad-m"),
          "stfpm": ("stfpm", "", "stfpm-resnet18")}


def model_config(model: str, batch: int, image_size: int):
    """The config of benchmark model ``model`` at the benchmark's batch and image size.

    STFPM gets a random-init ResNet-18 teacher (``teacher.fallback=''``): speed does not depend on
    the weights, and no checkpoint is needed."""
    from kdad_jax import config_files
    name, preset, _ = MODELS[model]
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_files.load(os.path.join(project, "configs", f"{name}.py")).get_config(preset)
    config.image_size = image_size
    config.train.batch_size = batch
    if "fallback" in config.teacher:
        config.teacher.fallback = ""
    return config


def batch_keys(model: str):
    """The images a train step of ``model`` takes (the torch reference's train_step order)."""
    return ("image",) if model == "stfpm" else ("image", "image_aug", "penalty")


class JaxSetup(NamedTuple):
    config: Any
    method: Any
    frozen: Any
    params: Any
    model_state: Any   # BatchNorm statistics of the trained networks ({} for EfficientAD)
    images: Any        # [B, S, S, 3] float32 numpy, uniform in [0, 1)
    stats: Any         # teacher statistics over ``images``
    rng: Any           # the numpy generator that drew ``images``, for further draws


def jax_setup(model: str, batch: int, image_size: int) -> JaxSetup:
    """What both JAX benchmark cases start from: config, method, frozen teacher, trainable params,
    seeded random images and the teacher statistics on them."""
    import jax
    import numpy as np

    from kdad_jax.methods import get_method

    config = model_config(model, batch, image_size)
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch, image_size, image_size, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [images])
    return JaxSetup(config, method, frozen, params, model_state, images, stats, rng)


def torch_model(model: str, image_size: int):
    """The PyTorch reference model, seeded, with the same shapes as kdad_jax's."""
    import torch

    import torch_reference
    from kdad_jax.models.pdn import feature_size

    torch.manual_seed(0)
    if model == "stfpm":
        return torch_reference.STFPM("resnet18")
    return torch_reference.EfficientAD(model, image_size, feature_size(image_size, model))


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def module_available(*names: str) -> bool:
    try:
        for name in names:
            __import__(name)
        return True
    except ImportError:
        return False


def main(script: str, benchmark: str, unit: str, jax_case, torch_case, onnx_case=None) -> None:
    """CLI shared by the benchmarks: one child process per (model, batch, side); JSON on stdout.

    ``onnx_case`` (inference): a third side, the model exported to ONNX and run by ONNX Runtime,
    when the ``onnx`` extra is installed."""
    import argparse
    import platform

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="s,m", help=f"any of {','.join(MODELS)}")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", default="1",
                        help="comma-separated CPU device counts to force (XLA host devices); the "
                             "batch is the global batch, sharded over them; torch runs with 1 only")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        fn = {"jax": jax_case, "torch": torch_case, "onnxruntime": onnx_case}[case["side"]]
        print(json.dumps(fn(case["model"], case["batch"], case["image_size"], case["repeats"])))
        return
    device_counts = [int(d) for d in args.devices.split(",")]
    import jax
    results = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for devices in device_counts:
                case = {"model": model, "batch": batch, "image_size": args.image_size,
                        "repeats": args.repeats, "devices": devices}
                row = {"method": MODELS[model][2], "batch": batch, "image_size": args.image_size,
                       "devices": devices}
                row.update(run_case_in_child(script, {**case, "side": "jax"}))
                if "jax_s" in row:
                    row["jax_images_per_s"] = batch / row["jax_s"]
                if devices == 1 and torch_available():
                    row.update(run_case_in_child(script, {**case, "side": "torch"}))
                    if "jax_s" in row and "torch_s" in row:
                        row["jax_over_torch"] = row["jax_s"] / row["torch_s"]
                if devices == 1 and onnx_case and module_available("onnx", "onnxruntime"):
                    row.update(run_case_in_child(script, {**case, "side": "onnxruntime"}))
                    for side in ("onnxruntime", "onnxruntime_float16", "onnxruntime_int8"):
                        for other in ("jax", "torch"):
                            if f"{side}_s" in row and f"{other}_s" in row:
                                row[f"{side}_over_{other}"] = row[f"{side}_s"] / row[f"{other}_s"]
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)  # progress
    print(json.dumps({"benchmark": benchmark, "unit": unit,
                      "machine": f"{platform.machine()} {os.cpu_count()} cpus", "jax": jax.__version__,
                      "backend": jax.default_backend(), "cases": results}, indent=1))
