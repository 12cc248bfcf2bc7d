"""The BentoML service over real HTTP: `bentoml serve` runs in a subprocess on 127.0.0.1 with a
model exported from the real-data run, and is sent real photos, bad uploads and a bounded load."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from stages.export import export
from stages.imaging import normalize
from stages.params import ExportParams, load_section
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SERVE = load_section("serve", REPO / "params.yaml")
pytestmark = pytest.mark.slow


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    startup_s: float
    contract: dict[str, Any]
    log: Path


@pytest.fixture(scope="module")
def model_dir(real_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # not a git checkout: the version is "nogit-<hash>"
        export(ExportParams(), real_run.models_dir, real_run.processed_dir, root / "onnx",
               root / "export.json")
    return root / "onnx"


@pytest.fixture(scope="module")
def photos(lego_dir: Path) -> list[tuple[str, int, bytes]]:
    """(path, class_id, JPEG bytes) of the real test photos."""
    with (lego_dir / "test.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(r["path"], int(r["class_id"]), (lego_dir / r["path"]).read_bytes()) for r in rows]


def _wait_for_first_prediction(url: str, jpeg: bytes, process: subprocess.Popen,
                               log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"bentoml serve exited {process.returncode}:\n{log.read_text()[-5000:]}")
        try:
            response = httpx.post(f"{url}/predict", files={"image": ("a.jpg", jpeg)}, timeout=10)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"no successful /predict within {timeout} s:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def server(model_dir: Path, photos, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bentoml-home")
    log = home / "serve.log"
    port = free_port()
    env = {**os.environ, "MINIFIG_MODEL_DIR": str(model_dir), "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(bentoml), "serve", "service.service:Minifig", "--host", "127.0.0.1",
             "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_first_prediction(url, photos[0][2], process, log)
        startup = time.perf_counter() - started
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        print(f"\nprocess start -> first successful /predict: {startup:.2f} s")
        contract = json.loads((model_dir / "model.json").read_text())
        yield Server(url, process, startup, contract, log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    family = _descendants(process.pid)
    os.killpg(process.pid, signal.SIGTERM)  # the arbiter stops its workers gracefully
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    for pid in family[1:]:  # workers live in their own sessions: make sure none outlives us
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as http:
        yield http


def _predict(client: httpx.Client, image: bytes, top_k: int | None = None,
             name: str = "photo.jpg") -> httpx.Response:
    data = {} if top_k is None else {"top_k": str(top_k)}
    return client.post("/predict", files={"image": (name, image)}, data=data)


def _png(img: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(img: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                                            0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def _probabilities(response: httpx.Response, contract: dict[str, Any]) -> np.ndarray:
    """The full distribution from a response with top_k = number of classes."""
    index = {c["class_id"]: c["index"] for c in contract["classes"]}
    out = np.zeros(len(index))
    for p in response.json()["predictions"]:
        out[index[p["class_id"]]] = p["probability"]
    return out


def test_start_to_first_prediction(server: Server) -> None:
    print(f"\nstart -> first /predict: {server.startup_s:.2f} s (target < 5 s)")
    assert server.startup_s < 30


def test_top1_matches_the_offline_model_on_real_test_photos(
        server: Server, client: httpx.Client, photos, real_run, model_dir: Path) -> None:
    contract = server.contract
    test = np.load(real_run.processed_dir / "test.npz")
    session = ort.InferenceSession(str(model_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    prep = contract["preprocessing"]
    offline = session.run(None, {contract["input"]["name"]: normalize(
        test["images"], prep["mean"], prep["std"])})[0]
    offline_by_path = dict(zip(map(str, test["paths"]), offline, strict=True))
    n_classes = len(contract["classes"])

    served: dict[str, np.ndarray] = {}
    for path, _, jpeg in photos[:6]:
        response = _predict(client, jpeg, top_k=n_classes)
        assert response.status_code == 200, response.text
        served[path] = _probabilities(response, contract)
    rest = photos[6:]
    for start in range(0, len(rest), SERVE.max_images_per_request):
        chunk = rest[start:start + SERVE.max_images_per_request]
        response = client.post("/predict_batch", data={"top_k": str(n_classes)}, files=[
            ("images", (Path(path).name, jpeg)) for path, _, jpeg in chunk])
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(chunk)
        for (path, _, _), result in zip(chunk, results, strict=True):
            served[path] = _probabilities(httpx.Response(200, json=result), contract)

    assert set(served) == set(offline_by_path)
    for path, probabilities in served.items():
        assert probabilities.argmax() == offline_by_path[path].argmax(), path
        np.testing.assert_allclose(probabilities, offline_by_path[path], atol=1e-4)
    class_ids = np.array([contract["classes"][served[path].argmax()]["class_id"]
                          for path, _, _ in photos])
    accuracy = float((class_ids == np.array([c for _, c, _ in photos])).mean())
    print(f"\nHTTP top-1 accuracy on {len(photos)} real test photos: {accuracy:.3f}")
    assert accuracy >= 0.5, "far above chance (1/37)"


def test_json_contract(server: Server, client: httpx.Client, photos) -> None:
    contract, jpeg = server.contract, photos[0][2]
    names = {c["class_id"]: c["name"] for c in contract["classes"]}

    body = _predict(client, jpeg, top_k=3).json()
    assert set(body) == {"predictions", "model_version"}
    assert body["model_version"] == contract["model_version"]
    predictions = body["predictions"]
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"class_id", "name", "probability"}
        assert names[p["class_id"]] == p["name"]
        assert 0.0 <= p["probability"] <= 1.0
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)

    assert len(_predict(client, jpeg).json()["predictions"]) == SERVE.top_k
    everything = _predict(client, jpeg, top_k=10_000).json()["predictions"]
    assert len(everything) == len(names)
    assert sum(p["probability"] for p in everything) == pytest.approx(1.0, abs=1e-3)

    batch = client.post("/predict_batch", files=[("images", ("a.jpg", jpeg))] * 2).json()
    assert set(batch) == {"results", "model_version"}
    assert [set(r) for r in batch["results"]] == [{"predictions", "model_version"}] * 2


def _multipart_stream(field: str, size: int, boundary: str = "minifig") -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
           f"filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    for _ in range(size // 2**20):
        yield b"\xff" * 2**20
    yield f"\r\n--{boundary}--\r\n".encode()


def _bad_requests(jpeg: bytes) -> dict[str, tuple[str, dict[str, Any], int, str]]:
    """name -> (path, httpx request kwargs, expected status, fragment of the error message)."""
    truncated = jpeg[: len(jpeg) * 2 // 5]
    fifty_mb = b"\xff\xd8" + b"\0" * (50 * 2**20)
    chunked_headers = {"Content-Type": "multipart/form-data; boundary=minifig"}
    too_many = [("images", (f"{i}.jpg", jpeg)) for i in range(SERVE.max_images_per_request + 1)]
    return {
        "non-image bytes": ("/predict", {"files": {"image": ("notes.jpg", b"not a photo at all")}},
                            400, "not a recognised image format"),
        "empty upload": ("/predict", {"files": {"image": ("empty.jpg", b"")}}, 400, "empty"),
        "truncated jpeg": ("/predict", {"files": {"image": ("cut.jpg", truncated)}}, 400,
                           "truncated"),
        "decompression bomb": ("/predict", {"files": {"image": ("bomb.png",
                                                                _png_bomb(50_000, 50_000))}},
                               400, "decompression bomb"),
        "50 MB upload": ("/predict", {"files": {"image": ("huge.jpg", fifty_mb)}}, 413,
                         f"limit is {SERVE.max_upload_mb:g} MB"),
        "50 MB chunked upload": ("/predict", {"content": _multipart_stream("image", 50 * 2**20),
                                              "headers": chunked_headers}, 413, "limit is"),
        "misnamed field": ("/predict", {"files": {"file": ("fig.jpg", jpeg)}}, 400,
                           "unexpected file field 'file'"),
        "missing field": ("/predict", {"files": {"top_k": (None, "3")}}, 400,
                          "missing multipart file field 'image'"),
        "text instead of a file": ("/predict", {"files": {"image": (None, "http://169.254.169.254/")}},
                                   400, "must be a file upload"),
        "raw image body": ("/predict", {"content": jpeg, "headers": {"Content-Type": "image/jpeg"}},
                           415, "multipart/form-data"),
        "top_k zero": ("/predict", {"files": {"image": ("fig.jpg", jpeg)}, "data": {"top_k": "0"}},
                       400, "top_k must be at least 1"),
        "top_k not a number": ("/predict", {"files": {"image": ("fig.jpg", jpeg)},
                                            "data": {"top_k": "many"}}, 400, "valid integer"),
        "too many images": ("/predict_batch", {"files": too_many}, 413,
                            f"limit is {SERVE.max_images_per_request}"),
        "one bad image in a batch": ("/predict_batch", {"files": [
            ("images", ("a.jpg", jpeg)), ("images", ("b.jpg", truncated)),
            ("images", ("c.jpg", jpeg))]}, 400, "image 2 of 3"),
        "batch without images": ("/predict_batch", {"files": {"image": ("a.jpg", jpeg)}}, 400,
                                 "unexpected file field 'image'"),
    }


BAD_REQUESTS = list(_bad_requests(b"\xff\xd8").keys())


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_that_says_what_to_fix(server: Server, client: httpx.Client,
                                                    photos, case: str) -> None:
    path, kwargs, status, fragment = _bad_requests(photos[0][2])[case]
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert fragment in response.text, response.text  # BentoML's own 400s put details in "detail"
    assert client.get("/health").status_code == 200


def test_service_is_healthy_after_bad_input(server: Server, client: httpx.Client,
                                            photos) -> None:
    for case in BAD_REQUESTS:
        path, kwargs, _, _ = _bad_requests(photos[0][2])[case]
        client.post(path, **kwargs)
    assert client.get("/health").json() == {"status": "ok"}
    assert _predict(client, photos[0][2]).status_code == 200
    assert server.process.poll() is None
    assert "status=500" not in server.log.read_text()


def test_unusual_but_valid_images_are_classified(server: Server, client: httpx.Client,
                                                 photos) -> None:
    n = len(server.contract["classes"])
    upright = Image.open(io.BytesIO(photos[0][2])).convert("RGB")
    gray = upright.convert("L")
    rgba = upright.convert("RGBA")
    variants = {
        "rgb png": _png(upright),
        "opaque rgba png": _png(rgba),
        "translucent rgba png": _png(Image.merge("RGBA", (*upright.split(), gray))),
        "palette png": _png(upright.convert("P", palette=Image.Palette.ADAPTIVE)),
        "grayscale png": _png(gray),
        "16-bit grayscale png": _png(Image.fromarray(np.asarray(gray, np.uint16) * 257)),
        "grayscale jpeg": _jpeg(gray),
        "cmyk jpeg": _jpeg(upright.convert("CMYK")),
    }
    results = {}
    for name, data in variants.items():
        response = _predict(client, data, top_k=n, name="x.png")
        assert response.status_code == 200, f"{name}: {response.text}"
        results[name] = _probabilities(response, server.contract)
    # Lossless re-encodings of the same pixels must give the same answer as the plain RGB PNG.
    np.testing.assert_allclose(results["opaque rgba png"], results["rgb png"], atol=1e-5)
    np.testing.assert_allclose(results["16-bit grayscale png"], results["grayscale png"], atol=1e-5)


def test_exif_rotated_jpeg_is_turned_upright(server: Server, client: httpx.Client,
                                             photos) -> None:
    n = len(server.contract["classes"])
    # The most confident of a few photos: a near-tie could flip on JPEG re-encoding alone.
    confidence = {i: _predict(client, photos[i][2], top_k=1).json()["predictions"][0][
        "probability"] for i in range(0, len(photos), 4)}
    upright = Image.open(io.BytesIO(photos[max(confidence, key=confidence.get)][2])).convert("RGB")
    stored_sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    reference = _probabilities(_predict(client, _jpeg(upright), top_k=n), server.contract)
    tagged = _probabilities(_predict(client, _jpeg(stored_sideways, exif=exif.tobytes()),
                                     top_k=n), server.contract)
    untagged = _probabilities(_predict(client, _jpeg(stored_sideways), top_k=n),
                              server.contract)
    assert tagged.argmax() == reference.argmax()
    assert np.abs(tagged - reference).max() < 0.05
    assert np.abs(untagged - reference).max() > 2 * np.abs(tagged - reference).max(), (
        "the sideways photo should look different to the model; else this test proves nothing")


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_bounded_load_has_no_errors_and_batches_requests(server: Server, client: httpx.Client,
                                                          photos) -> None:
    requests, concurrency = 500, 16
    before = client.get("/metrics").text

    def one(i: int) -> tuple[int, float]:
        started = time.perf_counter()
        response = _predict(client, photos[i % len(photos)][2], top_k=3)
        return response.status_code, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    statuses = [status for status, _ in outcomes]
    latencies = np.array([latency for _, latency in outcomes]) * 1000
    print(f"\nload: {requests} requests at concurrency {concurrency} in {elapsed:.1f} s = "
          f"{requests / elapsed:.1f} req/s; latency p50 {np.percentile(latencies, 50):.0f} ms, "
          f"p95 {np.percentile(latencies, 95):.0f} ms, max {latencies.max():.0f} ms")
    assert statuses.count(200) == requests, {s: statuses.count(s) for s in set(statuses)}

    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    after = client.get("/metrics").text
    predicted = (_metric_sum(after, "minifig_predictions_total")
                 - _metric_sum(before, "minifig_predictions_total"))
    assert predicted == requests
    batches = (_metric_sum(after, "bentoml_service_adaptive_batch_size_count")
               - _metric_sum(before, "bentoml_service_adaptive_batch_size_count"))
    images = (_metric_sum(after, "bentoml_service_adaptive_batch_size_sum")
              - _metric_sum(before, "bentoml_service_adaptive_batch_size_sum"))
    print(f"adaptive batching: {images:.0f} images in {batches:.0f} ONNX runs "
          f"(mean batch {images / batches:.1f})")
    assert images / batches > 1.5, "concurrent requests should share ONNX runs"


def test_probes_and_metrics(server: Server, client: httpx.Client, photos) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready",
                                           "model_version": server.contract["model_version"]}
    for builtin in ("/livez", "/readyz"):
        assert client.get(builtin).status_code == 200
    top1 = _predict(client, photos[0][2]).json()["predictions"][0]["class_id"]
    metrics = client.get("/metrics").text
    assert f'minifig_predictions_total{{class_id="{top1}"}}' in metrics
    assert "minifig_prediction_confidence_bucket" in metrics
    assert "bentoml_service_request_total" in metrics


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (circus puts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def test_serving_processes_never_load_torch(server: Server) -> None:
    pids = _descendants(server.process.pid)
    assert len(pids) >= 3, "arbiter plus one worker per service"
    mapped = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in pids}
    assert any("onnxruntime" in maps for maps in mapped.values()), "the check sees the workers"
    for pid, maps in mapped.items():
        assert "libtorch" not in maps and "/timm/" not in maps, f"process {pid} loaded torch"


def test_service_module_imports_neither_torch_nor_timm() -> None:
    code = ("import sys, service.service; "
            "print(sorted({'torch', 'timm', 'torchvision'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_missing_model_says_how_to_produce_it(tmp_path: Path) -> None:
    code = "from service.service import load_contract; from pathlib import Path; " \
           f"load_contract(Path({str(tmp_path)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0
    assert "dvc repro export" in done.stderr and "MINIFIG_MODEL_DIR" in done.stderr
