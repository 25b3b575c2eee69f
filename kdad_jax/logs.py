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
