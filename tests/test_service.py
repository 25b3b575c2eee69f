"""The inference service (``python -m kdad_jax.serve``) on a loopback port with a ``:smoke`` export:
concurrent load scored as ``kdad_jax.deploy`` scores it, bad uploads refused in one line while
the others are served, a full queue answered 503, and the page working in a headless browser."""

import concurrent.futures
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from kdad_jax import main as kdad_main
from kdad_jax.serve import deploy
from tests.conftest import PROJECT, build_tree, optional_module
from tests.test_efficientad import efficientad_config
from tests.test_report_html import _browser


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export folder, test image paths)."""
    base = tmp_path_factory.mktemp("service")
    build_tree(base / "data", n_good=3, n_bad=3)
    config = efficientad_config.get_config("smoke")
    config.data.root, config.eval.num_heatmaps, config.eval.plots = str(base / "data"), 0, False
    kdad_main.run(config, str(base / "w"))
    kdad_main.run(config, str(base / "w"), mode="export")
    paths = sorted(str(p) for p in (base / "data" / "widget" / "test").rglob("*.png"))
    return base / "w" / "export" / "widget", paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folders, *options):
        optional_module("fastapi", "serve")
        optional_module("uvicorn", "serve")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kdad_jax.serve", *map(str, folders), "--port", str(self.port),
             *options], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.process.stderr.read()[-3000:])
            try:
                if json.loads(self.get("/health"))["status"] == "ok":
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise AssertionError("the service did not start")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def post(self, path, files):
        """``files``: [(name, bytes)] as multipart field ``images`` -> (status, JSON, headers)."""
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
            for name, data in files) + f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(exported):
    folder, _ = exported
    running = Server([folder])
    yield running
    running.stop()


def test_health_and_models_describe_the_export(server, exported):
    folder, _ = exported
    meta = json.loads((folder / "meta.json").read_text())
    assert json.loads(server.get("/health")) == {"status": "ok", "models": 1}
    [model] = json.loads(server.get("/models"))
    assert model["name"] == "widget" and model["format"] == "jax_export"
    assert model["image_size"] == meta["image_size"] and model["threshold"] == meta["threshold"]
    assert model["test_metrics"] == meta["test_metrics"]


def test_500_requests_from_16_clients_are_all_scored_as_deploy_scores_them(server, exported):
    folder, paths = exported
    expected = dict(zip(paths, deploy.load(str(folder)).scores(paths).tolist()))
    files = {p: open(p, "rb").read() for p in paths}

    def one(i):
        path = paths[i % len(paths)]
        return path, server.post("/predict/widget", [(path.rsplit("/", 1)[-1], files[path])])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(500)))
    assert len(answers) == 500
    spread = max(expected.values()) - min(expected.values())
    threshold = json.loads((folder / "meta.json").read_text())["threshold"]
    for path, (status, body, _) in answers:
        assert status == 200, body
        [row] = body
        assert row["file"] == path.rsplit("/", 1)[-1] and row["threshold"] == threshold
        assert row["score"] == pytest.approx(expected[path], abs=1e-5 * spread)
        assert row["is_anomalous"] == (row["score"] >= threshold)


def test_several_images_per_request_and_heat_maps(server, exported):
    _, paths = exported
    status, body, _ = server.post("/predict/widget?maps=1",
                                  [(p.rsplit("/", 1)[-1], open(p, "rb").read()) for p in paths[:3]])
    assert status == 200 and len(body) == 3
    for row in body:
        assert row["heatmap"].startswith("data:image/png;base64,")
        import base64
        picture = Image.open(io.BytesIO(base64.b64decode(row["heatmap"].split(",", 1)[1])))
        assert picture.size == (64, 64)


def _png(size, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_uploads_get_a_4xx_in_one_line_and_the_others_are_served(server, exported):
    _, paths = exported
    good = open(paths[0], "rb").read()
    cases = {
        "not an image": ([("notes.txt", b"hello, not an image")], 400, "notes.txt: unreadable image"),
        "empty": ([("empty.png", b"")], 400, "empty.png: empty file"),
        "truncated": ([("cut.png", good[: len(good) // 2])], 400, "cut.png: unreadable image"),
        "bomb": ([("bomb.png", _png((8000, 8000), "L"))], 413, "bomb.png: 8000x8000 px, over the limit"),
        "one bad among good": ([("a.png", good), ("b.txt", b"x")], 400, "b.txt: unreadable image"),
    }
    for name, (files, status, words) in cases.items():
        got, body, _ = server.post("/predict/widget", files)
        assert got == status and words in body["error"] and "\n" not in body["error"], (name, body)
    got, body, _ = server.post("/predict/nobody", [("a.png", good)])
    assert got == 404 and "unknown model 'nobody' (serving: widget)" in body["error"]
    got, body, _ = server.post("/predict/widget", [("a.png", good)])
    assert got == 200 and len(body) == 1  # still serving


def test_over_the_size_limit_is_413_and_a_full_queue_is_503_with_retry_after(exported):
    folder, paths = exported
    tight = Server([folder], "--max-upload-mb", "0.05", "--queue-size", "2")
    try:
        status, body, _ = tight.post("/predict/widget", [("big.png", b"\x89PNG" + b"\0" * 60_000)])
        assert status == 413 and "big.png: 0.1 MB, over the limit of 0.05 MB" in body["error"]
        image = open(paths[0], "rb").read()
        status, body, headers = tight.post("/predict/widget", [(f"{i}.png", image) for i in range(3)])
        assert status == 503 and headers.get("retry-after") == "1" and "busy" in body["error"]
        status, body, _ = tight.post("/predict/widget", [(f"{i}.png", image) for i in range(2)])
        assert status == 200 and len(body) == 2
    finally:
        tight.stop()


def test_a_broken_export_folder_is_one_line(tmp_path, exported):
    optional_module("fastapi", "serve")
    folder, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "weights.msgpack").write_bytes(b"\0")
    proc = subprocess.run([sys.executable, "-m", "kdad_jax.serve", str(broken), "--port",
                           str(_free_port())], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {broken}/weights.msgpack: sha256")


def test_the_page_scores_an_upload_in_a_headless_browser(server):
    page = server.get("/").decode()
    assert "<select id=\"model\">" in page
    proc = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=20000", "--dump-dom", f"{server.url}/?selftest=1"],
                          capture_output=True, text=True, timeout=180)
    dom = proc.stdout
    assert "class=\"script-error\"" not in dom, dom[-3000:]
    assert "scored 1 image(s) with widget" in dom, dom[-3000:]
    assert 'alt="heat map of selftest.png"' in dom and "data:image/png;base64," in dom
    verdicts = re.findall(r'<span class="verdict (anomalous|good)">(ANOMALOUS|good)</span>', dom)
    assert verdicts in ([("anomalous", "ANOMALOUS")], [("good", "good")]), verdicts
    assert '<option value="widget">widget</option>' in dom


def test_the_serve_benchmark_prints_its_figures(exported):
    optional_module("fastapi", "serve")
    folder, _ = exported
    proc = subprocess.run([sys.executable, "benchmarks/serve.py", "--export", str(folder),
                           "--requests", "8", "--clients", "1,2"], cwd=PROJECT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["model"] == "widget" and [c["clients"] for c in result["cases"]] == [1, 2]
    for case in result["cases"]:
        assert case["requests"] == 8 and case["images_per_s"] > 0
        assert 0 < case["p50_ms"] <= case["p99_ms"]
