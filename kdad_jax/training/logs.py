"""Training and evaluation logs: ``W/metrics.jsonl`` and TensorBoard event files (tensorboardX).

    tensorboard --logdir W

One event directory per job under ``W/tensorboard/``: scalars ``<category>/loss`` (and the
method's other loss terms), ``<category>/learning_rate`` and, after evaluation,
``<category>/eval/<metric>`` at the final step. Only process 0 writes (callers check).
"""

import json
import os
from typing import Dict, Optional

TENSORBOARD_DIR = "tensorboard"


class Logs:
    """Appends JSON lines and TensorBoard scalars; ``close()`` flushes the event file."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.jsonl = os.path.join(workdir, "metrics.jsonl")
        self.writer = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR), flush_secs=30)

    def train(self, name: str, step: int, metrics: Dict[str, float], lr: float, elapsed: float):
        record = {"category": name, "step": step, "lr": lr, "seconds": round(elapsed, 3)}
        record.update({k: float(v) for k, v in metrics.items()})
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(f"{name}/{key}", float(value), step)
        self.writer.add_scalar(f"{name}/learning_rate", lr, step)

    def evaluation(self, name: str, step: int, result: Dict[str, Optional[float]]):
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{name}/eval/{key}", float(value), step)
        self.writer.flush()

    def close(self):
        self.writer.close()


# Packages whose version can move a result (numerics, image decoding/resizing, input order).
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "Pillow", "scikit-image", "grain", "scipy",
              "scikit-learn")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a figure depends on besides the config: package versions, CPU model, devices."""
    import importlib.metadata
    import os
    import platform

    import jax

    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "versions": {"python": platform.python_version(), **versions},
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }
