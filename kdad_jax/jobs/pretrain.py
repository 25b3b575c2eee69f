"""Teacher pretraining jobs: images -> a teacher file a method's config loads.

    python -m kdad_jax.main --config=configs/efficientad_teacher.py --workdir=W      # PDN
    python -m kdad_jax.main --config=configs/students_teacher.py:p=33 --workdir=W    # patch net

The method names its output (``info['output']``, default ``teacher_pdn_<size>``) and, through
``info['export_key']``, the part of its params that is the teacher (a decoder used only for
training is dropped).

Writes ``W/teacher_pdn_<size>.msgpack`` (Flax variables of the padded PDN; float16 halves the
file and is what ``config.teacher.checkpoint`` reads back as float32), ``W/teacher_pdn_<size>.json``
(command, config, steps, final loss, backbone file and sha256, the file's own sha256) and
``W/teacher_pdn_<size>_target_stats.npz`` (the per-channel target mean/std). The loop, Orbax
checkpoints (``W/checkpoints/teacher``), resume and progress bar are the shared ones in train.py.
"""

import json
import os
import sys
import time

import grain
import jax
import numpy as np
from PIL import Image

from kdad_jax.training import checkpoint, parallel, train

from kdad_jax.teachers import params_file
from kdad_jax import files
from kdad_jax.training import logs
from kdad_jax.teachers import backbones
from kdad_jax.data import augment, pipeline
from kdad_jax.data import images as image_io
from kdad_jax.data import penalty as photo_sources
from kdad_jax.errors import UserError
from kdad_jax.methods import get_method
from kdad_jax.training.workdir import make as make_folder


class _TfdsSource:
    """Random access to a prepared TFDS dataset (array_record; no TensorFlow needed to read it),
    e.g. ``imagenet2012`` after ``tfds build``. Images resized to size × size (RGB uint8)."""

    def __init__(self, name: str, split: str, data_dir: str, image_key: str, size: int):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise UserError("reading a TFDS dataset needs the 'tfds' extra: "
                            "pip install -e '.[tfds]'") from None
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir or None)
        except Exception as error:  # noqa: BLE001 - tfds raises many kinds for a missing dataset
            raise UserError(f"TFDS dataset {name!r} (split {split!r}) could not be opened: "
                            f"{str(error).splitlines()[0]}") from None
        self.image_key, self.size = image_key, size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        image = np.asarray(self.source[index][self.image_key])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        return image_io.resize_rgb(Image.fromarray(image), self.size)


class _Concat:
    def __init__(self, sources):
        self.sources = [s for s in sources if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, index):
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[which][index - int(self.offsets[which])]


def _random_views(config) -> bool:
    """Random resized crops of the whole photos (ours, for small photo sets) instead of the
    paper's one square resize per image."""
    return config.pretrain.get("crop_scale", 0.0) > 0


def image_source(config):
    """The configured folder and/or TFDS dataset, plus scikit-image's photos when
    ``data.include_skimage`` (or when nothing else is configured; its textures, which the embedded
    dataset is made of, only with ``data.skimage_textures``). Elements are [S, S, 3] uint8, or
    with random views the photo with its shorter side S (cropped per step)."""
    size = config.image_size
    load = image_io.load_short_side if _random_views(config) else image_io.load_rgb
    sources = []
    if config.data.tfds_name:
        sources.append(_TfdsSource(config.data.tfds_name, config.data.tfds_split,
                                   config.data.tfds_data_dir, config.data.tfds_image_key, size))
    if config.data.root:
        sources.append(image_io.FolderSource(config.data.root, size, load=load, kind="pretraining"))
    if config.data.include_skimage or not sources:
        names = photo_sources.SKIMAGE_PHOTOS
        if not config.data.get("skimage_textures", True):
            names = tuple(n for n in names if n not in photo_sources.SKIMAGE_TEXTURES)
        prepare = image_io.resize_short_side if _random_views(config) else image_io.resize_rgb
        sources.append(photo_sources.skimage_photos(size, names, load=prepare))
    return _Concat(sources)


class _Subset:
    def __init__(self, source, indices):
        self.source, self.indices = source, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.source[self.indices[index]]


def split_holdout(source, every: int):
    """(training images, held-out images): every ``every``-th image (index ≡ every − 1) is held
    out, so a distillation loss can be measured on photos the teacher never saw. 0 = none."""
    if every <= 0:
        return source, _Subset(source, [])
    held = [i for i in range(len(source)) if i % every == every - 1]
    kept = [i for i in range(len(source)) if i % every != every - 1]
    return _Subset(source, kept), _Subset(source, held)


