"""The embedded dataset generator: Kaggle layout, determinism, real class signal, nuisance knob."""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.synthetic import (
    FRANCHISES,
    Nuisance,
    class_specs,
    class_table,
    generate_dataset,
    generate_image,
    generate_jpeg,
    image_rng,
)

SMALL = {"classes": 5, "train_per_class": 4, "test_per_class": 2, "image_size": 64,
         "progress": False}
TRAIN_PATH = re.compile(rf"^({'|'.join(FRANCHISES)})/\d{{4}}/\d{{3}}\.jpg$")
TEST_PATH = re.compile(r"^test/\d{3}\.jpg$")
# No pose, scale, lighting or camera variation: only the character itself (and a plain
# background colour) changes between images.
STUDIO = Nuisance(brightness=(1.0, 1.0), contrast=(1.0, 1.0), colour_cast=0.0,
                  blur_radius=(0.0, 0.0), jpeg_quality=(95, 95), noise_std=(0.0, 0.0),
                  rotation_deg=(0.0, 0.0), scale=(0.85, 0.85), max_shift=0.0,
                  backgrounds=("solid",))


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def tree_digests(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def assert_rgb_jpeg(path: Path, size: int) -> None:
    with Image.open(path) as image:
        assert image.format == "JPEG", path
        assert image.mode == "RGB", path
        assert image.size == (size, size), path


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("current") / "lego"
    generate_dataset(root, **SMALL)
    return root


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("legacy") / "lego"
    generate_dataset(root, release="legacy", **SMALL)
    return root


def test_metadata_matches_the_kaggle_format(current: Path) -> None:
    header, rows = read_csv(current / "metadata.csv")
    assert header == ["class_id", "lego_ids", "lego_names", "minifigure_name"]
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5]
    for _, lego_ids, lego_names, name in rows:
        assert all(isinstance(i, int) for i in ast.literal_eval(lego_ids))
        assert all(isinstance(n, str) for n in ast.literal_eval(lego_names))
        assert name and name == name.upper()


def test_current_release_layout(current: Path) -> None:
    index_header, index_rows = read_csv(current / "index.csv")
    test_header, test_rows = read_csv(current / "test.csv")
    assert index_header == test_header == ["path", "class_id"]
    assert all(TRAIN_PATH.match(path) for path, _ in index_rows)
    assert [path for path, _ in test_rows] == [f"test/{n:03d}.jpg"
                                               for n in range(1, len(test_rows) + 1)]
    assert Counter(int(c) for _, c in index_rows) == dict.fromkeys(range(1, 6), 4)
    assert Counter(int(c) for _, c in test_rows) == dict.fromkeys(range(1, 6), 2)

    listed = {path for path, _ in index_rows + test_rows}
    on_disk = {p.relative_to(current).as_posix() for p in current.rglob("*.jpg")}
    assert listed == on_disk
    for path in listed:
        assert_rgb_jpeg(current / path, 64)


def test_each_class_folder_holds_one_class_numbered_from_001(current: Path) -> None:
    _, rows = read_csv(current / "index.csv")
    folders: dict[str, set[str]] = defaultdict(set)
    files: dict[str, list[str]] = defaultdict(list)
    for path, class_id in rows:
        folder, name = path.rsplit("/", 1)
        folders[folder].add(class_id)
        files[folder].append(name)
    assert all(len(ids) == 1 for ids in folders.values())
    assert all(names == ["001.jpg", "002.jpg", "003.jpg", "004.jpg"] for names in files.values())
    assert {folder.split("/")[0] for folder in folders} <= set(FRANCHISES)


def test_legacy_release_layout(legacy: Path) -> None:
    assert (legacy / "index.csv").read_text().splitlines()[0] == ",path,class_id,train-valid"
    assert not (legacy / "test.csv").exists()
    assert not (legacy / "test").exists()
    _, rows = read_csv(legacy / "index.csv")
    assert [int(row[0]) for row in rows] == list(range(len(rows)))
    assert all(TRAIN_PATH.match(path) for _, path, _, _ in rows)
    assert Counter(int(c) for _, _, c, _ in rows) == dict.fromkeys(range(1, 6), 6)
    roles: dict[str, Counter[str]] = defaultdict(Counter)
    for _, _, class_id, role in rows:
        roles[class_id][role] += 1
    assert all(counts == {"train": 3, "valid": 3} for counts in roles.values())
    for _, path, _, _ in rows:
        assert_rgb_jpeg(legacy / path, 64)


def test_image_i_of_a_class_is_the_same_picture_in_both_releases(current: Path,
                                                                  legacy: Path) -> None:
    assert (current / "marvel/0001/001.jpg").read_bytes() == \
        (legacy / "marvel/0001/001.jpg").read_bytes()
    # Class 1's first test image is its fifth image overall.
    assert (current / "test/001.jpg").read_bytes() == \
        (legacy / "marvel/0001/005.jpg").read_bytes()
    assert (current / "metadata.csv").read_bytes() == (legacy / "metadata.csv").read_bytes()


def test_same_arguments_give_identical_bytes(current: Path, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "again", **SMALL)
    assert tree_digests(tmp_path / "again") == tree_digests(current)


def test_another_seed_gives_other_images(current: Path, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "other", seed=8, **SMALL)
    mine, other = tree_digests(current), tree_digests(tmp_path / "other")
    assert mine.keys() == other.keys()
    images = [path for path in mine if path.endswith(".jpg")]
    assert all(mine[path] != other[path] for path in images)


