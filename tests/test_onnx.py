"""ONNX export (kdad_jax.serve.onnx_export): every translation rule against JAX at batch 1 and 3,
the operations it must refuse, and a trained run's ONNX export run by ONNX Runtime (through
kdad_jax.serve.deploy, without JAX) and OpenVINO against the in-process maps."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdad_jax.evaluation import evaluate
from kdad_jax.training import train
from kdad_jax import main as kdad_main
from kdad_jax.data import dataset
from kdad_jax.methods import get_method
from kdad_jax.kernels import conv, pooling
from tests.conftest import PROJECT, optional_module
from tests.test_efficientad import efficientad_config

RNG = np.random.default_rng(0)
KERNEL = RNG.normal(size=(3, 3, 4, 6)).astype(np.float32)
DEPTHWISE = RNG.normal(size=(3, 3, 1, 4)).astype(np.float32)
BIAS = RNG.normal(size=(6,)).astype(np.float32)
MATRIX = RNG.normal(size=(4, 5)).astype(np.float32)


def _conv_relu(kernel, bias, x):
    y = lax.conv_general_dilated(x, kernel, (2, 1), ((1, 2), (0, 1)), rhs_dilation=(1, 2),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + bias)


def _depthwise_and_pools(kernel, x):
    y = lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), feature_group_count=4,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    summed = lax.reduce_window(y, 0.0, lax.add, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return pooling.max_pool(summed, (3, 3), (2, 2), ((1, 1), (1, 1)))


def _resize_and_normalize(x):
    y = jax.image.resize(x, (x.shape[0], 13, 7, x.shape[3]), "bilinear")
    return y / jnp.sqrt(jnp.sum(y ** 2, axis=-1, keepdims=True) + 1e-6)


def _shuffles(matrix, x):
    b, h, w, c = x.shape
    tiles = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)
    flipped = jnp.flip(tiles, axis=(1, 2))
    marker = jnp.ones((1, h // 2, w // 2, 1), x.dtype) * 0.5
    padded = jnp.pad(jnp.concatenate([flipped, jnp.broadcast_to(marker, (b, *marker.shape[1:]))], -1),
                     ((0, 0), (2, 1), (0, 0), (0, 0)))[:, :, 1:, :]
    projected = jnp.einsum("bhwc,cd->bhdw", x, matrix)
    return padded[:, ::2, ::3, :], projected


def _elementwise(x):
    y = jnp.where(x > 0.5, x ** 3, jnp.clip(x, 0.2, 0.4))
    z = jax.nn.sigmoid(x) - jnp.abs(x - 0.3) * jnp.exp(-x) + jnp.tanh(x)
    return jnp.squeeze(jnp.max(y * z, axis=-1, keepdims=True), -1) + jnp.min(x, axis=(1, 2))[:, None, :1]


def _logic_and_rounding(x):
    inside = ((x > 0.3) & (x <= 0.7)) | ((x == 0.5) & ~(x != x))
    outer = (x >= 0.9) | (x < 0.1)
    stepped = jnp.where(inside, jnp.floor(x * 4) + jnp.ceil(x * 3), jnp.sign(x - 0.5))
    smooth = (jnp.log(x + 1) * lax.erf(x) + lax.rsqrt(x + 1) + jnp.power(x + 1, x)
              + lax.clamp(0.2, x, 0.6))
    return stepped + smooth + outer.astype(jnp.float32) + jnp.copy(x)


CASES = {  # name: (function, its constant arguments, image shape)
    "conv_strided_dilated_relu": (_conv_relu, (KERNEL, BIAS), (9, 8, 4)),
    "depthwise_avg_and_max_pool": (_depthwise_and_pools, (DEPTHWISE,), (9, 10, 4)),
    "bilinear_resize_l2_normalize": (_resize_and_normalize, (), (6, 5, 3)),
    "reshape_transpose_flip_concat_pad_slice_einsum": (lambda m, x: _shuffles(m, x)[0] , (MATRIX,), (8, 6, 4)),
    "einsum_moving_the_batch": (lambda m, x: _shuffles(m, x)[1], (MATRIX,), (8, 6, 4)),
    "where_pow_clip_sigmoid_reductions": (_elementwise, (), (5, 6, 3)),
    "logic_rounding_log_erf_rsqrt_clamp": (_logic_and_rounding, (), (5, 6, 3)),
}


def _run_onnx(model, images):
    onnxruntime = optional_module("onnxruntime", "onnx")
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["maps"], {"images": images})[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_rules_match_jax_at_batch_1_and_3(name):
    optional_module("onnx", "onnx")
    from kdad_jax.serve import onnx_export
    function, arguments, shape = CASES[name]
    model = onnx_export.to_onnx(function, arguments, shape)  # traced at batch 1
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    for batch in (1, 3):
        images = RNG.uniform(size=(batch, *shape)).astype(np.float32)
        expected = np.asarray(function(*arguments, images))
        got = _run_onnx(model, images)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Image-independent work is folded into constants: no node of the model computes weights.
    assert not [n for n in model.graph.node if n.op_type in ("Range", "ConstantOfShape")]


def test_every_rule_is_reached_by_a_case(monkeypatch):
    """The cases above run through every translation rule (a rule no case reaches could be
    wrong, e.g. max pooling translated as AveragePool, and every test would still pass)."""
    optional_module("onnx", "onnx")
    from kdad_jax.serve import onnx_export
    reached = set()

    def recording(name, rule):
        def rule_that_records(graph, eqn, inputs):
            reached.add(name)
            return rule(graph, eqn, inputs)
        return rule_that_records
    for name, rule in list(onnx_export._RULES.items()):
        monkeypatch.setitem(onnx_export._RULES, name, recording(name, rule))
    for function, arguments, shape in CASES.values():
        onnx_export.to_onnx(function, arguments, shape)
    assert sorted(set(onnx_export._RULES) - reached) == []


REFUSED = {  # operations valid at batch 1 only, or without a rule: refused, naming what
    "sum over the batch": (lambda x: x - jnp.sum(x, axis=0, keepdims=True), "reduce_sum over the batch axis"),
    "flatten with the batch": (lambda x: x.reshape(-1)[None], "across the batch axis"),
    "batch squeezed away": (lambda x: x[0][None], "squeeze of the batch axis"),
    "sort": (lambda x: jnp.sort(x, axis=1), "no ONNX rule for the JAX operation 'sort'"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_batch_mixing_and_unknown_operations_are_refused(name):
    optional_module("onnx", "onnx")
    from kdad_jax.serve import onnx_export
    function, message = REFUSED[name]
    with pytest.raises(onnx_export.UnsupportedError, match=message):
        onnx_export.to_onnx(function, (), (4, 4, 3))


def _ops(model):
    return [node.op_type for node in model.graph.node]


def test_kernels_convert_to_onnx_s_standard_ops_not_their_cpu_forms():
    """kdad_jax's depthwise convolution and max pool (CPU lowering: shifted multiply-adds, maximum
    of strided slices) become one grouped ``Conv`` and one ``MaxPool`` in ONNX: the translator
    takes ``platform_dependent``'s default branch, so the standard rules are the ones reached."""
    optional_module("onnx", "onnx")
    from kdad_jax.serve import onnx_export
    depthwise = lambda k, x: conv.conv2d(x, k, (2, 2), ((1, 1), (1, 1)), groups=4)  # noqa: E731
    model = onnx_export.to_onnx(depthwise, (DEPTHWISE,), (7, 8, 4))
    assert _ops(model).count("Conv") == 1 and "Mul" not in _ops(model)
    assert [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
            if a.name == "group"] == [4]
    images = RNG.uniform(size=(2, 7, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(model, images), depthwise(DEPTHWISE, images), rtol=1e-5, atol=1e-5)

    pool = lambda x: pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))  # noqa: E731
    model = onnx_export.to_onnx(pool, (), (9, 8, 4))
    assert _ops(model).count("MaxPool") == 1 and "Max" not in _ops(model)
    images = RNG.normal(size=(3, 9, 8, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run_onnx(model, images), pool(images))


ONNX_DEPLOY_SCRIPT = """
import json, sys
import numpy as np
import kdad_jax.deploy as deploy
detector = deploy.load(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], detector.maps(images))
serving = {"kdad_jax.deploy", "kdad_jax.serve", "kdad_jax.serve.deploy"}
print(json.dumps({"training_modules": [m for m in sys.modules if m.startswith("kdad_jax.") and m not in serving],
                  "jax_loaded": "jax" in sys.modules, "flags": detector.is_anomalous(images).tolist()}))
"""


def test_onnx_export_of_a_trained_run_matches_in_process_maps(tiny_tree, tmp_path):
    optional_module("onnx", "onnx")
    optional_module("onnxruntime", "onnx")
    workdir = str(tmp_path / "run")
    config = efficientad_config.get_config("smoke")
    config.data.root = tiny_tree
    config.eval.num_heatmaps = 0
    kdad_main.run(config, workdir)
    config.export.format = "onnx"
    results = kdad_main.run(config, workdir, mode="export")
    folder = tmp_path / "run" / "export" / "widget"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.onnx"]
    meta = json.load(open(folder / "meta.json"))
    assert meta["format"] == "kdad_jax onnx v2" and meta["image_size"] == 64
    assert meta["threshold"] == results["per_category"]["widget"]["image_threshold"]

    data = dataset.read_category("mvtec", tiny_tree, "widget", 64)
    method = get_method(config)
    trained = train.train_category(config, workdir, "widget", method, data.train, resume_only=True)
    expected = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                     trained.stats, data.test, 3)
    np.save(tmp_path / "images.npy", data.test)
    proc = subprocess.run([sys.executable, "-c", ONNX_DEPLOY_SCRIPT, str(folder), str(tmp_path / "images.npy"),
                           str(tmp_path / "maps.npy")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["training_modules"] == [] and report["jax_loaded"] is False  # ONNX Runtime alone
    maps = np.load(tmp_path / "maps.npy")
    assert maps.shape == expected.shape == (len(data.test), 64, 64)
    assert np.abs(maps - expected).max() <= 1e-5 * np.abs(expected).max()
    assert report["flags"] == (maps.reshape(len(maps), -1).max(1) >= meta["threshold"]).tolist()

    openvino = optional_module("openvino", "openvino")  # what an OpenVINO user does with the file
    compiled = openvino.Core().compile_model(str(folder / "model.onnx"), "CPU")
    batch = data.test[:2].astype(np.float32) / 255.0
    ov_maps = compiled(batch)[compiled.output(0)]
    assert np.abs(ov_maps - expected[:2]).max() <= 1e-4 * np.abs(expected).max()


def test_onnx_format_checks():
    from kdad_jax.jobs import validate
    config = efficientad_config.get_config("smoke")
    config.export.format = "tflite"
    assert "config.export.format='tflite': must be one of 'jax_export', 'onnx'" in validate.problems(config)
    config.export.format, config.train.compute_dtype = "onnx", "bfloat16"
    assert any(line.startswith("config.export.format='onnx' with config.train.compute_dtype='bfloat16'")
               for line in validate.problems(config))
