"""HTTP API for the LEGO minifigure classifier, over the exported ONNX model.

Two BentoML services, started together by `bentoml serve service.service:Minifig`:
- `Minifig` (public): decodes and validates each upload on its own, so a bad image gets its own
  4xx, and answers /predict, /predict_batch, /health and /ready.
- `MinifigModel` (internal, via `bentoml.depends`): the ONNX session. Its batchable `classify`
  merges the normalized tensors of concurrent requests into one ONNX run (adaptive batching).
Nothing here imports torch or timm: serving needs onnxruntime, numpy and pillow only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import bentoml
import numpy as np
import onnxruntime as ort
from bentoml.exceptions import BentoMLException
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.uploads import FormSpec, UploadGuard
from stages.imaging import ImageError, load_rgb, normalize, resize_center_crop
from stages.params import load_section

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get("MINIFIG_MODEL_DIR", REPO_ROOT / "models" / "onnx"))
SERVE = load_section("serve", REPO_ROOT / "params.yaml")
MAX_UPLOAD_BYTES = int(SERVE.max_upload_mb * 1024 * 1024)
# FILE_NOTE: a missing upload defaults to None (pydantic does not validate defaults) so that we can
# say what is missing; BentoML 1.4 cannot build an input spec for `Optional[Path]`, and stops
# treating `Path | None` as a file upload.
IMAGE_FIELD = Field(default=None, description="the photo: a JPEG or PNG file")
IMAGES_FIELD = Field(default_factory=list, description="the photos, one file field each")
TOP_K_FIELD = Field(default=SERVE.top_k, description="how many classes to return (>= 1)")
CURL_HINT = "e.g. curl -F image=@minifig.jpg http://HOST/predict"
logger = logging.getLogger("minifig.service")

PREDICTIONS = Counter("minifig_predictions_total",
                      "Images classified, by predicted (top-1) class_id", ["class_id"])
CONFIDENCE = Histogram("minifig_prediction_confidence", "Top-1 probability of each prediction",
                       buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))


@dataclass(frozen=True)
class ModelContract:
    """What the export stage promises in models/onnx/model.json."""

    onnx_path: Path
    version: str
    input_size: int
    mean: list[float]
    std: list[float]
    classes: list[dict[str, Any]]
    input_name: str
    output_name: str


def load_contract(directory: Path = MODEL_DIR) -> ModelContract:
    meta_path, onnx_path = directory / "model.json", directory / "model.onnx"
    if not (meta_path.is_file() and onnx_path.is_file()):
        raise FileNotFoundError(
            f"no exported model in {directory.resolve()}: run `dvc repro export` (or "
            "`python -m stages.export`) from the repository root, or set MINIFIG_MODEL_DIR to "
            "a folder holding model.onnx and model.json")
    meta = json.loads(meta_path.read_text())
    prep = meta["preprocessing"]
    return ModelContract(onnx_path, meta["model_version"], int(prep["input_size"]), prep["mean"],
                         prep["std"], meta["classes"], meta["input"]["name"],
                         meta["output"]["name"])


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Prediction(BaseModel):
    class_id: int = Field(description="class_id of metadata.csv (names are not unique)")
    name: str
    probability: float


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="top_k classes, most probable first")
    model_version: str


class BatchResponse(BaseModel):
    results: list[PredictResponse] = Field(description="one entry per image, in upload order")
    model_version: str


class RequestProblem(Exception):
    """A client error: becomes a JSON {"error": message} response with this status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@bentoml.service(name="minifig_model", workers=1, traffic={"timeout": 60})
class MinifigModel:
    """Internal: owns the ONNX session; batches concurrent requests."""

    def __init__(self) -> None:
        self.contract = load_contract()
        options = ort.SessionOptions()
        options.intra_op_num_threads = SERVE.onnx_threads or available_cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.contract.onnx_path), options,
                                            providers=["CPUExecutionProvider"])
        size = self.contract.input_size
        self._run(np.zeros((1, 3, size, size), np.float32))  # first run allocates: do it now

    def _run(self, images: np.ndarray) -> np.ndarray:
        c = self.contract
        return self.session.run([c.output_name], {c.input_name: images})[0]

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=SERVE.max_batch_size,
                 max_latency_ms=SERVE.max_latency_ms)
    def classify(self, images: np.ndarray) -> np.ndarray:
        """NCHW float32 normalized images -> N x classes probabilities."""
        return self._run(images.astype(np.float32, copy=False))


