"""EfficientAD pieces against direct numpy computations."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdad_jax.methods import efficientad, get_method
from tests.conftest import PROJECT

sys.path.insert(0, str(PROJECT / "configs"))
import efficientad as efficientad_config  # noqa: E402  (configs/ is data, not a package)


def test_hard_feature_loss_equals_numpy():
    d = np.random.default_rng(0).exponential(size=(2, 7, 7, 16)).astype(np.float32)
    threshold = np.quantile(d, 0.999)
    expected = d[d >= threshold].mean()
    assert float(efficientad.hard_feature_loss(jnp.asarray(d), 0.999)) == pytest.approx(expected, rel=1e-5)
    assert float(efficientad.hard_feature_loss(jnp.asarray(d), 0.5)) == pytest.approx(
        d[d >= np.quantile(d, 0.5)].mean(), rel=1e-5)


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


def test_resize_maps_pads_to_quarter_then_upsamples():
    maps = jnp.ones((1, 56, 56))
    out = np.asarray(efficientad.resize_maps(maps, (256, 256)))
    assert out.shape == (1, 256, 256)
    assert out[0, 128, 128] == pytest.approx(1.0)
    assert out[0, 0, 0] == pytest.approx(0.0)  # 4-px zero border at feature scale = 16 px


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
    assert np.isnan(np.asarray(stats["q_st"])).all()
    stats = method.fit_stats(params, model_state, frozen, stats, [images])
    maps = np.asarray(method.anomaly_map(params, model_state, frozen, stats, images))
    assert maps.shape == (4, 64, 64)
    # On the calibration images themselves, the local map's 0.995 quantile is ~0.1 by construction.
    local, global_ = efficientad._raw_maps(efficientad._Nets(config), params, model_state, frozen, stats,
                                           images)
    norm_local = np.asarray(efficientad.normalize_map(local, *stats["q_st"]))
    assert np.quantile(norm_local, 0.995) == pytest.approx(0.1, abs=1e-5)
    assert np.quantile(norm_local, 0.9) == pytest.approx(0.0, abs=1e-5)


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
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
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
    from kdad_jax import checkpoint
    from kdad_jax.errors import UserError
    config = _small_config()
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(7))
    path = str(tmp_path / "teacher.msgpack")
    checkpoint.save_params(path, frozen["teacher"])
    config.teacher.checkpoint = path
    loaded, description = get_method(config).load_frozen(jax.random.key(0))
    assert description == path
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
    from kdad_jax import parallel, train
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
