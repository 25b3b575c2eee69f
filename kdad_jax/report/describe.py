"""``--mode=describe``: the resolved config, one line per key with its help.

The help of a key is the comment on the line that sets it in the config file (or in the config
files it builds on, e.g. stfpm.py for eca_mskdad.py); keys every config shares (seed, train.*,
eval.*, ...) fall back to ``COMMON_HELP``. The file's docstring lists the presets.
"""

import glob
import os
import re
from typing import Dict

from kdad_jax.config_files import flatten

COMMON_HELP = {
    "method": "which method's pure functions train and score (kdad_jax/methods/)",
    "task": "pretrain_teacher: this config distills a teacher file instead of training a detector",
    "seed": "seeds initialization, shuffling, augmentation and the validation split",
    "image_size": "images (and masks) are resized to image_size x image_size pixels",
    "teacher.arch": "the teacher backbone's architecture",
    "data.root": "dataset root; '' = the embedded dataset generated offline",
    "data.category": "one name, a comma-separated list, or 'all'",
    "data.validation_fraction": "share of train/good held out for validation (map calibration, "
                                "fallback threshold) when the dataset has no validation split",
    "data.num_threads": "grain read threads",
    "data.device_data_mb": "training (and penalty) images kept in device memory up to this many MB: "
                           "the host sends indices, the step gathers and augments; 0 = the host "
                           "prepares every batch",
    "train.parallel_categories": "categories trained at once as one program: stacked models, the "
                                 "step vmapped and split over the devices, each model at the "
                                 "configured batch (same results as one at a time)",
    "train.compute_dtype": "float32, or bfloat16: convolutions compute in bf16 in training, "
                           "evaluation and exports; parameters, optimizer state, losses and maps "
                           "stay float32",
    "train.steps": "optimizer steps (per category for detectors; 0 = from train.epochs)",
    "train.epochs": "passes over the training images (sets train.steps when > 0)",
    "train.learning_rate": "peak learning rate",
    "train.lr_drop_fraction": "the learning rate is multiplied by 0.1 after this fraction of the steps",
    "train.optimizer": "adam | sgd (both with coupled L2 weight decay, as PyTorch's weight_decay)",
    "train.momentum": "SGD momentum",
    "train.weight_decay": "coupled L2 weight decay (PyTorch's weight_decay, not AdamW)",
    "train.checkpoint_every": "save an Orbax checkpoint every this many steps (and on SIGTERM)",
    "train.log_every": "write losses to metrics.jsonl and TensorBoard every this many steps",
    "eval.batch_size": "images per jitted evaluation batch",
    "eval.num_heatmaps": "overlay PNGs per category in W/heatmaps/",
}

_ASSIGNMENT = re.compile(r"^    c\.([A-Za-z_][\w.]*)\s*=[^#]*(?:#\s*(.+?))?\s*$")
_COMMENT = re.compile(r"^    #\s*(.+?)\s*$")


def _named_siblings(config_path: str):
    """Config files beside ``config_path`` that its source names ('stfpm.py' or "stfpm")."""
    folder = os.path.dirname(os.path.abspath(config_path))
    with open(config_path) as f:
        source = f.read()
    return [p for p in sorted(glob.glob(os.path.join(folder, "*.py")))
            if os.path.abspath(p) != os.path.abspath(config_path) and any(f'"{name}"' in source for name in (os.path.basename(p), os.path.basename(p)[:-3]))]


def _bases(config_path: str):
    """The files ``config_path`` builds on, and theirs (eca_mskdad.py → stfpm.py → _common.py),
    the most basic first, so that a file's own help wins over what it builds on."""
    order, seen, stack = [], set(), [(os.path.abspath(config_path), False)]
    while stack:
        path, expanded = stack.pop()
        if expanded:
            order.append(path)
        elif path not in seen:  # two files naming each other are read once each
            seen.add(path)
            stack.append((path, True))
            stack.extend((os.path.abspath(base), False) for base in _named_siblings(path))
    return [p for p in order if p != os.path.abspath(config_path)]


def _file_help(path: str) -> Dict[str, str]:
    """Base-level settings (4-space indent) of one file: the inline comment, else the comment
    lines just above the assignment."""
    found: Dict[str, str] = {}
    above = []
    with open(path) as f:
        for line in f:
            comment = _COMMENT.match(line)
            if comment:
                above.append(comment.group(1))
                continue
            match = _ASSIGNMENT.match(line)
            if match and (match.group(2) or above):
                found[match.group(1)] = match.group(2) or " ".join(above)
            above = []
    return found


def help_from_sources(config_path: str) -> Dict[str, str]:
    """key path -> help, from ``config_path`` and the config files it builds on (its own win)."""
    found: Dict[str, str] = {}
    for path in _bases(config_path) + [config_path]:
        found.update(_file_help(path))
    return found


def describe(config, config_path: str) -> str:
    helps = {**COMMON_HELP, **help_from_sources(config_path)}
    rows = [(path, repr(value), helps.get(path, "")) for path, value in flatten(config)]
    width = max(len(f"{p} = {v}") for p, v, _ in rows)
    lines = [f"# {config_path} (override any key with --config.KEY=VALUE)"]
    for path, value, text in rows:
        entry = f"{path} = {value}"
        lines.append(f"{entry.ljust(width)}  # {text}" if text else entry)
    return "\n".join(lines)