def test_refuses_bad_release_and_non_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="release"):
        generate_dataset(tmp_path / "x", release="beta", **SMALL)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "stale.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path / "full", **SMALL)


def test_progress_bar_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_dataset(tmp_path / "tiny", classes=2, train_per_class=1, test_per_class=1,
                     image_size=32, progress=True)
    assert "embedded dataset" in capsys.readouterr().err


def test_names_repeat_like_the_real_data() -> None:
    for classes in (4, 8, 37):
        names = [info.name for info in class_table(classes)]
        assert len(set(names)) < len(names)
    assert len({info.name for info in class_table(3)}) == 3


def test_specs_are_unique_fixed_and_paired() -> None:
    specs = class_specs(64)
    assert len(set(specs)) == 64
    assert class_specs(5) == specs[:5]
    for first, second in zip(specs[0::2], specs[1::2], strict=True):
        assert first.torso_colour == second.torso_colour
        assert first.print_kind != second.print_kind
        assert first.accessory != second.accessory


def standardised_thumbnails(images: list[Image.Image], side: int) -> np.ndarray:
    """Small images with each image's own brightness and contrast taken out, flattened."""
    pixels = np.stack([np.asarray(img.resize((side, side), Image.Resampling.BOX), np.float32)
                       for img in images]).reshape(len(images), -1, 3)
    pixels = (pixels - pixels.mean(1, keepdims=True)) / (pixels.std(1, keepdims=True) + 1e-6)
    return pixels.reshape(len(images), -1)


def nearest_centroid_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray,
                              test_labels: np.ndarray) -> float:
    labels = np.unique(train_labels)
    centroids = np.stack([train[train_labels == label].mean(0) for label in labels])
    distances = ((test[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((labels[distances.argmin(1)] == test_labels).mean())


def figure_colour_histograms(images: list[Image.Image], bins: int = 6) -> np.ndarray:
    """Colour histogram of the pixels that differ from the plain background (the corner)."""
    rows = []
    for image in images:
        pixels = np.asarray(image, np.int32)
        figure = np.abs(pixels - pixels[0, 0]).sum(-1) > 30
        levels = pixels[figure] * bins // 256
        codes = (levels[:, 0] * bins + levels[:, 1]) * bins + levels[:, 2]
        counts = np.bincount(codes, minlength=bins**3).astype(np.float32)
        rows.append(np.sqrt(counts / max(1.0, counts.sum())))
    return np.stack(rows)


def test_all_64_classes_are_told_apart_in_studio_conditions() -> None:
    images, labels = [], []
    for class_index in range(64):
        for image_index in range(3):
            rng = image_rng(0, class_index, image_index)
            images.append(generate_image(class_index, rng, 64, STUDIO))
            labels.append(class_index)
    features, targets = figure_colour_histograms(images), np.asarray(labels)
    is_test = np.arange(len(targets)) % 3 == 2
    accuracy = nearest_centroid_accuracy(features[~is_test], targets[~is_test],
                                         features[is_test], targets[is_test])
    assert accuracy >= 0.95


def test_generated_test_split_carries_class_signal(tmp_path: Path) -> None:
    root = tmp_path / "lego"
    generate_dataset(root, classes=8, train_per_class=12, test_per_class=6, image_size=64,
                     progress=False)

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        _, rows = read_csv(root / name)
        images = [Image.open(root / path) for path, _ in rows]
        return standardised_thumbnails(images, 16), np.asarray([int(c) for _, c in rows])

    accuracy = nearest_centroid_accuracy(*load("index.csv"), *load("test.csv"))
    assert accuracy >= 3 * (1 / 8)  # a linear baseline on raw pixels; a CNN does far better


def mean_over_scenes(nuisance: Nuisance, measure: Callable[[bytes], float]) -> float:
    values = []
    for class_index in range(4):
        for image_index in range(4):
            rng = image_rng(3, class_index, image_index)
            values.append(measure(generate_jpeg(class_index, rng, 96, nuisance)))
    return float(np.mean(values))


def brightness(jpeg: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32).mean())


def sharpness(jpeg: bytes) -> float:
    luma = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32)
    return float((np.diff(luma, axis=0) ** 2).mean() + (np.diff(luma, axis=1) ** 2).mean())


def test_darker_nuisance_gives_darker_images() -> None:
    normal = Nuisance()
    darker = replace(normal, brightness=(0.4, 0.6))
    # Same seeds, so the same scenes: only the brightness gain differs.
    assert mean_over_scenes(darker, brightness) < 0.7 * mean_over_scenes(normal, brightness)


def test_blurrier_and_more_compressed_nuisance_changes_images() -> None:
    normal = Nuisance(noise_std=(0.0, 0.0))
    blurrier = replace(normal, blur_radius=(3.0, 4.0))
    assert mean_over_scenes(blurrier, sharpness) < 0.5 * mean_over_scenes(normal, sharpness)
    smaller = replace(normal, jpeg_quality=(10, 20))
    assert mean_over_scenes(smaller, len) < 0.6 * mean_over_scenes(normal, len)


@pytest.mark.parametrize("bad", [{"brightness": (1.2, 0.8)}, {"scale": (0.5, 1.5)},
                                 {"jpeg_quality": (0, 90)}, {"backgrounds": ("space",)},
                                 {"backgrounds": ()}, {"blur_radius": (-1.0, 1.0)},
                                 {"max_shift": -0.1}])
def test_nuisance_rejects_impossible_ranges(bad: dict) -> None:
    with pytest.raises(ValueError):
        Nuisance(**bad)
