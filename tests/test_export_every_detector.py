"""Every detector exports in both formats and the artifact scores what training scored.

Each detector of the design (EfficientAD S and M, STFPM with the papers' ResNet-18 teacher and
with Lite0, ECA-MSKDAD, DSKD, mixed, Uninformed Students) trains a few steps on a tiny tree, is
exported as ``jax_export`` and as ONNX, reloaded through ``kdad_jax.deploy`` and run on the test
images: its maps equal the in-process maps. EfficientAD's exported map is also recomputed in
numpy from the networks' raw outputs and the saved statistics (not a self-comparison), and a
CPU export of an EfficientNet-Lite0 STFPM carries grouped convolutions and ``reduce_window`` in
its CUDA and TPU lowerings, the CPU forms only in its CPU lowering.
"""

import re

import jax
import numpy as np
import pytest
from jax import export as jax_export

from kdad_jax.evaluation import evaluate
from kdad_jax.training import train
from kdad_jax import main as kdad_main
from kdad_jax.config_files import load as load_config_file
from kdad_jax.data import dataset
from kdad_jax.methods import get_method
from kdad_jax.serve import deploy, export
from tests.conftest import PROJECT, build_tree, optional_module

# name: (config file, preset, overrides); teacher.fallback '' = a random-init ResNet-18 teacher,
# the papers' architecture (max pool, dense convolutions) without a checkpoint file.
DETECTORS = {
    "efficientad_s": ("efficientad", "smoke", {}),
    "efficientad_m": ("efficientad", "smoke,size=m", {}),
    "stfpm_resnet18": ("stfpm", "smoke", {"teacher.fallback": ""}),
    "stfpm_lite0": ("stfpm", "smoke", {}),
    "eca_mskdad_resnet18": ("eca_mskdad", "smoke", {"teacher.fallback": ""}),
    "dskd_resnet18": ("dskd", "smoke", {"teacher.fallback": ""}),
    "mixed_resnet18": ("mixed", "smoke", {"teacher.fallback": ""}),
    "students": ("students", "smoke", {}),
}
TOLERANCE = {"jax_export": 1e-5, "onnx": 1e-4}  # of the maps' range


def detector_config(name, root):
    file, preset, overrides = DETECTORS[name]
    config = load_config_file(str(PROJECT / "configs" / f"{file}.py")).get_config(preset)
    config.data.root = str(root)
    config.train.steps = 2
    config.eval.num_heatmaps, config.eval.plots = 0, False
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors") / "data"
    build_tree(root, n_train=6, n_good=2, n_bad=2)
    return root


def _train(name, root, workdir):
    """(config, method, Trained, test images uint8 [N, S, S, 3], in-process maps [N, S, S])."""
    config = detector_config(name, root)
    kdad_main.run(config, str(workdir))
    method = get_method(config)
    data = dataset.read_category("mvtec", str(root), "widget", config.image_size)
    trained = train.train_category(config, str(workdir), "widget", method, data.train,
                                   resume_only=True)
    maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                 trained.stats, data.test, 2)
    return config, method, trained, data.test, maps


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory):
    """``trained(name)``: the detector trained once for the module."""
    done = {}

    def get(name):
        if name not in done:
            done[name] = _train(name, tree, tmp_path_factory.mktemp(name))
        return done[name]
    return get


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_exports_in_both_formats_with_the_in_process_maps(name, trained, tmp_path):
    optional_module("onnx", "onnx")
    config, method, model, images, expected = trained(name)
    spread = float(expected.max() - expected.min())
    assert spread > 0, "flat maps would compare equal whatever the export did"
    for export_format, tolerance in TOLERANCE.items():
        folder = tmp_path / export_format
        export.export_category(str(folder), method, model, config.image_size, {"threshold": 0.0},
                               export_format=export_format)
        detector = deploy.load(str(folder))
        maps = detector.maps(images)  # uint8, as a camera delivers them
        assert maps.shape == expected.shape, export_format
        worst = float(np.abs(maps - expected).max())
        assert worst <= tolerance * spread, (export_format, worst, spread)


# --- EfficientAD's final map, recomputed in numpy ------------------------------------------------

def test_exported_efficientad_map_equals_numpy_from_the_raw_network_outputs(trained, tmp_path):
    from tests.test_efficientad import efficientad_map_in_numpy
    config, method, model, images, _ = trained("efficientad_s")
    export.export_category(str(tmp_path / "export"), method, model, config.image_size)
    exported = deploy.load(str(tmp_path / "export")).maps(images)
    expected = efficientad_map_in_numpy(config, model.params, model.frozen, model.stats, images)
    spread = expected.max() - expected.min()
    np.testing.assert_allclose(exported, expected, rtol=0, atol=1e-5 * spread)


# --- what each platform's lowering carries -------------------------------------------------------

def _lowering(detector, platform):
    config, method, model, _, _ = detector
    args = export.plain_arguments(model)
    batch = jax_export.symbolic_shape("b")[0]
    images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), np.float32)
    specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    return jax_export.export(jax.jit(method.anomaly_map), platforms=(platform,))(
        *specs, images).mlir_module()


def _grouped_convolutions(text):
    return [int(g) for g in re.findall(r"feature_group_count = (\d+)", text) if int(g) > 1]


def test_a_cpu_export_carries_standard_ops_for_cuda_and_tpu(trained):
    """EfficientNet-Lite0 STFPM (depthwise convolutions) and the ResNet-18 one (max pool)."""
    lite0, resnet = trained("stfpm_lite0"), trained("stfpm_resnet18")
    for platform in ("cuda", "tpu"):
        assert len(_grouped_convolutions(_lowering(lite0, platform))) >= 10, platform  # depthwise
        assert "stablehlo.reduce_window" in _lowering(resnet, platform), platform
    assert _grouped_convolutions(_lowering(lite0, "cpu")) == []  # CPU: shifted multiply-adds
