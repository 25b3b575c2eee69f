"""Dual-student KD and mixed distillation: losses and maps against numpy, structure, smoke runs."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdad_jax import main as kdad_main
from kdad_jax.errors import UserError
from kdad_jax.methods import dskd, get_method, mixed, stfpm
from kdad_jax.models.dual_student import resize_to
from tests.conftest import PROJECT, assert_metrics_from_checkpoint, np_bilinear_upsample

sys.path.insert(0, str(PROJECT / "configs"))
import dskd as dskd_config  # noqa: E402  (configs/ is data, not a package)
import mixed as mixed_config  # noqa: E402


def _np_distance(t, s):
    """0.5‖t̂ − ŝ‖² per position, float64."""
    t, s = t.astype(np.float64), s.astype(np.float64)
    tn = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    sn = s / np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-12)
    return 0.5 * ((tn - sn) ** 2).sum(-1)


def _random_config(module, preset="smoke"):
    config = module.get_config(preset)
    config.teacher.fallback = ""   # random-init ResNet-18 teacher: no files needed
    return config


def _run_parts(method):
    frozen, _ = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    return frozen, params, model_state


def test_dskd_loss_and_map_equal_numpy():
    config = _random_config(dskd_config)
    config.loss.layer_weights = (1.0, 0.5, 2.0)
    method = get_method(config)
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)
    frozen, params, model_state = _run_parts(method)
    nets = stfpm.Nets(config)
    network = dskd._network(nets, config)
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    (a, b), _ = stfpm.features(network, {"params": params, **model_state}, images, train=True, mutable=True)
    # The inverted student has the teacher's shapes, tap for tap.
    assert [x.shape for x in b] == [t[k].shape for k in nets.taps] == [x.shape for x in a]
    expected = sum(w * (_np_distance(np.asarray(t[k]), np.asarray(a[i])).mean()
                        + _np_distance(np.asarray(t[k]), np.asarray(b[i])).mean())
                   for i, (k, w) in enumerate(zip(nets.taps, config.loss.layer_weights)))
    loss, (aux, new_state) = method.loss(params, model_state, frozen, {}, {"image": images}, jax.random.key(0))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert set(aux) == {"loss_forward", "loss_inverted"} and "embedding" in new_state["batch_stats"]
    # Map: per-tap sum of both discrepancies (eval-mode BN), up-sampled and summed over taps.
    (a, b), _ = stfpm.features(network, {"params": params, **model_state}, images)
    layer = [_np_distance(np.asarray(t[k]), np.asarray(a[i])) + _np_distance(np.asarray(t[k]), np.asarray(b[i]))
             for i, k in enumerate(nets.taps)]
    ups = [np.asarray(jax.image.resize(jnp.asarray(m), (2, 64, 64), "linear", antialias=False)) for m in layer]
    got = np.asarray(method.anomaly_map(params, model_state, frozen, {}, images))
    np.testing.assert_allclose(got, np.sum(ups, axis=0), rtol=1e-4, atol=1e-6)


def test_mixed_loss_and_map_equal_numpy():
    config = _random_config(mixed_config)
    config.mixed.skip_pairs = "3-1,1-3,2-3"
    config.mixed.skip_weight = 0.7
    method = get_method(config)
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 64, 64, 3)), jnp.float32)
    frozen, params, model_state = _run_parts(method)
    assert set(params) >= {"skip_3_to_1", "skip_1_to_3", "skip_2_to_3"}
    nets = stfpm.Nets(config)
    network = mixed.MixedStudent(nets.student, nets.taps, nets.channels, mixed.parse_pairs("3-1,1-3,2-3", 3))
    t, _ = stfpm.features(nets.teacher, frozen["teacher"], images)
    t = [np.asarray(t[k]) for k in nets.taps]
    (s, _), _ = stfpm.features(network, {"params": params, **model_state}, images, train=True, mutable=True)

    def projection(i, j):
        """1×1 conv (numpy) of student tap i, then resized onto tap j's grid."""
        kernel = np.asarray(params[f"skip_{i + 1}_to_{j + 1}"]["conv"]["kernel"])[0, 0]
        bias = np.asarray(params[f"skip_{i + 1}_to_{j + 1}"]["conv"]["bias"])
        conv = np.asarray(s[i]) @ kernel + bias
        return np.asarray(resize_to(jnp.asarray(conv), t[j].shape[1:3]))

    direct = sum(_np_distance(t[l], np.asarray(s[l])).mean() for l in range(3))
    skip = sum(_np_distance(t[j], projection(i, j)).mean() for i, j in ((2, 0), (0, 2), (1, 2)))
    loss, (aux, _) = method.loss(params, model_state, frozen, {}, {"image": images}, jax.random.key(0))
    assert float(aux["loss_direct"]) == pytest.approx(direct, rel=1e-4)
    assert float(aux["loss_skip"]) == pytest.approx(skip, rel=1e-3)
    assert float(loss) == pytest.approx(direct + 0.7 * skip, rel=1e-3)
    # Map (eval-mode BatchNorm): per teacher tap, the direct discrepancy plus the mean of the skip
    # paths ending there (tap 3 gets 1→3 and 2→3, tap 1 gets 3→1, tap 2 none), up-sampled
    # bilinearly (numpy) and multiplied over the taps.
    (s, _), _ = stfpm.features(network, {"params": params, **model_state}, images)
    incoming = {0: [(2, 0)], 1: [], 2: [(0, 2), (1, 2)]}
    layer = [_np_distance(t[j], np.asarray(s[j])) + (np.mean(
        [_np_distance(t[j], projection(i, j)) for i, j in incoming[j]], axis=0) if incoming[j] else 0.0)
        for j in range(3)]
    expected = np.prod([np_bilinear_upsample(m, 64) for m in layer], axis=0)
    got = np.asarray(method.anomaly_map(params, model_state, frozen, {}, images))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())


