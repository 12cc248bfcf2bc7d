"""The export stage: ONNX file, serving contract, parity with PyTorch, optional int8."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stages import export as export_stage
from stages.imaging import RESIZE_RULE, normalize
from stages.params import ExportParams

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage_run(real_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m stages.export` in a repo-shaped folder that is not a git repository."""
    root = tmp_path_factory.mktemp("export-stage")
    shutil.copytree(real_run.models_dir, root / "models")
    (root / "data").mkdir()
    shutil.copytree(real_run.processed_dir, root / "data" / "processed")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    before = {p for p in root.rglob("*") if p.is_file()}
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "stages.export"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {
        p.relative_to(root).as_posix() for p in before}
    assert written == {"models/onnx/model.onnx", "models/onnx/model.json",
                       "reports/export.json"}, "the stage writes only its declared outs"
    return root


def test_contract_describes_the_onnx_file(stage_run: Path, real_run) -> None:
    contract = json.loads((stage_run / "models/onnx/model.json").read_text())
    checkpoint = json.loads((real_run.models_dir / "model.json").read_text())
    onnx_bytes = (stage_run / "models/onnx/model.onnx").read_bytes()
    graph = onnx.load_from_string(onnx_bytes).graph

    assert contract["model_version"] == f"nogit-{hashlib.sha256(onnx_bytes).hexdigest()[:8]}"
    assert contract["onnx_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert [i.name for i in graph.input] == [contract["input"]["name"]]
    assert [o.name for o in graph.output] == [contract["output"]["name"]]
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "batch dimension must be dynamic"
    assert contract["preprocessing"] == {
        "input_size": checkpoint["image_size"], "mean": checkpoint["mean"],
        "std": checkpoint["std"], "resize_rule": RESIZE_RULE, "color": "RGB",
        "scaling": "pixel / 255, then (x - mean) / std per channel"}
    assert contract["classes"] == checkpoint["classes"]
    assert contract["quantized"] is False


def test_parity_with_pytorch_on_the_test_set(stage_run: Path, real_run) -> None:
    report = json.loads((stage_run / "reports/export.json").read_text())
    test = np.load(real_run.processed_dir / "test.npz")
    parity = report["parity"]
    assert parity["images"] == len(test["labels"])
    assert parity["top1_agreement"] == 1.0
    assert 0.0 <= parity["max_abs_probability_diff"] < 1e-3
    assert parity["onnx_accuracy"] == parity["torch_accuracy"]
    assert parity["onnx_accuracy"] >= 0.5, "far above chance (1/37) on the real test set"
    assert report["speed"]["onnx_images_per_second"] > 0
    assert report["quantization"] is None
    print(f"\nexport parity: {parity}\nspeed: {report['speed']}")


def test_onnx_runs_any_batch_size_and_outputs_probabilities(stage_run: Path, real_run
                                                            ) -> None:
    contract = json.loads((stage_run / "models/onnx/model.json").read_text())
    session = ort.InferenceSession(str(stage_run / "models/onnx/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    images = np.load(real_run.processed_dir / "test.npz")["images"]
    prep = contract["preprocessing"]
    for n in (1, 5):
        x = normalize(images[:n], prep["mean"], prep["std"])
        [p] = session.run(None, {contract["input"]["name"]: x})
        assert p.shape == (n, len(contract["classes"]))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_git_revision_outside_a_repository(tmp_path: Path) -> None:
    assert export_stage.git_revision(tmp_path) == "nogit"
    assert export_stage.model_version(b"abc", "1a2b3c4") == (
        "1a2b3c4-" + hashlib.sha256(b"abc").hexdigest()[:8])


def test_stage_fails_when_onnx_disagrees_with_pytorch(real_run, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    faithful = export_stage.to_onnx

    def broken_export(model: torch.nn.Module, size: int, path: Path, opset: int) -> None:
        # A real ONNX file whose classifier rows are rotated: every top-1 moves to another class.
        import copy

        wrong = copy.deepcopy(model)
        head = wrong.get_classifier()
        with torch.no_grad():
            head.weight.copy_(head.weight.roll(1, dims=0))
            head.bias.copy_(head.bias.roll(1, dims=0))
        faithful(wrong, size, path, opset)

    monkeypatch.setattr(export_stage, "to_onnx", broken_export)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(export_stage.ExportError, match="disagree on the top-1 class"):
        export_stage.export(ExportParams(), real_run.models_dir, real_run.processed_dir,
                            tmp_path / "onnx", tmp_path / "export.json")
    assert not (tmp_path / "onnx" / "model.onnx").exists()


def test_quantization_is_kept_only_within_the_allowed_accuracy_drop(
        real_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = ExportParams(quantize=True, max_quantized_accuracy_drop=0.0)
    report = export_stage.export(params, real_run.models_dir, real_run.processed_dir,
                                 tmp_path / "onnx", tmp_path / "export.json")
    q = report["quantization"]
    assert q["fp32_accuracy"] == report["parity"]["onnx_accuracy"]
    assert 0.0 <= q["int8_accuracy"] <= 1.0
    assert q["accuracy_drop"] == pytest.approx(q["fp32_accuracy"] - q["int8_accuracy"], abs=1e-6)
    assert q["kept"] == (q["accuracy_drop"] <= 0.0)
    assert q["int8_bytes"] < q["fp32_bytes"] / 2
    contract = json.loads((tmp_path / "onnx/model.json").read_text())
    served = (tmp_path / "onnx/model.onnx").stat().st_size
    assert contract["quantized"] == q["kept"]
    assert served == (q["int8_bytes"] if q["kept"] else q["fp32_bytes"])
    print(f"\nint8 dynamic quantization: {q}")


def test_test_cache_of_another_size_is_refused(real_run, tmp_path: Path) -> None:
    test = dict(np.load(real_run.processed_dir / "test.npz"))
    test["images"] = test["images"][:, :64, :64]
    (tmp_path / "processed").mkdir()
    np.savez(tmp_path / "processed" / "test.npz", **test)
    with pytest.raises(export_stage.ExportError, match="rerun the transform stage"):
        export_stage.export(ExportParams(), real_run.models_dir, tmp_path / "processed",
                            tmp_path / "onnx", tmp_path / "export.json")
