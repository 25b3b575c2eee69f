"""An inference service for exported detectors: FastAPI on uvicorn (``python -m kdad_jax.serve``).

    GET  /                 a page: pick a model, drop images, see score, verdict and heat map
    GET  /health           {"status": "ok", "models": N}
    GET  /models           name, format, image size, threshold and test metrics of each model
    POST /predict/{name}   multipart field ``images`` (one or more files) ->
                           [{file, score, is_anomalous, threshold}], ``?maps=1`` adds each heat-map
                           overlay as a PNG data URL (``heatmap``)

Each model (one per export folder, named by the folder) has a queue and one worker: requests
put their decoded images on the queue and the worker runs them together, up to ``max_batch``
images or ``max_wait_ms`` after the first, so throughput grows with load. A full queue answers
503 with ``Retry-After``. A bad upload (not an image, empty, truncated, over ``max_upload_mb``, a
decompression bomb) or an unknown model is a 4xx with a one-line reason; the others keep being
served. Images are decoded and resized by ``kdad_jax.serve.deploy`` (the reader training uses).
"""

import asyncio
import base64
import concurrent.futures
import dataclasses
import io
import os
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from kdad_jax.data import images as image_io
from kdad_jax.errors import UserError
from kdad_jax.serve import deploy

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


@dataclasses.dataclass
class Options:
    max_batch: int = 8           # images run together by a model's worker
    max_wait_ms: float = 5.0     # how long the worker waits for more after the first image
    queue_size: int = 64         # images waiting per model; beyond it: 503 + Retry-After
    max_upload_mb: float = 20.0  # per file; beyond it: 413
    max_pixels: int = 40_000_000  # per image (decompression bombs): beyond it: 413


class BadUpload(ValueError):
    """An upload that cannot be scored: ``status`` 400 or 413, the message names the file."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode(name: str, data: bytes, options: Options) -> Image.Image:
    """The uploaded file as an upright PIL image, or ``BadUpload``."""
    if not data:
        raise BadUpload(400, f"{name}: empty file")
    if len(data) > options.max_upload_mb * 2 ** 20:
        raise BadUpload(413, f"{name}: {len(data) / 2 ** 20:.1f} MB, over the limit of "
                             f"{options.max_upload_mb:g} MB")
    try:
        return image_io.open_image(io.BytesIO(data), name, options.max_pixels)
    except image_io.ImageTooLarge as e:
        raise BadUpload(413, str(e)) from None
    except UserError as e:
        raise BadUpload(400, str(e)) from None


class QueueFull(Exception):
    """The model's queue has no room for the request's images."""


class Batcher:
    """One model's queue and worker (see the module docstring)."""

    def __init__(self, detector: deploy.Detector, options: Options):
        self.detector, self.options = detector, options
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=options.queue_size)
        # One thread per model: its runtime sees one batch at a time, the event loop none.
        self.executor = concurrent.futures.ThreadPoolExecutor(1)
        self.task = None

    async def start(self) -> None:
        """Compile every padded batch size first (no first-request stalls), then serve."""
        size = self.detector.image_size
        loop = asyncio.get_running_loop()
        for batch in self.sizes:
            await loop.run_in_executor(self.executor, self.detector.maps,
                                       np.zeros((batch, size, size, 3), np.float32))
        self.task = loop.create_task(self._work())

    @property
    def sizes(self) -> List[int]:
        """The batch sizes the model runs: powers of two below ``max_batch``, and ``max_batch``."""
        sizes, batch = [], 1
        while batch < self.options.max_batch:
            sizes.append(batch)
            batch *= 2
        return sizes + [self.options.max_batch]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, images: Sequence[np.ndarray]) -> List[asyncio.Future]:
        """One future per prepared image [S, S, 3] float32; ``QueueFull`` if they do not all fit."""
        if self.queue.maxsize - self.queue.qsize() < len(images):
            raise QueueFull()
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            future = loop.create_future()
            self.queue.put_nowait((image, future))
            futures.append(future)
        return futures

    async def _next_batch(self) -> list:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.max_wait_ms / 1e3
        while len(batch) < self.options.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            images = np.stack([image for image, _ in batch])
            try:
                maps = await loop.run_in_executor(self.executor, self._run, images)
            except Exception as e:  # noqa: BLE001 - reported to each waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), amap in zip(batch, maps):
                if not future.done():
                    future.set_result(amap)

    def _run(self, images: np.ndarray) -> np.ndarray:
        """Maps of ``images``, run padded to the next of ``sizes`` (a few compiled shapes)."""
        count = len(images)
        padded = min(size for size in self.sizes if size >= count)
        if padded > count:
            images = np.concatenate([images, np.repeat(images[-1:], padded - count, axis=0)])
        return self.detector.maps(images)[:count]