def test_mixed_pairs_parse_and_reject():
    assert mixed.parse_pairs("all", 3) == ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))
    assert mixed.parse_pairs("3-1, 1-3", 3) == ((2, 0), (0, 2))
    for bad in ("2-2", "4-1", "1-4", "0-2", "4-4"):  # same tap, or a tap outside 1..3
        with pytest.raises(ValueError, match=rf"^config.mixed.skip_pairs: '{bad}' is not a pair of different taps 1..3$"):
            mixed.parse_pairs(bad, 3)
    config = _random_config(dskd_config)
    config.loss.augmented_pair = True
    with pytest.raises(UserError, match="^dskd: config.loss.augmented_pair / cosine_weight are ECA-MSKDAD's"):
        get_method(config)


@pytest.mark.parametrize("name,module", [("dskd", dskd_config), ("mixed", mixed_config)])
def test_each_method_names_itself_and_what_it_built(name, module):
    """``name`` and ``info`` are what results.json and the logs record about the model; a switch
    of ECA-MSKDAD is refused naming the method."""
    config = _random_config(module)
    method = get_method(config)
    assert method.name == name and method.info["teacher_arch"] == "resnet18"
    assert method.info["map"] == config.map.combine
    if name == "dskd":
        assert method.info["embed_channels"] == config.dskd.embed_channels
    else:
        assert (method.info["skip_pairs"], method.info["skip_weight"], method.info["map_paths"]) == (
            ["1-2", "1-3", "2-1", "2-3", "3-1", "3-2"], config.mixed.skip_weight, config.map.paths)
    if name == "mixed":
        config.map.paths = "direct"
        assert get_method(config).info["map_paths"] == "direct"
        config.map.paths = "both"
        with pytest.raises(UserError, match="^config.map.paths must be 'all' or 'direct', not 'both'$"):
            get_method(config)
        config.map.paths = "all"
    config.loss.cosine_weight = 1.0
    with pytest.raises(UserError, match=f"^{name}: config.loss.augmented_pair / cosine_weight"):
        get_method(config)


@pytest.mark.parametrize("name,module", [("dskd", dskd_config), ("mixed", mixed_config)])
def test_smoke_run_writes_results(name, module, tiny_tree, tmp_path):
    config = _random_config(module)
    config.data.root = tiny_tree
    workdir = str(tmp_path / "run")
    kdad_main.run(config, workdir)
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["method"] == name and results["teacher"] == "random-init"
    assert results["per_category"]["widget"]["train_steps"] == 3
    assert_metrics_from_checkpoint(config, workdir, "widget", results["per_category"]["widget"])
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in logged] == [1, 2, 3]
