"""EfficientAD pieces against direct numpy computations."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdad_jax.methods import efficientad, get_method
from tests.conftest import PROJECT, np_bilinear_upsample

sys.path.insert(0, str(PROJECT / "configs"))
import efficientad as efficientad_config  # noqa: E402  (configs/ is data, not a package)


def test_hard_feature_loss_equals_numpy():
    d = np.random.default_rng(0).exponential(size=(2, 7, 7, 16)).astype(np.float32)
    threshold = np.quantile(d, 0.999)
    expected = d[d >= threshold].mean()
    assert float(efficientad.hard_feature_loss(jnp.asarray(d), 0.999)) == pytest.approx(expected, rel=1e-5)
    assert float(efficientad.hard_feature_loss(jnp.asarray(d), 0.5)) == pytest.approx(
        d[d >= np.quantile(d, 0.5)].mean(), rel=1e-5)


def test_hard_feature_loss_keeps_elements_equal_to_the_quantile():
    """The reference's ``distance[distance >= quantile].mean()``: on 0..1000 the 0.999 quantile
    is the element 999 itself (kept with 1000), the 1.0 quantile the maximum alone; the default
    is the paper's p_hard = 0.999."""
    d = jnp.arange(1001.0)
    assert float(efficientad.hard_feature_loss(d, 0.999)) == 999.5
    assert float(efficientad.hard_feature_loss(d, 1.0)) == 1000.0
    assert float(efficientad.hard_feature_loss(d)) == 999.5


def test_resize_maps_refuses_an_unknown_border():
    maps = jnp.ones((1, 4, 4))
    for border in ("zeros", "edge"):
        assert efficientad.resize_maps(maps, (32, 32), border).shape == (1, 32, 32)
    with pytest.raises(ValueError, match="^map border 'reflect': use one of zeros, edge$"):
        efficientad.resize_maps(maps, (32, 32), "reflect")


def test_hard_feature_loss_gradient_only_through_selected_elements():
    d = jnp.arange(1000.0)
    grad = jax.grad(lambda x: efficientad.hard_feature_loss(x, 0.99))(d)
    selected = np.asarray(d) >= np.quantile(np.arange(1000.0), 0.99)
    np.testing.assert_allclose(grad, selected / selected.sum(), rtol=1e-6)


def test_quantile_normalization_maps_quantiles_to_0_and_0_1():
    raw = np.random.default_rng(1).gamma(2.0, size=10_000)
    q_start, q_end = np.quantile(raw, efficientad.MAP_QUANTILES)
    normalized = np.asarray(efficientad.normalize_map(jnp.asarray([q_start, q_end]), q_start, q_end))
    np.testing.assert_allclose(normalized, [0.0, 0.1], atol=1e-7)


def test_resize_maps_pads_to_quarter_then_upsamples_as_the_reference():
    """A random 56² map against the reference's torch code: F.pad by 4 zeros, then bilinear
    F.interpolate to 256² (align_corners=False)."""
    from tests.conftest import optional_module
    torch = optional_module("torch", "convert")
    maps = np.random.default_rng(0).normal(size=(2, 56, 56)).astype(np.float32)
    out = np.asarray(efficientad.resize_maps(jnp.asarray(maps), (256, 256)))
    padded = torch.nn.functional.pad(torch.from_numpy(maps)[:, None], (4, 4, 4, 4))
    reference = torch.nn.functional.interpolate(padded, (256, 256), mode="bilinear")[:, 0].numpy()
    np.testing.assert_allclose(out, reference, atol=1e-5)


@pytest.mark.parametrize("map_hw,image_hw,pad", [((6, 8), (32, 48), (1, 2)), ((8, 8), (32, 32), (0, 0)),
                                                 ((10, 12), (32, 48), (0, 0))])
