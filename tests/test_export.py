"""--mode=export + kdad_jax.serve.deploy: the exported maps equal the in-process maps."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from kdad_jax.evaluation import evaluate
from kdad_jax.training import train
from kdad_jax import main as kdad_main
from kdad_jax.data import dataset
from kdad_jax.methods import get_method
from kdad_jax.serve import deploy
from tests.conftest import PROJECT
from tests.test_efficientad import efficientad_config

DEPLOY_SCRIPT = """
import json, sys
import numpy as np
import kdad_jax.deploy as deploy  # the documented alias of kdad_jax.serve.deploy
detector = deploy.load(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], detector.maps(images))
serving = {"kdad_jax.deploy", "kdad_jax.serve", "kdad_jax.serve.deploy"}
training = [m for m in sys.modules if m.startswith("kdad_jax.") and m not in serving]
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
    assert meta["platforms"] == ["cpu", "cuda", "tpu"]  # lowered for all three here; CPU runs below

    data = dataset.read_category("mvtec", tiny_tree, "widget", 64)
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
    # The threshold is one of the test scores (F1-max), so compare with the exported scores.
    assert report["flags"] == (maps.reshape(len(maps), -1).max(1) >= meta["threshold"]).tolist()
    assert sum(report["flags"]) >= 1
    # The parity report export wrote: the artifact run from the image files, as measured here.
    parity = meta["parity"]
    assert parity["ok"] and parity["from_files"] and parity["runtime"] == "jax"
    assert parity["images"] == len(data.test) and parity["decisions_flipped"] == 0
    # Measured in this process and in the subprocess above, each within the tolerance.
    assert 0 < parity["max_abs_map_delta"] <= 1e-5 * parity["map_range"]
    assert parity["map_range"] == pytest.approx(float(expected.max() - expected.min()), rel=1e-5)
    assert parity["threshold"] == meta["threshold"]
    assert all(v > 0 for v in parity["latency_ms_per_image"].values())
    # deploy reads image files (paths or PIL images) exactly as training read them.
    detector = deploy.load(str(folder))
    from_paths = detector.maps(data.test_paths)
    np.testing.assert_array_equal(from_paths, detector.maps(data.test))
    np.testing.assert_array_equal(detector.maps([Image.open(p) for p in data.test_paths[:2]]),
                                  detector.maps(data.test_paths[:2]))  # the same batch size
    with pytest.raises(ValueError, match="nope.png"):
        detector.maps([str(tmp_path / "nope.png")])


def test_an_artifact_that_does_not_score_what_training_scored_is_not_written(tiny_tree, tmp_path,
                                                                              monkeypatch, capsys):
    """The exported weights drift from the trained ones (what a pre/post-processing mismatch
    does to a user's scores): the parity check refuses the artifact in one line naming the worst
    image, and the previous export stays as it was."""
    from kdad_jax.errors import UserError
    from kdad_jax.serve import export
    workdir = str(tmp_path / "run")
    config = efficientad_config.get_config("smoke")
    config.data.root, config.eval.num_heatmaps = tiny_tree, 0
    kdad_main.run(config, workdir)
    kdad_main.run(config, workdir, mode="export")
    folder = tmp_path / "run" / "export" / "widget"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = export.plain_arguments

    def drifted(trained):
        params, *rest = real(trained)
        return [jax.tree_util.tree_map(lambda a: a * 1.01, params), *rest]
    monkeypatch.setattr(export, "plain_arguments", drifted)
    with pytest.raises(UserError) as error:
        kdad_main.run(config, workdir, mode="export")
    message = str(error.value)
    assert "\n" not in message and f"{folder}: not written" in message
    assert "worst: " + tiny_tree in message and "previous export is kept" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["widget"]  # no staging folder left
    assert "parity of the float32 artifact" in capsys.readouterr().out


