import csv
from collections import Counter
from pathlib import Path

import pytest

from stages.dataset import DataError
from stages.download import download
from stages.split import read_classes, split
from tests.conftest import make_params
from tests.datasets import mini_dataset


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def real_raw(lego_dir, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw") / "raw"
    download(make_params(data={"source": str(lego_dir)}).data, raw)
    return raw


def split_with(raw: Path, out: Path, **values) -> dict[str, list[dict]]:
    split(make_params(split=values).split, raw, out)
    return {name: rows(out / f"{name}.csv") for name in ("train", "val", "test")}


def test_stratified_split_of_the_real_dataset(real_raw, tmp_path):
    parts = split_with(real_raw, tmp_path / "s", val_fraction=0.2, seed=1)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (291, 70, 76)
    train_paths = {r["path"] for r in parts["train"]}
    assert train_paths.isdisjoint(r["path"] for r in parts["val"])
    total = Counter(r["class_id"] for r in parts["train"] + parts["val"])
    val = Counter(r["class_id"] for r in parts["val"])
    for class_id, count in total.items():
        assert val[class_id] >= 1 and count - val[class_id] >= 1
        assert abs(val[class_id] - 0.2 * count) <= 1  # proportional within rounding


def test_test_holdout_is_test_csv_untouched(real_raw, tmp_path):
    parts = split_with(real_raw, tmp_path / "s")
    expected = rows(real_raw / "test.csv")
    assert [(r["path"], r["class_id"]) for r in parts["test"]] == \
           [(r["path"], r["class_id"]) for r in expected]


def test_same_seed_same_split_different_seed_different(real_raw, tmp_path):
    a = split_with(real_raw, tmp_path / "a", seed=5)
    b = split_with(real_raw, tmp_path / "b", seed=5)
    c = split_with(real_raw, tmp_path / "c", seed=6)
    assert a == b
    assert {r["path"] for r in a["val"]} != {r["path"] for r in c["val"]}


def test_class_map_keeps_ids_because_names_repeat(real_raw, tmp_path):
    split_with(real_raw, tmp_path / "s")
    classes = read_classes(tmp_path / "s")
    assert [c["index"] for c in classes] == list(range(37))
    assert [c["class_id"] for c in classes] == list(range(1, 38))
    names = Counter(c["name"] for c in classes)
    assert names["SPIDER-MAN"] == 2
    labels = {r["class_id"]: r["label"] for r in rows(tmp_path / "s/train.csv")}
    assert all(int(labels[str(c["class_id"])]) == c["index"] for c in classes)


def test_tiny_classes_keep_their_only_image_for_training(lego_dir, tmp_path):
    source = mini_dataset(lego_dir, tmp_path / "mini", per_class=4)
    index = (source / "index.csv").read_text().splitlines()
    singles = [index[0], *[line for line in index[1:] if not line.endswith(",1")], index[1]]
    (source / "index.csv").write_text("\n".join(singles) + "\n")  # class 1 has one image
    download(make_params(data={"source": str(source)}).data, tmp_path / "raw")
    parts = split_with(tmp_path / "raw", tmp_path / "s", val_fraction=0.5)
    assert [r["class_id"] for r in parts["train"]].count("1") == 1
    assert "1" not in {r["class_id"] for r in parts["val"]}


def test_legacy_release_column_and_carved_test_set(lego_dir, tmp_path):
    source = mini_dataset(lego_dir, tmp_path / "legacy", per_class=6, release="legacy")
    download(make_params(data={"source": str(source)}).data, tmp_path / "raw")
    released = split_with(tmp_path / "raw", tmp_path / "r", use_release_column=True,
                          test_fraction=0.2)
    assert len(released["test"]) == 3  # carved out first: one per class
    release_split = {r["path"]: r["train-valid"] for r in rows(tmp_path / "raw/index.csv")}
    assert {release_split[r["path"]] for r in released["train"]} == {"train"}
    assert {release_split[r["path"]] for r in released["val"]} == {"valid"}
    test_paths = {r["path"] for r in released["test"]}
    assert test_paths.isdisjoint(r["path"] for r in released["train"] + released["val"])


def test_release_column_requested_but_absent(lego_dir, tmp_path):
    download(make_params(data={"source": str(mini_dataset(lego_dir, tmp_path / "m"))}).data,
             tmp_path / "raw")
    with pytest.raises(DataError, match="no train-valid column"):
        split_with(tmp_path / "raw", tmp_path / "s", use_release_column=True)