def test_resize_maps_pads_each_side_by_its_own_quarter(map_hw, image_hw, pad):
    """Height and width are padded separately, (H/4 − h)/2 and (W/4 − w)/2, never below zero
    (a map that already fills a quarter of the image is not padded), then upsampled as torch's
    bilinear F.interpolate does."""
    from tests.conftest import optional_module
    torch = optional_module("torch", "convert")
    maps = np.random.default_rng(2).normal(size=(1, *map_hw)).astype(np.float32)
    out = np.asarray(efficientad.resize_maps(jnp.asarray(maps), image_hw))
    padded = torch.nn.functional.pad(torch.from_numpy(maps)[:, None], (pad[1], pad[1], pad[0], pad[0]))
    reference = torch.nn.functional.interpolate(padded, image_hw, mode="bilinear")[:, 0].numpy()
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_edge_border_keeps_the_frame_within_the_maps_values():
    """A map below zero everywhere (an image more normal than quantile q_a): the reference's zero
    frame becomes its maximum; ``border='edge'`` (ours) repeats the outermost values, so a
    constant map stays constant and the maximum never exceeds the map's."""
    constant = jnp.full((1, 56, 56), -0.3)
    assert float(efficientad.resize_maps(constant, (256, 256)).max()) == pytest.approx(0.0)
    np.testing.assert_allclose(efficientad.resize_maps(constant, (256, 256), "edge"), -0.3, rtol=1e-6)
    maps = -1.0 - np.random.default_rng(1).uniform(size=(3, 56, 56)).astype(np.float32)
    edge = np.asarray(efficientad.resize_maps(jnp.asarray(maps), (256, 256), "edge"))
    assert edge.max() <= maps.max() + 1e-6 and edge.min() >= maps.min() - 1e-6
    # Away from the frame (beyond the 16-px band and the interpolation's reach) both agree.
    zeros = np.asarray(efficientad.resize_maps(jnp.asarray(maps), (256, 256)))
    np.testing.assert_allclose(edge[:, 20:-20, 20:-20], zeros[:, 20:-20, 20:-20], atol=1e-6)
    assert np.abs(edge[:, :16] - zeros[:, :16]).max() > 0.5