def heatmap_data_url(image: np.ndarray, amap: np.ndarray, threshold) -> str:
    """The map over the image as a PNG data URL; red from 0.8 of the threshold up (a fixed scale
    per model, so a good image stays blue)."""
    from kdad_jax.report.visualize import overlay
    top = threshold / 0.8 if threshold and threshold > 0 else float(amap.max()) or 1.0
    picture = overlay((image * 255).round().astype(np.uint8), amap, 0.0, top)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_models(folders: Sequence[str]) -> Dict[str, deploy.Detector]:
    """{folder name: detector}; ``deploy.ArtifactError`` or ``ValueError`` (one line) if not."""
    models = {}
    for folder in folders:
        name = os.path.basename(os.path.normpath(folder))
        if name in models:
            raise ValueError(f"{folder}: a second model named {name!r} (models are named by "
                             f"their folder; rename one)")
        models[name] = deploy.load(folder)
    return models


def make_app(models: Dict[str, deploy.Detector], options: Options = Options()):
    """The FastAPI application serving ``models``."""
    import contextlib

    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse

    batchers: Dict[str, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        for name, detector in models.items():
            batchers[name] = Batcher(detector, options)
            await batchers[name].start()
        yield
        for batcher in batchers.values():
            await batcher.stop()

    app = FastAPI(title="kdad_jax", lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def one_line(_request, error: HTTPException):
        return JSONResponse({"error": error.detail}, status_code=error.status_code,
                            headers=error.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(models)}

    @app.get("/models")
    async def list_models():
        return [_describe(name, detector) for name, detector in models.items()]

    @app.post("/predict/{name}")
    async def predict(name: str, images: List[UploadFile] = File(...),
                      maps: int = Query(0, ge=0, le=1)):
        if name not in models:
            raise HTTPException(404, f"unknown model {name!r} (serving: {', '.join(models)})")
        detector = models[name]
        prepared, names = [], []
        for upload in images:
            data = await upload.read(int(options.max_upload_mb * 2 ** 20) + 1)
            file_name = upload.filename or "upload"
            try:
                picture = decode(file_name, data, options)
                prepared.append(await asyncio.to_thread(
                    lambda p=picture: detector.prepare(p)[0]))
            except BadUpload as e:
                raise HTTPException(e.status, str(e)) from None
            except ValueError as e:
                raise HTTPException(400, f"{file_name}: {e}") from None
            names.append(file_name)
        try:
            futures = batchers[name].submit(prepared)
        except QueueFull:
            raise HTTPException(503, f"model {name!r} is busy ({options.queue_size} images "
                                     f"queued); retry shortly", headers={"Retry-After": "1"}) from None
        results = await asyncio.gather(*futures)
        threshold = detector.threshold
        rows = []
        for file_name, image, amap in zip(names, prepared, results):
            score = float(np.max(amap))
            row = {"file": file_name, "score": score, "threshold": threshold,
                   "is_anomalous": None if threshold is None else bool(score >= threshold)}
            if maps:
                row["heatmap"] = await asyncio.to_thread(heatmap_data_url, image, amap, threshold)
            rows.append(row)
        return rows

    return app


def _describe(name: str, detector: deploy.Detector) -> dict:
    meta = detector.meta
    return {"name": name, "format": "onnx" if meta["format"] == deploy.ONNX_FORMAT else "jax_export",
            "method": meta.get("method"), "image_size": detector.image_size,
            "threshold": detector.threshold, "test_metrics": meta.get("test_metrics", {}),
            "parity": meta.get("parity")}
