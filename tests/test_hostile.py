"""Hostile input, as a user with a messy file share and a messy cluster meets it: every case ends
in one line naming the key, file or path (or just works), no traceback, nothing lost.

One EfficientAD ``:smoke`` workdir is trained (and exported) once for the module; tests copy it.
"""

import csv
import errno
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import zipfile

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from kdad_jax.training import checkpoint, parallel
from kdad_jax.jobs import validate
from kdad_jax.serve import deploy
from kdad_jax.jobs import predict
from kdad_jax import main as kdad_main
from kdad_jax.config_files import load as load_config_file
from kdad_jax.data import dataset
from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError
from tests.conftest import PROJECT, build_tree

efficientad_config = load_config_file(os.path.join(PROJECT, "configs", "efficientad.py"))
STEPS, EVERY = 6, 2


def smoke_config(root, **train):
    config = efficientad_config.get_config("smoke")
    config.data.root = str(root)
    config.train.steps, config.train.checkpoint_every = STEPS, EVERY
    config.eval.num_heatmaps = 0
    config.eval.plots = False
    for key, value in train.items():
        config.train[key] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, trained + exported workdir, config)."""
    base = tmp_path_factory.mktemp("hostile")
    build_tree(base / "data")
    config = smoke_config(base / "data")
    workdir = base / "trained"
    kdad_main.run(config, str(workdir), mode="train")
    kdad_main.run(config, str(workdir), mode="export")
    return base / "data", workdir, config


def _copy(workdir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(workdir, target)
    return target


def _leaves(workdir, step):
    mngr = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints" / "widget"))
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                          stats=ocp.args.StandardRestore()))
    mngr.close()
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(dict(restored))]


def _main(*args, cwd=PROJECT):
    return subprocess.run([sys.executable, "-m", "kdad_jax.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(proc):
    """The process failed with ``error: ...`` lines only: no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert lines, proc.stderr[-3000:]
    return lines


# --- checkpoints -------------------------------------------------------------------------------

def test_preemption_off_the_interval_saves_the_announced_step_and_resumes_bit_identical(
        trained, tmp_path, monkeypatch):
    root, reference, _ = trained
    workdir = tmp_path / "preempted"
    with monkeypatch.context() as patch:  # the notice arrives during step 3 (interval: 2)
        patch.setattr(parallel.Preemption, "reached", lambda self, step: step == 3)
        with pytest.raises(parallel.Preempted, match="checkpoint saved at step 3"):
            kdad_main.run(smoke_config(root), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints" / "widget")) == ["2", "3"]
    kdad_main.run(smoke_config(root), str(workdir))
    logged = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
    assert logged == [1, 2, 3, 4, 5, 6]  # resumed at 4, after the announced step
    for a, b in zip(_leaves(reference, STEPS), _leaves(workdir, STEPS)):
        assert np.array_equal(a, b)


def _delete_data(step_dir):
    shutil.rmtree(step_dir / "state" / "d")


def _overwrite(step_dir):
    for folder, _, files in os.walk(step_dir / "state"):
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"garbage")


@pytest.mark.parametrize("damage", ["delete_data", "overwrite", "empty_newer_step"])
def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_newest_good_one_used(
        trained, tmp_path, capsys, damage):
    root, reference, config = trained
    workdir = _copy(reference, tmp_path)
    steps = workdir / "checkpoints" / "widget"
    if damage == "empty_newer_step":
        (steps / "10").mkdir()
        bad, good = "10", STEPS
    else:
        {"delete_data": _delete_data, "overwrite": _overwrite}[damage](steps / str(STEPS))
        bad, good = str(STEPS), STEPS - EVERY
    results = kdad_main.run(config, str(workdir), mode="eval")
    err = capsys.readouterr().err
    assert f"{steps / bad}: unreadable checkpoint" in err and f"resuming from step {good} instead" in err
    assert "Traceback" not in err
    assert (steps / "corrupt" / bad).is_dir()  # kept for inspection, not deleted
    assert results["per_category"]["widget"]["train_steps"] == good


def test_a_failed_save_is_one_line_and_keeps_the_last_good_checkpoint(trained, tmp_path, monkeypatch):
    root, _, _ = trained
    workdir = tmp_path / "full"
    original = ocp.CheckpointManager.save

    def disk_full_at_step_4(self, step, *args, **kwargs):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_at_step_4)
    with pytest.raises(UserError) as error:
        kdad_main.run(smoke_config(root), str(workdir))
    message = str(error.value)
    assert "could not save the checkpoint of step 4 (No space left on device)" in message
    assert "the last good checkpoint (step 2) is kept" in message and "\n" not in message
    monkeypatch.undo()
    assert len(_leaves(workdir, 2)) > 10  # still whole