class _View:
    """One training view of a pretraining image: (random resized crop, flip/rotation, colour
    jitter when configured), then random grayscale. -> {'image': [S, S, 3] float32 in [0, 1]}."""

    def __init__(self, pre, size):
        self.size = size
        self.crop_scale = pre.get("crop_scale", 0.0)
        self.flip_rotate = pre.get("flip_rotate", False)
        self.color_jitter = pre.get("color_jitter", 0.0)
        self.grayscale_prob = pre.grayscale_prob

    def __call__(self, image, rng):
        if self.crop_scale > 0:
            image = augment.random_resized_crop(image, self.size, rng, (self.crop_scale, 1.0))
        if self.flip_rotate:
            image = augment.flip_and_rotate(image, rng)
        image = image.astype(np.float32) / 255.0
        if self.color_jitter > 0:
            image = augment.color_jitter_one(image, rng, self.color_jitter)
        return {"image": augment.random_grayscale(image, rng, self.grayscale_prob)}


def center_view(image: np.ndarray, size: int) -> np.ndarray:
    """The deterministic view of an image (its centred square at S × S), uint8."""
    if image.shape[:2] == (size, size):
        return image
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def batches(source, config, start_step: int):
    """grain pipeline indexed by step (a resume sees the same batches): shuffle, view, batch."""
    dataset = (grain.MapDataset.source(source).shuffle(config.seed).repeat()
               .random_map(_View(config.pretrain, config.image_size), seed=config.seed))
    return pipeline.process_batches(dataset, config, start_step)


def _stats_batches(source, config):
    count = min(len(source), config.pretrain.stats_images)
    for start in range(0, count, config.eval.batch_size):
        yield np.stack([center_view(source[i], config.image_size)
                        for i in range(start, min(count, start + config.eval.batch_size))]
                       ).astype(np.float32) / 255.0


def run(config, workdir: str) -> dict:
    start = time.time()
    make_folder(workdir)
    mesh = parallel.make_mesh()
    config = parallel.resolve_batch_size(config, mesh)
    method = get_method(config)
    source, held_out = split_holdout(image_source(config), config.data.get("holdout_every", 0))
    name = output_name(config, method)
    if parallel.is_writer():
        held = f" ({len(held_out)} more held out)" if len(held_out) else ""
        print(f"teacher pretraining: {len(source)} images{held}, backbone {config.pretrain.backbone}, "
              f"{name}, {config.train.steps} steps x batch {config.train.batch_size}", flush=True)
    rng_frozen, rng_init = jax.random.split(jax.random.key(config.seed))
    frozen, description = method.load_frozen(rng_frozen)
    tx = train.make_optimizer(config)
    checkpoints = "teacher" if name.startswith("teacher_pdn") else name  # one job per patch size
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints", checkpoints), config.train.checkpoint_every)
    restored = train.restore(mngr, method, tx, frozen, rng_init, mesh)
    if restored is None:
        state = train.initial_state(method, tx, frozen, rng_init)
        stats = method.prepare_stats(frozen, _stats_batches(source, config))
    else:
        state, stats = restored
        if parallel.is_writer():
            print(f"teacher: resuming from step {int(state.step)}", flush=True)
    state = train.run_steps(config, workdir, checkpoints, method, tx, state, frozen, stats,
                            batches(source, config, int(state.step)), mngr, mesh)
    checkpoint.save_state(mngr, state, stats, replace=True)
    mngr.close()
    state = state.replace(params=parallel.to_host(state.params))
    if not parallel.is_writer():
        return {"steps": int(state.step)}
    return _write_teacher(config, method, workdir, state, stats, description, time.time() - start)


def output_name(config, method) -> str:
    return method.info.get("output") or f"teacher_pdn_{config.model.size}"


def _final_loss(workdir: str, name: str):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    teacher = [r for r in lines if r.get("category") in ("teacher", name)]
    return teacher[-1]["loss"] if teacher else None


def _write_teacher(config, method, workdir, state, stats, description, seconds) -> dict:
    name = output_name(config, method)
    path = os.path.join(workdir, f"{name}.msgpack")
    dtype = np.float16 if config.pretrain.save_float16 else np.float32
    params = state.params
    if method.info.get("export_key"):
        params = {"params": params["params"][method.info["export_key"]]}
    params_file.save_params(path, jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), params))
    if stats:
        with files.replacing(os.path.join(workdir, f"{name}_target_stats.npz"), "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in stats.items()})
    record = {
        "teacher": os.path.abspath(path),
        "sha256": backbones.sha256(path),
        "dtype": np.dtype(dtype).name,
        "model_size": config.model.size if "model" in config else None,
        "model": {k: v for k, v in method.info.items() if k not in ("output", "export_key")},
        "backbone": description,
        "taps": list(config.pretrain.taps),
        "steps": int(state.step),
        "batch_size": config.train.batch_size,
        "final_loss": _final_loss(workdir, name),
        "seconds": round(seconds, 1),
        "command": " ".join([os.path.basename(sys.executable), "-m", "kdad_jax.main"] + sys.argv[1:]),
        "config": json.loads(config.to_json()),
        "environment": logs.environment(),
    }
    files.write_text(os.path.join(workdir, f"{name}.json"), json.dumps(record, indent=2))
    use = os.path.abspath(workdir) if name.startswith("teacher_patch") else path  # students read a folder
    print(f"teacher: {path} (sha256 {record['sha256'][:16]}..., {record['steps']} steps, "
          f"final loss {record['final_loss']}); use it with --config.teacher.checkpoint={use}", flush=True)
    return record
