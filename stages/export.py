"""export stage: the trained checkpoint -> ONNX for serving, checked against PyTorch.

Writes `models/onnx/model.onnx` (softmax included, dynamic batch), `models/onnx/model.json` (the
preprocessing contract, class map and model version the service needs) and `reports/export.json`
(parity and speed). Fails when ONNX and PyTorch disagree on the top-1 class of any test image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from stages.imaging import RESIZE_RULE, normalize
from stages.modeling import load_checkpoint
from stages.params import ExportParams, load_section

MODEL_DIR, PROCESSED_DIR = Path("models"), Path("data/processed")
ONNX_DIR, REPORT_PATH = Path("models/onnx"), Path("reports/export.json")
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
BATCH = 32


class ExportError(RuntimeError):
    """The exported model does not behave like the PyTorch one."""


class _WithSoftmax(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def to_onnx(model: torch.nn.Module, image_size: int, path: Path, opset: int) -> None:
    dummy = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but works here without onnxscript and in a
        # fifth of the time of the dynamo one (shared/ENVIRONMENT.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _WithSoftmax(model).eval(), (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(str(path))


def torch_probabilities(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, float]:
    wrapped, started = _WithSoftmax(model).eval(), time.perf_counter()
    with torch.inference_mode():
        out = [wrapped(torch.from_numpy(x[i:i + BATCH])).numpy() for i in range(0, len(x), BATCH)]
    return np.concatenate(out), time.perf_counter() - started


def onnx_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_probabilities(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    out = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + BATCH]})[0]
           for i in range(0, len(x), BATCH)]
    return np.concatenate(out), time.perf_counter() - started


def git_revision(cwd: Path | None = None) -> str:
    """Short commit of the working tree, or "nogit" outside a repository (e.g. an unpacked
    source archive)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "nogit"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "nogit"


def model_version(onnx_bytes: bytes, revision: str) -> str:
    return f"{revision}-{hashlib.sha256(onnx_bytes).hexdigest()[:8]}"


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return round(float((probabilities.argmax(1) == labels).mean()), 6)


def _quantize(fp32_path: Path, x: np.ndarray, labels: np.ndarray, fp32_accuracy: float,
              params: ExportParams, workdir: Path) -> tuple[dict[str, Any], Path | None]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = workdir / "model.int8.onnx"
    logging.disable(logging.WARNING)  # one shape-inference warning per tensor it cannot type
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QUInt8)
    finally:
        logging.disable(logging.NOTSET)
    probabilities, seconds = onnx_probabilities(onnx_session(int8_path), x)
    accuracy = _accuracy(probabilities, labels)
    drop = round(fp32_accuracy - accuracy, 6)
    kept = drop <= params.max_quantized_accuracy_drop
    return {
        "fp32_accuracy": fp32_accuracy, "int8_accuracy": accuracy, "accuracy_drop": drop,
        "max_accuracy_drop": params.max_quantized_accuracy_drop, "kept": kept,
        "int8_images_per_second": round(len(x) / seconds, 1),
        "int8_bytes": int8_path.stat().st_size, "fp32_bytes": fp32_path.stat().st_size,
    }, (int8_path if kept else None)


def export(params: ExportParams, checkpoint_dir: Path = MODEL_DIR,
           processed_dir: Path = PROCESSED_DIR, out_dir: Path = ONNX_DIR,
           report_path: Path = REPORT_PATH) -> dict[str, Any]:
    torch.manual_seed(0)
    model, meta = load_checkpoint(checkpoint_dir)
    size = int(meta["image_size"])
    test = np.load(processed_dir / "test.npz")
    images, labels = test["images"], test["labels"]
    if images.shape[1:] != (size, size, 3):
        raise ExportError(f"{processed_dir / 'test.npz'} holds {images.shape[1:]} images but the "
                          f"checkpoint expects {size}x{size}x3: rerun the transform stage")
    x = normalize(images, meta["mean"], meta["std"])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        to_onnx(model, size, fp32_path, params.opset)
        torch_p, torch_s = torch_probabilities(model, x)
        onnx_p, onnx_s = onnx_probabilities(onnx_session(fp32_path), x)
        disagree = np.flatnonzero(torch_p.argmax(1) != onnx_p.argmax(1))
        parity = {
            "images": len(x),
            "top1_agreement": round(1.0 - len(disagree) / len(x), 6),
            "max_abs_probability_diff": float(np.abs(torch_p - onnx_p).max()),
            "torch_accuracy": _accuracy(torch_p, labels),
            "onnx_accuracy": _accuracy(onnx_p, labels),
        }
        if len(disagree):
            paths = [str(test["paths"][i]) for i in disagree[:5]]
            raise ExportError(f"ONNX and PyTorch disagree on the top-1 class of {len(disagree)} "
                              f"of {len(x)} test images, e.g. {paths}: the export is not faithful")
        quantization, served = None, fp32_path
        if params.quantize:
            quantization, int8_path = _quantize(fp32_path, x, labels, parity["onnx_accuracy"],
                                                params, Path(tmp))
            served = int8_path or fp32_path
        onnx_bytes = served.read_bytes()
    onnx_path.write_bytes(onnx_bytes)

    revision = git_revision()
    version = model_version(onnx_bytes, revision)
    classes = meta["classes"]
    contract = {
        "model_version": version,
        "git_revision": revision,
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "opset": params.opset,
        "quantized": served is not fp32_path,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(classes)], "dtype": "float32",
                   "meaning": "softmax probabilities, column i is the class with index i"},
        "preprocessing": {"input_size": size, "mean": meta["mean"], "std": meta["std"],
                          "resize_rule": RESIZE_RULE, "color": "RGB",
                          "scaling": "pixel / 255, then (x - mean) / std per channel"},
        "classes": classes,
        "checkpoint": {k: v for k, v in meta.items()
                       if k not in ("classes", "mean", "std", "image_size")},
    }
    (out_dir / "model.json").write_text(json.dumps(contract, indent=2) + "\n")

    report = {
        "model_version": version,
        "parity": parity,
        "speed": {"batch_size": BATCH,
                  "torch_images_per_second": round(len(x) / torch_s, 1),
                  "onnx_images_per_second": round(len(x) / onnx_s, 1)},
        "onnx_bytes": len(onnx_bytes),
        "quantization": quantization,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    report = export(load_section("export"))
    parity, speed = report["parity"], report["speed"]
    print(f"models/onnx: {report['model_version']} | top-1 agreement "
          f"{parity['top1_agreement']:.3f}, max |dp| {parity['max_abs_probability_diff']:.2e} | "
          f"{speed['onnx_images_per_second']} img/s ONNX vs {speed['torch_images_per_second']} "
          "img/s PyTorch")


if __name__ == "__main__":
    main()