async def health(_: Request) -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def ready(_: Request) -> JSONResponse:
    """Readiness: the model is loaded and the model service answers."""
    try:
        service = bentoml.get_current_service()
        model_ready = await service.model.is_ready(5)
    except Exception as exc:  # not initialised yet, or the model worker is down
        return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
    if not model_ready:
        return JSONResponse({"status": "not ready", "reason": "model service is starting"},
                            status_code=503)
    return JSONResponse({"status": "ready", "model_version": service.contract.version})


probes = Starlette(routes=[Route("/health", health), Route("/ready", ready)])


@bentoml.service(name="minifig", traffic={"timeout": 60})
@bentoml.asgi_app(probes, path="/")
class Minifig:
    """LEGO minifigure classifier: POST a photo, get the most likely characters."""

    model = bentoml.depends(MinifigModel)

    def __init__(self) -> None:
        self.contract = load_contract()

    @bentoml.api
    async def predict(
        self,
        image: Path = IMAGE_FIELD,
        top_k: int = TOP_K_FIELD,
    ) -> PredictResponse:
        """Classify one photo sent as multipart file field `image`."""
        try:
            if image is None:
                raise _missing_field("image")
            _check_top_k(top_k)
            pixels = await anyio.to_thread.run_sync(self._prepare, image, "image")
            [result] = await self._classify(pixels[None], top_k)
            return result
        except RequestProblem as problem:
            return _error_response(problem)  # type: ignore[return-value]

    @bentoml.api
    async def predict_batch(
        self,
        images: list[Path] = IMAGES_FIELD,
        top_k: int = TOP_K_FIELD,
    ) -> BatchResponse:
        """Classify several photos sent as repeated multipart file fields `images`."""
        try:
            if not images:
                raise _missing_field("images")
            _check_top_k(top_k)
            if len(images) > SERVE.max_images_per_request:
                raise RequestProblem(413, f"{len(images)} images in one request; the limit is "
                                     f"{SERVE.max_images_per_request}: split them over requests")
            pixels = [await anyio.to_thread.run_sync(
                self._prepare, path, f"image {i + 1} of {len(images)}")
                for i, path in enumerate(images)]
            results = await self._classify(np.stack(pixels), top_k)
            return BatchResponse(results=results, model_version=self.contract.version)
        except RequestProblem as problem:
            return _error_response(problem)  # type: ignore[return-value]

    def _prepare(self, upload: Path, label: str) -> np.ndarray:
        """Decode and validate one upload (in a worker thread): HxWx3 uint8 at model size."""
        size = upload.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise RequestProblem(413, f"{label} is {size / 2**20:.1f} MB; the limit is "
                                 f"{SERVE.max_upload_mb:g} MB: send a smaller JPEG or PNG")
        try:
            rgb = load_rgb(upload.read_bytes(), SERVE.max_image_pixels)
        except ImageError as exc:
            message = str(exc).replace("upload", label, 1)
            raise RequestProblem(400, message) from None
        return resize_center_crop(rgb, self.contract.input_size)

    async def _classify(self, pixels: np.ndarray, top_k: int) -> list[PredictResponse]:
        c = self.contract
        x = normalize(pixels, c.mean, c.std)
        for attempt in (1, 2):  # a pooled connection to the model worker may have just closed
            try:
                probabilities = await self.model.to_async.classify(x)
                break
            except (BentoMLException, aiohttp.ClientError, OSError) as exc:
                logger.warning("model service call %d failed: %r", attempt, exc)
        else:
            raise RequestProblem(503, "the model is overloaded or restarting: retry in a moment")
        results = []
        for row in np.asarray(probabilities):
            order = np.argsort(-row, kind="stable")[:min(top_k, len(row))]
            predictions = [Prediction(class_id=c.classes[i]["class_id"], name=c.classes[i]["name"],
                                      probability=round(float(row[i]), 6)) for i in order]
            PREDICTIONS.labels(class_id=str(predictions[0].class_id)).inc()
            CONFIDENCE.observe(predictions[0].probability)
            results.append(PredictResponse(predictions=predictions, model_version=c.version))
        return results


def _missing_field(field: str) -> RequestProblem:
    return RequestProblem(400, f"missing multipart file field '{field}': send the photo as form "
                          f"field '{field}', {CURL_HINT}")


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise RequestProblem(400, f"top_k must be at least 1 (got {top_k}); leave it out for "
                             f"the default of {SERVE.top_k}")


def _error_response(problem: RequestProblem) -> JSONResponse:
    return JSONResponse({"error": str(problem)}, status_code=problem.status)


Minifig.add_asgi_middleware(UploadGuard, max_bytes=MAX_UPLOAD_BYTES, hint=CURL_HINT, forms={
    "/predict": FormSpec("image", frozenset({"top_k"})),
    "/predict_batch": FormSpec("images", frozenset({"top_k"}))})