def test_rerunning_a_workdir_with_another_shape_config_names_the_key(trained, tmp_path):
    root, reference, _ = trained
    workdir = _copy(reference, tmp_path)
    proc = _main("--config=configs/efficientad.py:smoke", f"--workdir={workdir}",
                 f"--config.data.root={root}", "--config.model.out_channels=8", "--config.image_size=72")
    [line] = _one_line_error(proc)
    assert "image_size=64 (now 72)" in line and "model.out_channels=16 (now 8)" in line
    assert "use a new --workdir" in line
    assert json.load(open(workdir / "config.json"))["image_size"] == 64  # not overwritten


# --- config values -----------------------------------------------------------------------------

BAD_VALUES = [
    ("train.steps", 0), ("train.steps", -5), ("train.batch_size", 0), ("train.batch_size", -1),
    ("train.per_device_batch_size", -1), ("train.checkpoint_every", 0), ("train.log_every", 0),
    ("seed", -1), ("data.validation_fraction", float("nan")), ("data.validation_fraction", 1.0),
    ("eval.batch_size", 0), ("eval.threshold_percentile", 150.0), ("model.size", "xl"),
    ("train.learning_rate", 0.0), ("export.precision", "int4"),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_each_bad_config_value_is_one_line_naming_key_and_value(key, value):
    config = efficientad_config.get_config("smoke")
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    [line] = validate.problems(config)
    assert line.startswith(f"config.{key}={value!r}: must be ")


def test_bad_config_values_stop_the_job_before_any_work(tmp_path):
    empty = tmp_path / "empty_teacher"
    empty.mkdir()
    proc = _main("--config=configs/efficientad.py:smoke", f"--workdir={tmp_path / 'w'}",
                 "--config.train.steps=0", "--config.eval.threshold_percentile=150",
                 "--config.seed=-1", f"--config.teacher.checkpoint={empty}")
    lines = _one_line_error(proc)
    assert len(lines) == 4
    assert any("config.train.steps=0" in l for l in lines)
    assert any("is an empty folder" in l for l in lines)
    assert not (tmp_path / "w").exists()  # nothing was started


PRESETS = {  # every preset each config file documents (its unknown-preset error lists them)
    "efficientad.py": ["", "s", "m", "cpu", "demo", "smoke"],
    "efficientad_teacher.py": ["", "lite0", "wrn101", "m", "ship", "quick", "smoke"],
    "stfpm.py": ["", "cpu", "demo", "smoke"],
    "eca_mskdad.py": ["", "cpu", "demo", "smoke"],
    "dskd.py": ["", "cpu", "demo", "smoke"],
    "mixed.py": ["", "cpu", "demo", "smoke"],
    "students.py": ["", "cpu", "demo", "smoke"],
    "students_teacher.py": ["", "quick", "kd_only", "smoke", "p=17", "p=33", "p=65"],
}


def test_every_preset_of_every_config_passes_validation():
    """Every documented preset loads (no exception is passed over) and validates; a config file
    missing from the list fails, so a new one gets its presets checked too."""
    names = sorted(n for n in os.listdir(PROJECT / "configs") if n.endswith(".py") and not n.startswith("_"))
    assert names == sorted(PRESETS)
    for name, presets in PRESETS.items():
        module = load_config_file(str(PROJECT / "configs" / name))
        for preset in presets:
            assert validate.problems(module.get_config(preset)) == [], (name, preset)


@pytest.mark.parametrize("where", ["file", "under_file", "output_file"])
def test_a_workdir_or_output_that_cannot_be_a_folder_is_one_line(trained, tmp_path, where):
    root, reference, _ = trained
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    if where == "output_file":
        proc = _main("--config=configs/efficientad.py:smoke", f"--workdir={reference}", "--mode=predict",
                     f"--input={root}/widget/test/good", f"--output={blocker}")
        expected = f"--output={blocker}: is a file, not a folder"
    else:
        workdir = blocker if where == "file" else blocker / "run"
        proc = _main("--config=configs/efficientad.py:smoke", f"--workdir={workdir}",
                     f"--config.data.root={root}")
        expected = (f"--workdir={workdir}: is a file, not a folder" if where == "file" else
                    f"--workdir={workdir}: a part of the path is a file, not a folder")
    assert _one_line_error(proc) == [f"error: {expected}"]


# --- deploy ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector(trained):
    return deploy.load(str(trained[1] / "export" / "widget"))


def test_deploy_refuses_broken_frames_and_unscaled_values(detector):
    good = np.full((64, 64, 3), 100, np.uint8)
    broken = good.astype(np.float32) / 255
    broken[3, 3, 1] = np.nan
    for images, words in [(broken, "NaN or Inf"), (good.astype(np.float32), "range over [100, 100]"),
                          (good.astype(np.uint16), "uint16"), (good.astype(np.int64), "int64"),
                          (good.tolist(), "int64"), (np.zeros((2, 64, 64, 4), np.uint8), "shaped [2, 64, 64, 4]")]:
        with pytest.raises(ValueError, match=r"expected|\[0, 1\]") as error:
            detector.is_anomalous(images, threshold=0.0)
        assert words in str(error.value)
    inf = broken.copy()
    inf[3, 3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        detector.scores(inf)


def test_deploy_accepts_every_documented_layout_alike(detector):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    as_rgb = detector.scores(np.repeat(gray[..., None], 3, -1))
    np.testing.assert_allclose(detector.scores(gray), as_rgb, rtol=1e-6)          # [B, H, W]
    np.testing.assert_allclose(detector.scores(gray[0]), as_rgb[:1], rtol=1e-6)   # [H, W]
    np.testing.assert_allclose(detector.scores(gray[..., None]), as_rgb, rtol=1e-6)
    np.testing.assert_allclose(detector.scores(gray[:1]), as_rgb[:1], rtol=1e-6)  # [1, S, S]: one image
    np.testing.assert_allclose(detector.scores(rgb.astype(np.float32) / 255), detector.scores(rgb),
                               rtol=1e-5)
    assert detector.scores(rgb[:0]).shape == (0,) and detector.maps(rgb[:0]).shape == (0, 64, 64)
    assert detector.is_anomalous(rgb[:0], threshold=1.0).shape == (0,)
    bigger = np.asarray(Image.fromarray(rgb[0]).resize((96, 80), Image.BILINEAR))
    assert detector.scores(bigger).shape == (1,)
    assert detector.scores(bigger.astype(np.float32) / 255).shape == (1,)


# --- predict -----------------------------------------------------------------------------------

def _predict(workdir, inputs, output, *extra):
    return _main("--config=configs/efficientad.py:smoke", f"--workdir={workdir}", "--mode=predict",
                 f"--input={inputs}", f"--output={output}", *extra)


def test_predict_keeps_same_stem_inputs_apart_and_takes_any_file_name(trained, tmp_path):
    root, reference, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = Image.open(root / "widget" / "test" / "good" / "000.png")
    image.save(inputs / "a.png")
    image.save(inputs / "a.jpg", quality=95)
    latin1 = os.fsdecode(b"caf\xe9.png")  # a Windows share's Latin-1 name: not UTF-8
    image.save(os.path.join(inputs, latin1))
    (inputs / "note.txt").write_text("ignored")
    proc = _predict(reference, inputs, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["a.jpg.png", "a.png.png", "caf%E9.png.png",
                                                    "scores.csv"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv", encoding="utf-8")))
    assert len(rows) == 3 and all(r["score"] for r in rows)
    assert any(r["path"].endswith("caf\\udce9.png") for r in rows)


def test_predict_names_each_overlay_reversibly_and_never_reads_its_own_output(trained, tmp_path):
    root, reference, _ = trained
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    good = Image.open(root / "widget" / "test" / "good" / "000.png")
    bad = next((root / "widget" / "test").glob("[!g]*/*.png"))
    images = {"sub/x.png": good, "sub__x.png": Image.open(bad), "a.png": good, "a.PNG": Image.open(bad)}
    for name, image in images.items():
        image.save(inputs / name, format="PNG")
    output = inputs / "out"  # inside the input folder: the second run must not score overlays
    for _ in range(2):
        proc = _predict(reference, inputs, output)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = list(csv.DictReader(open(output / "scores.csv", encoding="utf-8")))
        assert len(rows) == 4
    assert "left out 4 image(s) under --output" in proc.stderr
    overlays = sorted(p for p in os.listdir(output) if p.endswith(".png"))
    assert len(overlays) == 4 and sorted(r["overlay"] for r in rows) == overlays
    assert len({p.casefold() for p in overlays}) == 4  # unique on a case-insensitive disk too
    scores = {}
    for row in rows:  # the overlay name gives back the input's relative path
        relative = urllib.parse.unquote(row["overlay"][: -len(".png")])
        assert os.path.join(str(inputs), relative) == row["path"]
        scores[relative] = float(row["score"])
    # each overlay shows its own input: the pictures under the captions pair up as the inputs do
    picture = {urllib.parse.unquote(r["overlay"][: -len(".png")]):
               np.asarray(Image.open(output / r["overlay"]))[16:] for r in rows}
    assert np.array_equal(picture["a.png"], picture["sub/x.png"])
    assert np.array_equal(picture["a.PNG"], picture["sub__x.png"])
    assert not np.array_equal(picture["a.png"], picture["a.PNG"])
    assert scores["a.png"] == scores["sub/x.png"] != scores["a.PNG"] == scores["sub__x.png"]


def test_predict_with_a_truncated_thresholds_file(trained, tmp_path):
    root, reference, config = trained
    workdir = _copy(reference, tmp_path)
    text = (workdir / "thresholds.json").read_text()
    (workdir / "thresholds.json").write_text(text[: len(text) // 2])
    inputs = f"{root}/widget/test/good"
    [line] = _one_line_error(_predict(workdir, inputs, tmp_path / "out"))
    assert "thresholds.json: unreadable" in line and "run --mode=eval to rebuild it" in line
    proc = _predict(workdir, inputs, tmp_path / "out", "--threshold=0.5")
    assert proc.returncode == 0 and "using --threshold=0.5" in proc.stderr
    kdad_main.run(config, str(workdir), mode="eval")  # eval rebuilds it
    assert "widget" in json.load(open(workdir / "thresholds.json"))
    assert _predict(workdir, inputs, tmp_path / "out2").returncode == 0


# --- odd files ---------------------------------------------------------------------------------

def test_decompression_bombs_are_skipped_naming_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.full((60, 60, 3), 9, np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 px is over twice the limit
    skipped = []
    images, kept = image_io.read_images([str(tmp_path / "huge.png")], 32, skipped)
    assert images is None and kept == []
    assert skipped[0].startswith(f"{tmp_path / 'huge.png'}: unreadable image (over Pillow's "
                                 f"decompression-bomb limit")
    source = image_io.FolderSource(str(tmp_path), 16, kind="penalty")
    with pytest.raises(UserError, match="none of its 1 penalty image file"):
        source[0]


def test_a_float_tiff_in_0_1_reads_at_full_scale(tmp_path):
    values = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    Image.fromarray(values, "F").save(tmp_path / "float.tif")
    image = image_io.load_rgb(str(tmp_path / "float.tif"), 40)
    assert image.max() == 255 and image[0, 0, 0] == 0
    np.testing.assert_allclose(image[..., 0] / 255.0, values, atol=1 / 255)


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    upright = np.zeros((30, 50, 3), np.uint8)
    upright[:, :10] = 255  # white band on the left of the upright picture
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # what the camera wrote: 50 x 30
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    image, size = image_io.load_rgb_and_size(str(tmp_path / "phone.jpg"), 50)
    assert size == (50, 30)
    assert image[:, :5].mean() > 200 and image[:, 20:].mean() < 50


def test_hidden_links_and_subfolders_in_category_folders(tmp_path, capsys):
    base = build_tree(tmp_path / "data")
    (base / "test" / "square" / "._000.png").write_bytes(b"\0\x05\x16\x07 AppleDouble")
    (base / "train" / "good" / "._001.png").write_bytes(b"\0\x05\x16\x07 AppleDouble")
    os.symlink(tmp_path / "gone.png", base / "train" / "good" / "linked.png")
    extra = base / "train" / "good" / "more"
    extra.mkdir()
    for i in range(3):
        shutil.copy(base / "train" / "good" / "000.png", extra / f"{i}.png")
    data = dataset.read_category("mvtec", str(tmp_path / "data"), "widget", 32)
    assert len(data.train) == 6 and len(data.test) == 4
    assert data.skipped == [f"{base / 'train' / 'good' / 'linked.png'}: unreadable image (broken "
                            f"symbolic link to {tmp_path / 'gone.png'})"]
    err = capsys.readouterr().err
    assert "ignored 3 image(s) in subfolder(s) more/ (3): only the folder's own files are read" in err
    assert "._0" not in err


def test_all_black_training_images_say_so(tmp_path):
    base = build_tree(tmp_path / "data")
    for path in (base / "train" / "good").iterdir():
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(path)
    with pytest.raises(UserError, match=r"all 6 readable training images are one flat colour \(value 0"):
        dataset.read_category("mvtec", str(tmp_path / "data"), "widget", 32)


def test_penalty_folder_with_only_broken_files_says_how_many(tmp_path):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"broken")
    source = image_io.FolderSource(str(tmp_path), 16, kind="penalty")
    with pytest.raises(UserError) as error:
        source[1]
    assert str(error.value) == f"{tmp_path}: none of its 2 penalty image file(s) is readable"


def test_a_failing_later_category_keeps_the_finished_ones_results(tmp_path):
    build_tree(tmp_path / "data", "alpha")
    broken = build_tree(tmp_path / "data", "beta", seed=1)
    for path in (broken / "test").rglob("*.png"):
        path.write_bytes(b"")  # beta: no readable test image
    config = smoke_config(tmp_path / "data")
    config.train.steps = 2
    with pytest.raises(UserError, match="beta: no readable test images"):
        kdad_main.run(config, str(tmp_path / "w"))
    results = json.load(open(tmp_path / "w" / "results.json"))
    assert list(results["per_category"]) == ["alpha"] and results["image_auroc"] is not None
    assert "no readable test images" in results["failed"]["beta"]


def test_checkpoint_module_reports_an_unwritable_checkpoint_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create the checkpoint folder"):
        checkpoint.manager(str(blocker / "widget"), 2)


def test_file_share_oddities_read_as_images(tmp_path):
    """Upper-case extensions, spaces and non-ASCII in names, CMYK JPEGs, 1-bit and palette PNGs."""
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "Scan 01 (copy).JPG", quality=100)
    Image.fromarray(rgb).save(tmp_path / "Prüfteil Nr. 2.PNG")
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "bilevel.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "palette.png")
    paths = image_io.list_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["Prüfteil Nr. 2.PNG", "Scan 01 (copy).JPG",
                                                    "bilevel.png", "palette.png"]
    skipped = []
    images, kept = image_io.read_images(paths, 40, skipped)
    assert skipped == [] and images.shape == (4, 40, 40, 3)
    np.testing.assert_array_equal(images[0], rgb)
    assert np.abs(images[1].astype(int) - rgb).mean() < 8  # CMYK round trip, JPEG
    assert set(np.unique(images[2])) == {0, 255}


# --- checkpoints from the internet are data, never code ---------------------------------------

class _Payload:
    """Pickles as a call of ``os.system`` that creates ``marker``: if it runs, the file appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _legacy_pth(path, marker, where):
    """A legacy-format (pre-zip) ``.pth`` with the payload in its header, object or storage keys."""
    from kdad_jax.teachers import state_dict
    payload = _Payload(marker)
    parts = [state_dict._LEGACY_MAGIC, 1001, {"little_endian": True}, {"conv.weight": payload},
             ["0"]]
    parts[{"header": 0, "object": 3, "storage_keys": 4}[where]] = payload
    with open(path, "wb") as stream:
        for part in parts:
            pickle.dump(part, stream, protocol=2)
    return path


def _zip_pth(path, marker):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"conv.weight": _Payload(marker)}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return path


EVIL_KINDS = ("legacy_header", "legacy_object", "legacy_storage_keys", "zip")


def _evil(tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / f"{kind}.pth"
    if kind == "zip":
        return _zip_pth(path, marker), marker
    return _legacy_pth(path, marker, kind.removeprefix("legacy_")), marker


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_a_crafted_checkpoint_is_refused_before_its_code_runs_in_the_reader(tmp_path, kind):
    from kdad_jax.teachers.state_dict import StateDictError, read_state_dict
    path, marker = _evil(tmp_path, kind)
    with pytest.raises(StateDictError, match=r"refusing to unpickle posix\.system") as error:
        read_state_dict(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_a_crafted_checkpoint_runs_nothing_through_convert(tmp_path, kind):
    path, marker = _evil(tmp_path, kind)
    proc = subprocess.run([sys.executable, "-m", "kdad_jax.convert", "--arch", "resnet18", "--src",
                           str(path), "--dst", str(tmp_path / "out.msgpack")], cwd=PROJECT,
                          capture_output=True, text=True, timeout=300)
    assert _one_line_error(proc) == [f"error: {path}: refusing to unpickle posix.system: "
                                     f"not part of a state_dict"]
    assert not marker.exists() and not (tmp_path / "out.msgpack").exists()


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_a_crafted_teacher_checkpoint_runs_nothing_in_a_torchvision_teacher_method(
        trained, tmp_path, kind):
    root = trained[0]
    path, marker = _evil(tmp_path, kind)
    config = load_config_file(os.path.join(PROJECT, "configs", "stfpm.py")).get_config("smoke")
    config.data.root, config.teacher.checkpoint = str(root), str(path)
    with pytest.raises(UserError, match="refusing to unpickle posix.system"):
        kdad_main.run(config, str(tmp_path / "w"))
    assert not marker.exists()
    assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_a_crafted_backbone_checkpoint_runs_nothing_in_teacher_pretraining(trained, tmp_path, kind):
    root = trained[0]
    path, marker = _evil(tmp_path, kind)
    config = load_config_file(os.path.join(PROJECT, "configs", "efficientad_teacher.py")).get_config("smoke")
    config.data.root, config.data.include_skimage = str(root), False
    config.pretrain.backbone, config.pretrain.backbone_checkpoint = "resnet18", str(path)
    with pytest.raises(UserError, match="refusing to unpickle posix.system"):
        kdad_main.run(config, str(tmp_path / "w"))
    assert not marker.exists()


def test_a_crafted_teacher_checkpoint_is_one_line_from_the_command_line(trained, tmp_path):
    path, marker = _evil(tmp_path, "legacy_header")
    proc = _main("--config=configs/stfpm.py:smoke", f"--workdir={tmp_path / 'w'}",
                 f"--config.data.root={trained[0]}", f"--config.teacher.checkpoint={path}")
    assert any("refusing to unpickle posix.system" in line for line in _one_line_error(proc))
    assert not marker.exists()


def test_an_npz_with_pickled_objects_is_refused(tmp_path):
    from kdad_jax.teachers.state_dict import StateDictError, read_state_dict
    path = tmp_path / "evil.npz"
    np.savez(path, weight=np.array([_Payload(tmp_path / "marker")], dtype=object))
    with pytest.raises(StateDictError, match="evil.npz"):
        read_state_dict(str(path))
    assert not (tmp_path / "marker").exists()


# --- one workdir, one run ------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from kdad_jax.training.workdir import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold_workdir(workdir):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(workdir)], cwd=PROJECT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_holder(trained, tmp_path, capsys):
    root, reference, config = trained
    workdir = _copy(reference, tmp_path)
    metrics = (workdir / "metrics.jsonl").read_bytes()
    holder = _hold_workdir(workdir)
    try:
        proc = _main("--config=configs/efficientad.py:smoke", f"--workdir={workdir}",
                     f"--config.data.root={root}", "--mode=eval")
        lines = _one_line_error(proc)
        assert len(lines) == 1
        assert f"{workdir}: in use by another run: pid {holder.pid} on host {socket.gethostname()}" \
            in lines[0]
        assert (workdir / "metrics.jsonl").read_bytes() == metrics  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing (SIGKILL): the next run takes the workdir over, warning.
    kdad_main.run(config, str(workdir), mode="eval")
    assert (f"warning: {workdir}: taking over the lock of pid {holder.pid} on host "
            f"{socket.gethostname()}") in capsys.readouterr().err
    assert (workdir / ".lock").read_text() == ""  # released at the end



def _losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_parallel_categories_larger_than_the_category_count_trains_as_alone(trained, tmp_path):
    """One category with K = 2: the group of one (as the last group of 3 categories at K = 2)
    trains as a stack of one, the same steps and results as the run with K = 1 (it raised 'vmap
    got inconsistent sizes': its device images were not stacked)."""
    root, reference, config = trained
    alone = json.loads((reference / "results.json").read_text())["per_category"]["widget"]
    results = kdad_main.run(smoke_config(root, parallel_categories=2), str(tmp_path / "w"))
    got = results["per_category"]["widget"]
    assert got["train_steps"] == STEPS
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert got[key] == pytest.approx(alone[key], abs=1e-4), key
    expected, losses = _losses(reference), _losses(tmp_path / "w")
    assert set(losses) == set(expected) and len(expected) == STEPS
    for step, loss in expected.items():
        assert losses[step] == pytest.approx(loss, rel=1e-4), step


_KILLED_IN_SAVE = """
import os, signal, sys
from absl import app
from orbax.checkpoint._src.path import atomicity
from kdad_jax import main

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def killed_before_the_rename_of_step_4(self, *args, **kwargs):
    if os.path.basename(str(self.get())).startswith("4."):
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = killed_before_the_rename_of_step_4
sys.argv = ["main", *sys.argv[1:]]
app.run(main.main, flags_parser=main._parse_flags)
"""


def _leftovers(workdir):
    return [p for p in workdir.rglob("*") if "orbax-checkpoint-tmp" in p.name]


def test_a_rerun_after_kill_9_during_a_save_removes_the_saves_leftovers(trained, tmp_path):
    root, _, config = trained
    workdir = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_SAVE, "--config=configs/efficientad.py:smoke",
         f"--workdir={workdir}", f"--config.data.root={root}", f"--config.train.steps={STEPS}",
         f"--config.train.checkpoint_every={EVERY}", "--config.eval.num_heatmaps=0",
         "--config.eval.plots=False"], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _leftovers(workdir), "the kill did not land inside the save"
    results = kdad_main.run(config, str(workdir), mode="eval")  # saves nothing: opening cleans
    assert _leftovers(workdir) == []
    assert results["per_category"]["widget"]["train_steps"] == EVERY
    results = kdad_main.run(config, str(workdir))
    assert results["per_category"]["widget"]["train_steps"] == STEPS
    assert sorted(int(p.name) for p in (workdir / "checkpoints" / "widget").iterdir()
                  if p.name.isdigit()) == [4, STEPS]


# --- names that are markup or formulas -----------------------------------------------------------

HOSTILE_NAME = '<img src=x onerror="alert(1)">|=HYPERLINK("http://x")'


def test_names_in_results_md_and_csv_stay_text(tmp_path):
    import markdown as python_markdown  # passes raw HTML through, as many viewers do

    from kdad_jax.report import tables
    result = {"image_auroc": 0.5, "pixel_auroc": 0.75,
              "image_auroc_per_defect": {"=cmd|' /C calc'!A0": 0.5, "<b>bold</b>_x_": 1.0},
              "unavailable": {"au_pro": "no <script>masks</script>"}}
    per_category = {HOSTILE_NAME: result, "metal_nut": dict(result)}
    md_path, csv_path = tables.write_tables(str(tmp_path), per_category,
                                            tables.mean_over_categories(per_category), "run <i>x</i>")
    rendered = python_markdown.markdown(open(md_path).read(), extensions=["tables"])
    for tag in ("<img", "<b>", "<script", "<i>", "<a ", "<em>"):
        assert tag not in rendered
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;|=HYPERLINK" in rendered  # shown whole
    assert "metal_nut" in rendered and "_x_" in rendered
    for table in rendered.split("<table>")[1:]:  # no name splits a row into more cells
        rows = table.split("<tr>")[1:]
        assert len({row.count("<td") + row.count("<th") for row in rows}) == 1, table
    names = [row[0] for row in csv.reader(open(csv_path, newline=""))][1:]
    assert names == [HOSTILE_NAME, "metal_nut", "mean"]  # not a formula start: unchanged
    formula = "=HYPERLINK(1)"
    _, csv_path = tables.write_tables(str(tmp_path), {formula: result}, {}, "t")
    assert list(csv.reader(open(csv_path, newline="")))[1][0] == "'" + formula


# --- a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs (root only): real ENOSPC from the kernel, Orbax and TensorStore included."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); "
                    "test_a_failing_write_keeps_the_previous_export covers the same code")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk, leave):
    """Leave ``leave`` bytes free on ``disk``."""
    index = len(list(disk.glob("filler*")))
    with open(disk / f"filler{index}", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(shutil.disk_usage(disk).free - leave, 1))


def _no_temporary_files(folder):
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or "orbax-checkpoint-tmp" in p.name]


def test_a_full_disk_during_export_keeps_the_previous_export_and_is_one_line(trained, small_disk):
    root, reference, _ = trained
    workdir = small_disk / "w"
    shutil.copytree(reference, workdir)
    export = workdir / "export" / "widget"
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    images = np.asarray(Image.open(root / "widget" / "test" / "good" / "000.png").convert("RGB"))[None]
    scores = deploy.load(str(export)).scores(images)
    _fill(small_disk, 2 << 20)  # 2 MB: the export's 12 MB of weights cannot be written
    args = ("--config=configs/efficientad.py:smoke", f"--workdir={workdir}", f"--config.data.root={root}",
            "--config.eval.num_heatmaps=0", "--config.eval.plots=False")
    [line] = _one_line_error(_main(*args, "--mode=export"))
    assert "cannot write (No space left on device); the previous file, if any, is kept" in line
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    np.testing.assert_array_equal(deploy.load(str(export)).scores(images), scores)
    results = (workdir / "results.json").read_bytes()
    _fill(small_disk, 0)  # now nothing at all: evaluation stops at its first write, one line
    [line] = _one_line_error(_main(*args, "--mode=eval"))
    assert "No space left on device" in line and str(workdir) in line
    assert (workdir / "results.json").read_bytes() == results
    assert _no_temporary_files(workdir) == []


def test_a_full_disk_during_a_checkpoint_save_is_one_line_without_orbax_tracebacks(
        trained, small_disk):
    root, _, _ = trained
    _fill(small_disk, 30 << 20)  # room for one 21 MB checkpoint, not two
    proc = _main("--config=configs/efficientad.py:smoke", f"--workdir={small_disk / 'w'}",
                 f"--config.data.root={root}", f"--config.train.steps={STEPS}",
                 f"--config.train.checkpoint_every={EVERY}", "--config.eval.num_heatmaps=0")
    [line] = _one_line_error(proc)
    assert "could not save the checkpoint of step 4 (No space left on device)" in line
    assert "the last good checkpoint (step 2) is kept" in line
    assert "raised an exception" not in proc.stderr  # Orbax's thread reports are dropped
    assert _no_temporary_files(small_disk) == []  # the half-written save gave its space back
    assert len(_leaves(small_disk / "w", 2)) > 10


def test_a_failing_write_keeps_the_previous_export(trained, tmp_path, monkeypatch):
    """Without a tmpfs: the disk fills half-way through the weights file."""
    from kdad_jax import files
    from kdad_jax.serve import export as export_module
    _, reference, config = trained
    workdir = _copy(reference, tmp_path)
    export = workdir / "export" / "widget"
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    real_open = open

    class HalfWritten:
        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            self.stream.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    def filling(path, mode="r", *args, **kwargs):
        stream = real_open(path, mode, *args, **kwargs)
        return HalfWritten(stream) if "weights.msgpack" in str(path) else stream

    monkeypatch.setattr(files, "open", filling, raising=False)
    with pytest.raises(UserError) as error:
        kdad_main.run(config, str(workdir), mode="export")
    assert "weights.msgpack: cannot write (No space left on device)" in str(error.value)
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    assert _no_temporary_files(workdir) == []
    deploy.load(str(export))


# --- artifacts prove what they are ---------------------------------------------------------------

def _edit_meta(folder, change):
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _swap_in_other_weights(folder):
    """Weights of 'another export': same file, one value changed (the sizes match)."""
    from flax import serialization
    weights = jax.tree_util.tree_map(
        np.array, serialization.msgpack_restore((folder / "weights.msgpack").read_bytes()))
    jax.tree_util.tree_leaves(weights["params"])[0].flat[0] += 1.0
    (folder / "weights.msgpack").write_bytes(serialization.msgpack_serialize(weights))


def _as_onnx_with_an_empty_model(folder):
    (folder / "model.onnx").write_bytes(b"")
    _edit_meta(folder, lambda m: m.update(format=deploy.ONNX_FORMAT,
                                          files={"model.onnx": "ab" * 32}))


ARTIFACT_DAMAGE = {
    "nan_threshold": (lambda f: (f / "meta.json").write_text(
        (f / "meta.json").read_text().replace('"threshold": ', '"threshold": NaN, "was": ')),
        "meta.json: unreadable (ValueError: NaN is not a number"),
    "string_threshold": (lambda f: _edit_meta(f, lambda m: m.update(threshold="0.5")),
                         "threshold is '0.5', expected a finite number"),
    "zero_image_size": (lambda f: _edit_meta(f, lambda m: m.update(image_size=0)),
                        "image_size is 0, expected a positive integer"),
    "unknown_format": (lambda f: _edit_meta(f, lambda m: m.update(format="kdad_jax export v9")),
                       "format is 'kdad_jax export v9'"),
    "no_arguments": (lambda f: _edit_meta(f, lambda m: m.pop("arguments")),
                     "arguments must list the names"),
    "no_digests": (lambda f: _edit_meta(f, lambda m: m.pop("files")),
                   "files must give the sha256 of model.jax_export, weights.msgpack"),
    "truncated_weights": (lambda f: (f / "weights.msgpack").write_bytes(
        (f / "weights.msgpack").read_bytes()[:1000]), "weights.msgpack: sha256"),
    "swapped_weights": (_swap_in_other_weights, "weights.msgpack: sha256"),
    "swapped_function": (lambda f: (f / "model.jax_export").write_bytes(b"\0" * 100),
                         "model.jax_export: sha256"),
    "empty_model_onnx": (_as_onnx_with_an_empty_model, "model.onnx: sha256"),
    "missing_meta": (lambda f: (f / "meta.json").unlink(), "meta.json: not found"),
}


@pytest.mark.parametrize("damage", sorted(ARTIFACT_DAMAGE))
def test_a_damaged_or_mixed_up_artifact_is_refused_in_one_line(trained, tmp_path, damage):
    _, reference, _ = trained
    folder = tmp_path / "export"
    shutil.copytree(reference / "export" / "widget", folder)
    deploy.load(str(folder))  # whole before the damage
    spoil, words = ARTIFACT_DAMAGE[damage]
    spoil(folder)
    with pytest.raises(deploy.ArtifactError) as error:
        deploy.load(str(folder))
    message = str(error.value)
    assert words in message and "\n" not in message, message


@pytest.mark.parametrize("shape", [(64, 64, 4), (64, 64, 2), (3, 64, 64), (2, 3, 64, 64)])
def test_deploy_refuses_images_whose_layout_is_ambiguous(detector, shape):
    with pytest.raises(ValueError, match="expected") as error:
        detector.scores(np.zeros(shape, np.uint8))
    assert "alpha" in str(error.value) or "channels first" in str(error.value)
