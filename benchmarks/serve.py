"""The inference service under load, on loopback: images/s and p50/p99 latency per client count.

    python benchmarks/serve.py [--export W/export/CATEGORY] [--clients 1,4,16] [--requests 200]

Without ``--export`` it trains and exports EfficientAD ``:smoke`` on a tiny generated tree first
(64² images: the figures then show the service's own overhead and its batching more than the
model). Starts ``python -m kdad_jax.serve`` on a free loopback port, sends ``--requests`` single-
image requests per client count from that many concurrent clients, and prints one JSON object.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
sys.path.insert(0, PROJECT)


def _smoke_export(base: str) -> str:
    import pathlib

    sys.path.insert(0, os.path.join(PROJECT, "configs"))
    import efficientad

    from kdad_jax import main as kdad_main
    from tests.conftest import build_tree

    build_tree(pathlib.Path(base) / "data", n_good=4, n_bad=4)
    config = efficientad.get_config("smoke")
    config.data.root, config.eval.num_heatmaps, config.eval.plots = os.path.join(base, "data"), 0, False
    kdad_main.run(config, os.path.join(base, "w"))
    kdad_main.run(config, os.path.join(base, "w"), mode="export")
    return os.path.join(base, "w", "export", "widget")


def _images(export: str) -> list:
    """PNG bytes of 8 generated images at the export's size (decoding and resizing cost as for a
    camera frame of that size)."""
    import io

    import numpy as np
    from PIL import Image

    size = json.load(open(os.path.join(export, "meta.json")))["image_size"]
    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(8):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(80, 120, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        pictures.append(buffer.getvalue())
    return pictures


def _post(url: str, name: str, data: bytes) -> float:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - start


def _start(export: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "kdad_jax.serve", export, "--port", str(port)],
                               cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the service did not start: {process.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return process
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the service did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="an export folder (default: a :smoke export made here)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=200, help="requests per client count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON alone
            export = args.export or _smoke_export(base)
        name = os.path.basename(os.path.normpath(export))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = _start(export, port)
        url = f"http://127.0.0.1:{port}/predict/{name}"
        pictures = _images(export)
        rows = []
        try:
            for i in range(16):  # warm-up: every padded batch size compiled
                _post(url, "warm.png", pictures[i % len(pictures)])
            for clients in [int(c) for c in args.clients.split(",")]:
                start = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    latencies = list(pool.map(lambda i: _post(url, f"{i}.png", pictures[i % len(pictures)]),
                                              range(args.requests)))
                wall = time.perf_counter() - start
                ordered = sorted(latencies)
                rows.append({"clients": clients, "requests": args.requests,
                             "images_per_s": round(args.requests / wall, 2),
                             "p50_ms": round(1e3 * statistics.median(ordered), 2),
                             "p99_ms": round(1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)})
        finally:
            process.terminate()
            process.wait(timeout=30)
        meta = json.load(open(os.path.join(export, "meta.json")))
    print(json.dumps({"model": name, "method": meta.get("method"), "format": meta.get("format"),
                      "image_size": meta.get("image_size"), "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
