"""Blocks the config files share: the detectors' dataset, evaluation and export sections, the
pretraining jobs' image sources, and the settings every ``smoke`` preset uses.

Not a config: a config file loads it with ``config_files.sibling(__file__, "_common")`` (configs/
is data, not a package); ``--mode=describe`` reads the comments here as the keys' help.
"""

import ml_collections


def add_detector_data(c, validation_help: str = "") -> None:
    """``c.data``: a dataset folder (or the embedded one) read by every detector."""
    c.data = ml_collections.ConfigDict()
    c.data.root = ""              # MVTec-layout root; '' = embedded dataset generated offline
    c.data.format = "mvtec"       # folder layout: mvtec (also users' own folders) | visa | loco | mvtec_ad2
    c.data.category = "all"       # one name, a comma-separated list, or 'all'
    c.data.validation_fraction = 0.1  # held out of train/good: map calibration, fallback threshold
    c.data.num_threads = 2        # grain read threads
    c.data.device_data_mb = 2048  # training images kept in device memory up to this size (0: host)


def add_detector_eval(c, batch_size: int) -> None:
    """``c.eval`` and ``c.export``: how a detector is scored and what ``--mode=export`` writes."""
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = batch_size  # test images per evaluation batch
    c.eval.num_heatmaps = 8       # overlay PNGs per category
    c.eval.threshold_percentile = 99.0  # test set without anomalies: threshold = this percentile of validation scores
    c.eval.plots = True           # ROC / PRO curve PNG per category in W/plots/
    # Metrics at each test image's own size, maps resized to it (as MVTec's evaluators and papers
    # score); the cpu, demo and smoke presets score at image_size (faster; their published figures).
    c.eval.original_size = True
    # FPR limits of AU-PRO: `au_pro` at the first, `au_pro_at` at each (MVTec AD 2: (0.05,))
    c.eval.fpr_limits = (0.3,)

    c.export = ml_collections.ConfigDict()
    c.export.format = "jax_export"  # --mode=export writes: jax_export (StableHLO, any JAX platform) | onnx
    c.export.precision = "float32"  # ONNX only: float32 | float16 (GPUs) | int8 (CPU lines, calibrated on training images)


def score_short_presets_at_image_size(c, preset: str) -> None:
    """The ``cpu``, ``demo`` and ``smoke`` presets keep maps and masks at ``image_size``."""
    if preset in ("demo", "cpu", "smoke"):
        c.eval.original_size = False


def add_pretraining_images(c) -> None:
    """``c.data`` of a teacher-pretraining job: an image folder, a TFDS dataset, scikit-image's photos."""
    c.data = ml_collections.ConfigDict()
    c.data.root = ""              # a folder of images (searched recursively); '' = none
    c.data.tfds_name = ""         # e.g. "imagenet2012" prepared as array_record (the 'tfds' extra)
    c.data.tfds_split = "train"   # TFDS split to read
    c.data.tfds_data_dir = ""     # '' = TFDS's default (~/tensorflow_datasets)
    c.data.tfds_image_key = "image"  # TFDS feature that holds the image
    c.data.include_skimage = True  # also use the photos scikit-image ships (offline)


def smoke_steps(c, batch_size: int = 2) -> None:
    """A ``smoke`` preset's training: 3 steps, a checkpoint at step 2, a log line every step."""
    if "epochs" in c.train:
        c.train.epochs = 0
    c.train.steps = 3
    c.train.batch_size = batch_size
    c.train.checkpoint_every = 2
    c.train.log_every = 1
