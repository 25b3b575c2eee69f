"""--mode=export + kdad_jax.deploy: the exported maps equal the in-process maps."""

import json
import subprocess
import sys

import numpy as np

from kdad_jax import evaluate, train
from kdad_jax import main as kdad_main
from kdad_jax.data import mvtec
from kdad_jax.methods import get_method
from tests.conftest import PROJECT
from tests.test_efficientad import efficientad_config

DEPLOY_SCRIPT = """
import json, sys
import numpy as np
import kdad_jax.deploy as deploy
detector = deploy.load(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], detector.maps(images))
training = [m for m in sys.modules if m.startswith("kdad_jax.") and m != "kdad_jax.deploy"]
print(json.dumps({"training_modules": training, "threshold": detector.threshold,
                  "flags": detector.is_anomalous(images).tolist()}))
"""


def test_exported_detector_matches_in_process_maps(tiny_tree, tmp_path):
    workdir = str(tmp_path / "run")
    config = efficientad_config.get_config("smoke")
    config.data.root = tiny_tree
    config.eval.num_heatmaps = 0
    kdad_main.run(config, workdir)
    results = kdad_main.run(config, workdir, mode="export")
    folder = tmp_path / "run" / "export" / "widget"
    meta = json.load(open(folder / "meta.json"))
    assert meta["image_size"] == 64 and meta["threshold"] == results["per_category"]["widget"]["image_threshold"]

    data = mvtec.read_category(tiny_tree, "widget", 64)
    method = get_method(config)
    trained = train.train_category(config, workdir, "widget", method, data.train, resume_only=True)
    expected = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                     trained.stats, data.test, 3)
    np.save(tmp_path / "images.npy", data.test)  # uint8, as a camera delivers them
    proc = subprocess.run([sys.executable, "-c", DEPLOY_SCRIPT, str(folder), str(tmp_path / "images.npy"),
                           str(tmp_path / "maps.npy")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["training_modules"] == []  # ran without the training code
    maps = np.load(tmp_path / "maps.npy")
    assert maps.shape == expected.shape
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    scores = expected.reshape(len(expected), -1).max(1)
    assert report["flags"] == (scores > meta["threshold"]).tolist()