def test_predict_writes_scores_and_overlays(tiny_tree, tmp_path):
    """Train, then --mode=predict on a folder: scores.csv with the saved threshold, one overlay
    per image, raw maps equal to the evaluation's maps of the same images."""
    import csv
    workdir = tmp_path / "run"
    flags = ["--config=configs/efficientad.py:smoke", f"--workdir={workdir}",
             f"--config.data.root={tiny_tree}", "--config.eval.num_heatmaps=0"]
    run = subprocess.run([sys.executable, "-m", "kdad_jax.main", *flags], cwd=PROJECT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    folder = f"{tiny_tree}/widget/test"
    bad = tmp_path / "bad"  # unreadable inputs get a row with the error, not a crash
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "kdad_jax.main", *flags, "--mode=predict",
                           f"--input={folder},{bad}", f"--output={out}", "--save_maps"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scored 4 images, 2 unreadable (see the error column)" in proc.stdout
    rows = list(csv.DictReader(open(out / "scores.csv")))
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if r["error"]}
    assert errors == {"empty.png": "unreadable image (empty file, 0 bytes)",
                      "text.jpg": "unreadable image (not an image format Pillow knows)"}
    rows = [r for r in rows if not r["error"]]
    thresholds = json.load(open(workdir / "thresholds.json"))["widget"]
    data = dataset.read_category("mvtec", tiny_tree, "widget", 64)
    assert sorted(r["path"] for r in rows) == sorted(data.test_paths)
    for row in rows:
        assert int(row["is_anomalous"]) == (float(row["score"]) >= thresholds["image_threshold"])
    assert len(list(out.glob("*.png"))) == len(rows) == len(list((out / "maps").glob("*.npy")))
    results = json.load(open(workdir / "results.json"))
    image_auroc = results["per_category"]["widget"]["image_auroc"]
    from kdad_jax.evaluation import metrics
    by_path = {r["path"]: float(r["score"]) for r in rows}
    assert metrics.auroc(np.array([by_path[p] for p in data.test_paths]), data.test_labels) == image_auroc
    missing = subprocess.run([sys.executable, "-m", "kdad_jax.main", *flags, "--mode=predict",
                              f"--input={tmp_path}/nope", f"--output={out}"], cwd=PROJECT,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope: no such file or folder")


def test_reduced_precision_onnx_exports_say_what_they_change(tiny_tree, tmp_path):
    """int8 (static quantization calibrated on training images) and float16 ONNX artifacts are
    written with a parity report that puts their test metrics beside float32's (the training
    code's maps); deploy runs them."""
    import onnx
    from kdad_jax.evaluation import metrics
    workdir = str(tmp_path / "run")
    config = efficientad_config.get_config("smoke")
    config.data.root, config.eval.num_heatmaps = tiny_tree, 0
    config.export.format = "onnx"
    kdad_main.run(config, workdir)
    folder = tmp_path / "run" / "export" / "widget"
    data = dataset.read_category("mvtec", tiny_tree, "widget", 64)
    method = get_method(config)
    trained = train.train_category(config, workdir, "widget", method, data.train, resume_only=True)
    reference = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                      trained.stats, data.test, 4)  # float32, in process
    for precision in ("float16", "int8"):
        config.export.precision = precision
        kdad_main.run(config, workdir, mode="export")
        meta = json.load(open(folder / "meta.json"))
        assert meta["precision"] == meta["parity"]["precision"] == precision
        model = onnx.load(str(folder / "model.onnx"))
        ops = {node.op_type for node in model.graph.node}
        assert ("QuantizeLinear" in ops) == (precision == "int8"), ops
        halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        assert bool(halves) == (precision == "float16")
        maps = deploy.load(str(folder)).maps(data.test)
        assert maps.dtype == np.float32 and np.isfinite(maps).all()
        quality = meta["parity"]["test_metrics"]
        # The artifact's metrics are those of the maps deploy gives (recomputed here).
        assert quality["artifact"]["image_auroc"] == pytest.approx(
            metrics.auroc(maps.reshape(len(maps), -1).max(1), data.test_labels), abs=1e-6)
        assert meta["parity"]["ok"]  # written whatever it changes: the user asked for it
        assert quality["training"]["image_auroc"] == pytest.approx(
            metrics.auroc(reference.reshape(len(reference), -1).max(1), data.test_labels), abs=1e-6)
        # Its threshold is chosen on its own scores by the evaluation's rule (image F1-max on the
        # test set, recomputed here by brute force), the float32 one kept beside it.
        scores = maps.reshape(len(maps), -1).max(1)
        f1 = [2 * np.sum((scores >= t) & (data.test_labels == 1))
              / (np.sum(scores >= t) + np.sum(data.test_labels == 1)) for t in scores]
        best = max(t for t, f in zip(scores, f1) if f >= max(f1) - 1e-12)  # ties: the highest
        assert meta["threshold"] == pytest.approx(best, rel=1e-6)
        assert meta["float32_threshold"] == meta["parity"]["threshold"]
        assert meta["threshold"] == meta["parity"]["artifact_threshold"]
        assert deploy.load(str(folder)).threshold == meta["threshold"]
        expected_flags = reference.reshape(len(reference), -1).max(1) >= meta["float32_threshold"]
        assert meta["parity"]["decisions_changed_at_artifact_threshold"] == np.sum(
            expected_flags != (scores >= meta["threshold"]))
        spread = reference.max() - reference.min()
        delta = np.abs(maps - reference).max() / spread
        assert (delta < 1e-2) if precision == "float16" else (0 < delta < 1.0), (precision, delta)