def efficientad_map_in_numpy(config, params, frozen, stats, images):
    """EfficientAD's final map [B, S, S] (float64) from the three networks' raw outputs and the
    statistics, written out in numpy: the reference's normalization, combination, zero frame and
    bilinear up-sampling."""
    from kdad_jax.methods import efficientad
    from kdad_jax.methods.base import imagenet_normalize
    # Distinct quantiles, so a map normalized with the other map's pair is wrong.
    assert not np.allclose(np.asarray(stats["q_st"]), np.asarray(stats["q_ae"]))
    nets = efficientad._Nets(config)
    x = imagenet_normalize(images.astype(np.float32) / 255.0)
    teacher = np.asarray(nets.teacher.apply(frozen["teacher"], x), np.float64)
    student = np.asarray(nets.student.apply(params["student"], x), np.float64)
    autoencoder = np.asarray(nets.autoencoder.apply(params["autoencoder"], x), np.float64)
    mean, std = (np.asarray(stats[k], np.float64) for k in ("teacher_mean", "teacher_std"))
    c = teacher.shape[-1]
    local = (((teacher - mean) / std - student[..., :c]) ** 2).mean(-1)
    global_ = ((autoencoder - student[..., c:]) ** 2).mean(-1)
    (s0, s1), (a0, a1) = np.asarray(stats["q_st"], np.float64), np.asarray(stats["q_ae"], np.float64)
    combined = 0.5 * 0.1 * (local - s0) / (s1 - s0) + 0.5 * 0.1 * (global_ - a0) / (a1 - a0)
    size = config.image_size
    pad = (size // 4 - combined.shape[1]) // 2
    return np_bilinear_upsample(np.pad(combined, ((0, 0), (pad, pad), (pad, pad))), size)


def test_final_map_equals_numpy_from_the_raw_network_outputs():
    """The in-process map of a random-init model calibrated on four images, on two others:
    written out in numpy from the networks' raw outputs (both quantile pairs, both halves of
    the student, the teacher's channel statistics, the zero frame, the up-sampling)."""
    config = _small_config()
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    rng = np.random.default_rng(3)
    calibration = rng.uniform(size=(4, 64, 64, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [calibration])
    stats = method.fit_stats(params, model_state, frozen, stats, [calibration])
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    maps = np.asarray(method.anomaly_map(params, model_state, frozen, stats, images.astype(np.float32) / 255))
    expected = efficientad_map_in_numpy(config, params, frozen, stats, images)
    np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-5 * (expected.max() - expected.min()))


def _small_config():
    config = efficientad_config.get_config("smoke")
    return config


def test_fit_stats_calibrates_on_given_images():
    config = _small_config()
    method = get_method(config)
    frozen, teacher = method.load_frozen(jax.random.key(0))
    assert teacher == "random-init"
    params, model_state = method.init(jax.random.key(1), frozen)
    images = np.random.default_rng(0).uniform(size=(4, 64, 64, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [images[:2], images[2:]])
    assert stats["teacher_mean"].shape == (config.model.out_channels,)
    assert np.isnan(np.asarray(stats["q_st"])).all() and np.isnan(np.asarray(stats["q_ae"])).all()
    prepared = stats
    stats = method.fit_stats(params, model_state, frozen, stats, [images])
    # one structure before and after calibration: checkpoints hold the first, exports the second
    assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(prepared)
    maps = np.asarray(method.anomaly_map(params, model_state, frozen, stats, images))
    assert maps.shape == (4, 64, 64)
    # On the calibration images themselves, the local map's 0.995 quantile is ~0.1 by construction.
    local, global_ = efficientad._raw_maps(efficientad._Nets(config), params, model_state, frozen, stats,
                                           images)
    norm_local = np.asarray(efficientad.normalize_map(local, *stats["q_st"]))
    assert np.quantile(norm_local, 0.995) == pytest.approx(0.1, abs=1e-5)
    assert np.quantile(norm_local, 0.9) == pytest.approx(0.0, abs=1e-5)


def test_map_border_and_compute_dtype_follow_the_config_and_default_to_the_reference():
    """``model.map_border`` reaches the maps: with 'edge' the frame repeats the outermost values
    (the frame's values all occur in the map), with 'zeros' or a config without the key it is the
    reference's zeros; without ``train.compute_dtype`` convolutions stay float32 (None)."""
    config = _small_config()
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    images = np.random.default_rng(3).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    stats = method.fit_stats(params, model_state, frozen, method.prepare_stats(frozen, [images]), [images])
    maps = {}
    for border in ("zeros", "edge", None):
        config = _small_config()
        if border is None:
            del config.model["map_border"]
        else:
            config.model.map_border = border
        maps[border] = np.asarray(get_method(config).anomaly_map(params, model_state, frozen, stats, images))
    np.testing.assert_array_equal(maps[None], maps["zeros"])
    assert np.abs(maps["edge"] - maps["zeros"]).max() > 1e-3
    del config.train["compute_dtype"]
    assert efficientad.compute_dtype(config) is None
    config.train.compute_dtype = "float32"
    assert efficientad.compute_dtype(config) is None
    config.train.compute_dtype = "bfloat16"
    assert efficientad.compute_dtype(config) == jnp.bfloat16


def test_the_method_names_itself_and_what_it_built():
    """``name`` and ``info`` are what results.json and the logs record about the model."""
    config = _small_config()
    config.train.compute_dtype = "bfloat16"
    method = get_method(config)
    assert method.name == "efficientad"
    assert method.info == {"size": "s", "out_channels": 16, "compute_dtype": "bfloat16"}
    del config.train["compute_dtype"]
    assert get_method(config).info["compute_dtype"] == "float32"


def test_teacher_stats_are_channel_mean_and_std():
    config = _small_config()
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    images = np.random.default_rng(2).uniform(size=(3, 64, 64, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [images[:1], images[1:]])
    nets = efficientad._Nets(config)
    features = np.asarray(efficientad._teacher_features(nets, frozen, images)).reshape(-1, config.model.out_channels)
    np.testing.assert_allclose(stats["teacher_mean"], features.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["teacher_std"], features.std(0), rtol=1e-3, atol=1e-6)


def test_loss_terms_recomputed_in_numpy_from_the_networks_outputs():
    """The four terms from the raw network outputs, with numpy: which images feed which network,
    which student channels meet the teacher and which the autoencoder, normalization, quantile."""
    config = _small_config()
    config.loss.penalty_weight = 0.5  # a weight of 1 would not tell multiplying from dividing
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    # A fresh autoencoder outputs ~3e-4, too small for its sign to show in its loss terms: its
    # kernels doubled, it outputs ~5.
    params["autoencoder"] = jax.tree_util.tree_map(lambda a: a * 2 if a.ndim == 4 else a, params["autoencoder"])
    rng = np.random.default_rng(3)
    stats = method.prepare_stats(frozen, [rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)])
    batch = {k: rng.uniform(size=(2, 64, 64, 3)).astype(np.float32) for k in ("image", "image_aug", "penalty")}
    loss, (aux, new_state) = method.loss(params, model_state, frozen, stats,
                                         {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(0))
    assert new_state == {}

    nets, c = efficientad._Nets(config), config.model.out_channels
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    image, aug, penalty = ((batch[k] - mean) / std for k in ("image", "image_aug", "penalty"))
    teacher = lambda x: (np.asarray(nets.teacher.apply(frozen["teacher"], jnp.asarray(x, jnp.float32)))  # noqa: E731
                         - np.asarray(stats["teacher_mean"])) / np.asarray(stats["teacher_std"])
    student = lambda x: np.asarray(nets.student.apply(params["student"], jnp.asarray(x, jnp.float32)))  # noqa: E731
    ae = np.asarray(nets.autoencoder.apply(params["autoencoder"], jnp.asarray(aug, jnp.float32), train=True,
                                           rngs={"dropout": jax.random.key(0)}))
    squared = (teacher(image) - student(image)[..., :c]) ** 2
    expected = {
        "loss_hard": squared[squared >= np.quantile(squared, config.loss.hard_quantile)].mean(),
        "loss_penalty": (student(penalty)[..., :c] ** 2).mean() * config.loss.penalty_weight,
        "loss_ae": ((teacher(aug) - ae) ** 2).mean(),
        "loss_st_ae": ((ae - student(aug)[..., c:]) ** 2).mean(),
    }
    for key, value in expected.items():
        assert float(aux[key]) == pytest.approx(value, rel=2e-4), key
    assert float(loss) == pytest.approx(sum(expected.values()), rel=2e-4)


def test_config_presets():
    paper = efficientad_config.get_config("")
    assert (paper.model.size, paper.train.steps, paper.image_size, paper.train.batch_size) == ("s", 70_000, 256, 1)
    assert paper.train.learning_rate == 1e-4 and paper.train.weight_decay == 1e-5
    assert efficientad_config.get_config("m").model.size == "m"
    assert efficientad_config.get_config("demo,size=m,category=brick").data.category == "brick"
    with pytest.raises(ValueError):
        efficientad_config.get_config("bogus")


def test_teacher_checkpoint_is_loaded_frozen(tmp_path):
    from kdad_jax.teachers import params_file
    from kdad_jax.errors import UserError
    config = _small_config()
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(7))
    path = str(tmp_path / "teacher.msgpack")
    params_file.save_params(path, frozen["teacher"])
    config.teacher.checkpoint = path
    loaded, description = get_method(config).load_frozen(jax.random.key(0))
    assert description == path
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(frozen)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(frozen)):
        np.testing.assert_array_equal(a, b)
    config.model.out_channels = 8  # a teacher of another shape is refused with the file's name
    with pytest.raises(UserError, match="teacher.msgpack: parameter shapes do not match"):
        get_method(config).load_frozen(jax.random.key(0))
    config.teacher.checkpoint = str(tmp_path / "missing.msgpack")
    with pytest.raises(UserError, match="missing.msgpack: teacher checkpoint not found"):
        get_method(config).load_frozen(jax.random.key(0))


@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("size", [1, 2, 7, 1001])
def test_upper_quantile_equals_numpy_linear_quantile(quantile, size):
    values = np.random.default_rng(size).normal(size=size).astype(np.float32)
    got = float(efficientad.upper_quantile(jnp.asarray(values), quantile))
    assert got == pytest.approx(np.quantile(values.astype(np.float64), quantile), rel=1e-6, abs=1e-6)


def test_bfloat16_convolutions_keep_float32_parameters_and_close_maps():
    """compute_dtype=bfloat16: the compiled step convolves in bf16, the parameters and the
    optimizer state it returns stay float32, and the maps of the same weights stay within bf16's
    rounding of the float32 maps (and differ from them: bf16 really ran)."""
    import optax
    from kdad_jax.training import parallel, train
    from kdad_jax.kernels import compilation
    config = _small_config()
    f32 = get_method(config)
    config.train.compute_dtype = "bfloat16"
    bf16 = get_method(config)
    assert bf16.info["compute_dtype"] == "bfloat16"
    frozen, _ = f32.load_frozen(jax.random.key(0))
    params, model_state = f32.init(jax.random.key(1), frozen)
    images = np.random.default_rng(0).uniform(size=(4, 64, 64, 3)).astype(np.float32)
    stats = f32.fit_stats(params, model_state, frozen, f32.prepare_stats(frozen, [images]), [images])
    maps32 = np.asarray(f32.anomaly_map(params, model_state, frozen, stats, images))
    maps16 = np.asarray(bf16.anomaly_map(params, model_state, frozen, stats, images))
    scale = np.abs(maps32).max()
    assert 1e-5 * scale < np.abs(maps16 - maps32).max() < 0.05 * scale
    assert maps16.dtype == np.float32

    mesh = parallel.make_mesh()
    tx = optax.adam(1e-4)
    state = train.initial_state(bf16, tx, frozen, jax.random.key(1))
    batch = {k: images[:1] for k in ("image", "image_aug", "penalty")}
    step = train.make_train_step(bf16, tx, mesh)
    args = (state, frozen, stats, (), batch, jax.random.key(2))
    lowered = step.lower(*args)
    hlo = lowered.as_text()
    if compilation.compiler_options():  # CPU: the step is compiled without YNNPACK fusions too
        assert '"kind":"__ynn_fusion"' not in lowered.compile().as_text()
    # On CPU strided weight gradients at batch 1 are per-tap products (models/conv.py); the
    # autoencoder's resizes are float32 products at HIGHEST precision.
    products = [line for line in hlo.splitlines() if "convolution" in line
                or ("dot_general" in line and "HIGHEST" not in line)]
    assert products and all("bf16" in line for line in products)
    new_state, metrics = step(*args)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves((new_state.params, new_state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)} and np.isfinite(float(metrics["loss"]))
