import csv
import io
import json

import numpy as np
from PIL import Image

from stages.dataset import load_split
from stages.download import download
from stages.imaging import STAT_NAMES, load_rgb, resize_center_crop
from stages.split import split
from stages.transform import transform
from tests.conftest import make_params
from tests.datasets import mini_dataset


def build(lego_dir, tmp_path, rotate_first: bool = False):
    source = mini_dataset(lego_dir, tmp_path / "mini")
    if rotate_first:  # store one photo sideways with an EXIF tag that says "rotate back"
        first = (source / "index.csv").read_text().splitlines()[1].split(",")[0]
        upright = Image.open(source / first)
        exif = Image.Exif()
        exif[0x0112] = 6
        sideways = upright.transpose(Image.Transpose.ROTATE_90)
        buffer = io.BytesIO()
        sideways.save(buffer, "JPEG", quality=95, exif=exif)
        (source / first).write_bytes(buffer.getvalue())
    params = make_params(data={"source": str(source)}, transform={"image_size": 48})
    download(params.data, tmp_path / "raw")
    split(params.split, tmp_path / "raw", tmp_path / "split")
    reference = transform(params.transform, tmp_path / "raw", tmp_path / "split",
                          tmp_path / "processed")
    return source, reference


def test_cache_holds_exactly_the_split_lists(lego_dir, tmp_path):
    _, reference = build(lego_dir, tmp_path)
    for name in ("train", "val", "test"):
        cache = load_split(tmp_path / f"processed/{name}.npz")
        with (tmp_path / f"split/{name}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert cache["images"].shape == (len(rows), 48, 48, 3)
        assert cache["images"].dtype == np.uint8
        assert list(cache["paths"]) == [r["path"] for r in rows]
        assert list(cache["labels"]) == [int(r["label"]) for r in rows]
        assert list(cache["class_ids"]) == [int(r["class_id"]) for r in rows]
        expected = resize_center_crop(load_rgb(tmp_path / "raw" / rows[-1]["path"]), 48)
        assert np.array_equal(cache["images"][-1], expected)
    train = load_split(tmp_path / "processed/train.npz")["images"] / 255.0
    assert np.allclose(reference["channel_mean"], train.reshape(-1, 3).mean(0), atol=1e-5)
    assert np.allclose(reference["channel_std"], train.reshape(-1, 3).std(0), atol=1e-5)
    assert json.loads((tmp_path / "processed/reference.json").read_text()) == reference


def test_reference_statistics_per_image(lego_dir, tmp_path):
    build(lego_dir, tmp_path)
    with (tmp_path / "processed/image_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15 and {r["split"] for r in rows} == {"train", "val", "test"}
    for row in rows:
        values = {k: float(row[k]) for k in STAT_NAMES}
        assert 0 < values["brightness"] < 1 and 0 < values["contrast"] < 1
        assert values["sharpness"] > 0 and values["colourfulness"] > 0


def test_exif_rotated_photo_is_cached_upright(lego_dir, tmp_path):
    source, _ = build(lego_dir, tmp_path / "a")
    build(lego_dir, tmp_path / "b", rotate_first=True)
    first = (source / "index.csv").read_text().splitlines()[1].split(",")[0]
    caches = []
    for run in ("a", "b"):
        for name in ("train", "val"):
            cache = load_split(tmp_path / run / f"processed/{name}.npz")
            if first in cache["paths"]:
                caches.append(cache["images"][list(cache["paths"]).index(first)].astype(int))
    upright, restored = caches
    assert np.abs(upright - restored).mean() < 4  # same picture up to JPEG re-encoding
    assert np.abs(upright - np.rot90(restored)).mean() > 10


def test_transform_is_byte_deterministic(lego_dir, tmp_path):
    build(lego_dir, tmp_path / "a")
    build(lego_dir, tmp_path / "b")
    for name in ("train.npz", "val.npz", "test.npz", "reference.json", "image_stats.csv"):
        assert (tmp_path / "a/processed" / name).read_bytes() == \
               (tmp_path / "b/processed" / name).read_bytes()
